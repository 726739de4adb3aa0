//! `agentq agents list|show|validate`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::Context;
use crate::cli::AgentsCommand;
use crate::config::HomeConfig;
use crate::definition::{self, Source, schema::Problem};
use crate::error::{UserError, exit};
use crate::text::{ERROR_CAP, FIELD_CAP, one_line};

pub fn run(ctx: &Context, command: AgentsCommand) -> Result<u8> {
    match command {
        AgentsCommand::List { json } => list(ctx, json),
        AgentsCommand::Show { name, json } => show(ctx, &name, json),
        AgentsCommand::Validate { files, json } => validate(ctx, files, json),
    }
}

/// One definition file and what checking it found.
#[derive(Serialize)]
struct Checked {
    name: String,
    file: PathBuf,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    problems: Vec<Problem>,
}

fn check(path: &Path, home: &HomeConfig) -> Checked {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut checked = Checked {
        name,
        file: path.to_owned(),
        valid: false,
        description: None,
        provider: None,
        model: None,
        problems: Vec::new(),
    };
    let source = match Source::read(path) {
        Ok(source) => source,
        Err(e) => {
            checked.problems.push(Problem {
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            });
            return checked;
        }
    };
    match source.load(&BTreeMap::new(), home) {
        Ok(def) => {
            checked.valid = true;
            checked.description = Some(def.description);
            checked.provider = Some(def.model.provider);
            checked.model = def.model.name;
        }
        Err(problems) => checked.problems = problems,
    }
    checked
}

/// Every `*.toml` in agents/, sorted.
fn definition_files(ctx: &Context) -> Result<Vec<PathBuf>> {
    let dir = ctx.home.agents_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(UserError::usage(format!(
                "{} does not exist; run `agentq init` to create it",
                dir.display()
            ))
            .into());
        }
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn list(ctx: &Context, json: bool) -> Result<u8> {
    let home = ctx.config()?;
    let checked: Vec<Checked> = definition_files(ctx)?
        .iter()
        .map(|p| check(p, &home))
        .collect();
    if json {
        ctx.out.json(&checked)?;
        return Ok(0);
    }
    let mut out = ctx.out.human();
    if checked.is_empty() {
        writeln!(out, "no agents in {}", ctx.home.agents_dir().display())?;
        return Ok(0);
    }
    let name = |c: &Checked| one_line(&c.name, FIELD_CAP).into_owned();
    let width = checked
        .iter()
        .map(|c| name(c).chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(out, "{:width$}  {:10}  DESCRIPTION", "NAME", "PROVIDER")?;
    for c in &checked {
        let description = if c.valid {
            c.description.clone().unwrap_or_default()
        } else {
            format!(
                "invalid ({}): agentq agents validate {}",
                crate::plural::count(c.problems.len() as u64, "problem", "problems"),
                c.file.display()
            )
        };
        let provider = one_line(c.provider.as_deref().unwrap_or("-"), FIELD_CAP);
        writeln!(
            out,
            "{:width$}  {provider:10}  {}",
            name(c),
            one_line(&description, FIELD_CAP)
        )?;
    }
    Ok(0)
}

fn show(ctx: &Context, name: &str, json: bool) -> Result<u8> {
    let home = ctx.config()?;
    let (def, source) =
        definition::load_named(&ctx.home.agents_dir(), name, &BTreeMap::new(), &home)?;
    // The servers' tools are known only by asking them: they are started, listed and
    // stopped again, so a server that cannot start is found here rather than mid-run.
    let servers = if def.tools.mcp.is_empty() {
        Vec::new()
    } else {
        super::runtime(2)?.block_on(async {
            let started = crate::worker::mcp::start_all(&def, &home, ctx.home.root()).await;
            let shown: Vec<ShownServer> = started.iter().map(ShownServer::of).collect();
            for (_, server) in started {
                if let Ok(server) = server {
                    server.stop().await;
                }
            }
            shown
        })
    };
    let failed = servers.iter().any(|s| s.error.is_some());
    if json {
        let table: toml::Table = toml::from_str(&source.text)?;
        ctx.out.json(&serde_json::json!({
            "name": name,
            "file": source.path,
            "hash": source.hash(),
            "definition": definition::toml_to_json(toml::Value::Table(table)),
            "mcp_servers": servers,
        }))?;
    } else {
        let mut out = ctx.out.human();
        writeln!(out, "# {} ({})", source.path.display(), source.hash())?;
        out.write_all(source.text.as_bytes())?;
        for server in &servers {
            let name = one_line(&server.name, FIELD_CAP);
            match &server.error {
                Some(error) => writeln!(
                    out,
                    "# MCP server {name}: did not start: {}",
                    one_line(error, ERROR_CAP)
                )?,
                None => {
                    writeln!(
                        out,
                        "# MCP server {name}: {}",
                        crate::plural::count(server.tools.len() as u64, "tool", "tools")
                    )?;
                    for tool in &server.tools {
                        let read_only = if tool.read_only { " (read-only)" } else { "" };
                        let gated = if tool.needs_approval {
                            " (approval required)"
                        } else {
                            ""
                        };
                        writeln!(
                            out,
                            "#   {}{read_only}{gated}: {}",
                            one_line(&tool.name, FIELD_CAP),
                            one_line(&tool.description, FIELD_CAP)
                        )?;
                    }
                }
            }
        }
    }
    // A server that does not start fails its tools in every run: a script checking the
    // agent must see it.
    Ok(if failed {
        crate::error::exit::FAILED
    } else {
        0
    })
}

/// An MCP server as `agents show` reports it.
#[derive(Serialize)]
struct ShownServer {
    name: String,
    /// Why it did not start; `None` when it did.
    error: Option<String>,
    tools: Vec<ShownTool>,
}

#[derive(Serialize)]
struct ShownTool {
    /// The name the model calls: `mcp__<server>__<tool>`.
    name: String,
    /// The server's own name for it.
    server_tool: String,
    description: String,
    read_only: bool,
    /// Its calls wait for a person (`approval` / `approval_tools` of the server).
    needs_approval: bool,
    input_schema: serde_json::Value,
}

impl ShownServer {
    fn of((name, started): &(String, Result<crate::mcp::Server, String>)) -> ShownServer {
        match started {
            Ok(server) => ShownServer {
                name: name.clone(),
                error: None,
                tools: server
                    .tools()
                    .iter()
                    .map(|t| ShownTool {
                        name: t.exposed.clone(),
                        server_tool: t.name.clone(),
                        description: t.description.clone(),
                        read_only: t.read_only,
                        needs_approval: t.needs_approval,
                        input_schema: t.input_schema.clone(),
                    })
                    .collect(),
            },
            Err(error) => ShownServer {
                name: name.clone(),
                error: Some(error.clone()),
                tools: Vec::new(),
            },
        }
    }
}

fn validate(ctx: &Context, files: Vec<PathBuf>, json: bool) -> Result<u8> {
    let files = if files.is_empty() {
        definition_files(ctx)?
    } else {
        files
    };
    let home = ctx.config()?;
    let checked: Vec<Checked> = files.iter().map(|p| check(p, &home)).collect();
    let invalid = checked.iter().filter(|c| !c.valid).count();
    if json {
        ctx.out.json(&checked)?;
    } else {
        let mut out = ctx.out.human();
        for c in &checked {
            if c.valid {
                writeln!(
                    out,
                    "ok       {}",
                    one_line(&c.file.display().to_string(), FIELD_CAP)
                )?;
            }
            for problem in &c.problems {
                writeln!(
                    out,
                    "invalid  {}: {}",
                    one_line(&c.file.display().to_string(), FIELD_CAP),
                    one_line(&problem.to_string(), ERROR_CAP)
                )?;
            }
        }
        if checked.is_empty() {
            writeln!(out, "no agent definitions to check")?;
        }
    }
    Ok(if invalid > 0 { exit::USAGE } else { 0 })
}

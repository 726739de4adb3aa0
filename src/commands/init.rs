//! `agentq init`: creates the home's directories (`agents/`, and what the store keeps
//! sessions in) and the demo agent. Idempotent: what exists is left as it is, so
//! running it twice changes nothing.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use anyhow::{Context as _, Result};

use super::Context;

/// The example agent: runs offline on the scripted provider.
pub const DEMO_AGENT: &str = r#"# The demo agent. It runs offline on the `scripted` provider, which replays the
# answers below instead of calling a model: one [[model.script]] entry per model call,
# the last one repeating. `{input}` stands for the latest user message.
# To use a real model, set provider = "openai" or "anthropic" and a model name.
name = "demo"
description = "Offline demo: writes a note, reads it back with a tool, and answers"
system = "You are a careful assistant. Check facts with your file tools before answering."

[model]
provider = "scripted"

[[model.script]]
text = "I'll write a note about your question, then read it back before answering."
tool_calls = [
  { name = "write_file", arguments = { path = "notes.md", content = "The demo agent was here.\n" } },
  { name = "read_file", arguments = { path = "notes.md" } },
]
usage = { input = 120, output = 30 }
delay_ms = 30

[[model.script]]
text = "You asked: \"{input}\". I wrote notes.md in this session's workspace and read it back: it says \"The demo agent was here.\" Each later message in this session continues the same conversation."
usage = { input = 180, output = 45 }
delay_ms = 30

[limits]
max_steps = 8
timeout = "60s"

[tools]
builtin = ["read_file", "write_file", "list_dir"]
workspace = "session"
"#;

pub fn run(ctx: &Context) -> Result<u8> {
    let mut out = ctx.out.human();
    let mut created = 0;
    let agents = ctx.home.agents_dir();
    if !agents.is_dir() {
        create_private_dir(&agents)?;
        writeln!(out, "created {}/", agents.display())?;
        created += 1;
    }
    let made = ctx.store.init(&mut |place| {
        writeln!(out, "created {place}")?;
        Ok(())
    })?;
    if made {
        created += 1;
    }
    let demo = agents.join("demo.toml");
    if !demo.exists() {
        // The mode is given, not left to the umask: a permissive one (000) must not
        // make the definition, which decides what the agent may run, world-writable.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&demo)
            .and_then(|mut file| file.write_all(DEMO_AGENT.as_bytes()))
            .with_context(|| format!("writing {}", demo.display()))?;
        writeln!(out, "created {}", demo.display())?;
        created += 1;
    }
    if created == 0 {
        writeln!(
            out,
            "{} is already set up; nothing changed",
            ctx.home.root().display()
        )?;
    }
    Ok(0)
}

/// Creates `agents/` (and its parents) with mode 0700, like the store's directories;
/// an error names the path, keeping its kind.
fn create_private_dir(path: &std::path::Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Output;

    #[test]
    fn says_what_it_created_then_that_nothing_changed() {
        let home = tempfile::tempdir().unwrap();
        let shown = home.path().display();
        let init = || {
            let (out, captured) = Output::captured();
            let ctx = Context::with_files(Some(home.path().to_owned()), out).unwrap();
            assert_eq!(run(&ctx).unwrap(), 0);
            assert_eq!(captured.stderr(), "");
            captured.stdout()
        };
        assert_eq!(
            init(),
            format!(
                "created {shown}/agents/\ncreated {shown}/sessions/\ncreated {shown}/agents/demo.toml\n"
            )
        );
        assert_eq!(
            init(),
            format!("{shown} is already set up; nothing changed\n")
        );
    }
}

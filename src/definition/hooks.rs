//! `[hooks] on_finish`: what runs after an execution settles, to tell the world it is
//! done: a program given the `execution.finished` line on its standard input, or a URL
//! the line is POSTed to (`url`, or `url_env` naming the variable that holds it, for a
//! webhook whose URL is a secret). The worker delivers them at least once
//! (`crate::worker::hooks`); here they are checked and, when an execution settles,
//! copied into its state ([`Snapshot::add_to`]).

use std::time::Duration;

use serde::Deserialize;

use super::AgentDef;
use crate::domain::execution::{ExecStatus, Execution};
use crate::domain::hook::{HookSandbox, HookSpec, HookTarget, PendingHook};
use crate::domain::state::AgentState;
use crate::validate::{Problem, check_base_url, check_env_name, check_relative};

/// A hook's limit when it sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a URL hook when it sets none.
pub const DEFAULT_URL_ATTEMPTS: u32 = 5;
/// Attempts of a command hook: it is not retried when it fails (its exit code is its
/// answer), only run again when a crash or a shutdown cut an attempt short.
pub const COMMAND_ATTEMPTS: u32 = crate::store::MAX_ATTEMPTS;

/// The statuses `when` may name.
const WHEN: &[&str] = &["completed", "failed", "cancelled", "stopped"];

/// `[hooks]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksDef {
    #[serde(default)]
    pub on_finish: Vec<HookDef>,
}

/// One `on_finish` entry: exactly one of `argv`, `url`, `url_env`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookDef {
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
    /// The statuses it runs for; all of them when empty.
    #[serde(default)]
    pub when: Vec<String>,
    #[serde(default, deserialize_with = "super::de_duration")]
    pub timeout: Option<Duration>,
    /// URL hooks: attempts in all (the first included) for the answers worth another.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Command hooks: the working directory, relative to the workspace.
    #[serde(default)]
    pub cwd: Option<String>,
}

impl HookDef {
    /// Whether it runs for an execution that ended `status`.
    pub fn runs_for(&self, status: ExecStatus) -> bool {
        self.when.is_empty() || self.when.iter().any(|w| w == status.as_str())
    }

    fn target(&self) -> Option<HookTarget> {
        match (&self.argv, &self.url, &self.url_env) {
            (Some(argv), None, None) => Some(HookTarget::Command { argv: argv.clone() }),
            (None, Some(url), None) => Some(HookTarget::Url { url: url.clone() }),
            (None, None, Some(name)) => Some(HookTarget::UrlEnv { name: name.clone() }),
            _ => None,
        }
    }
}

/// The hooks of the definition an execution ran with, and the sandbox their commands
/// run in (the agent's), kept until the execution settles. Empty when the definition
/// could not be read.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    hooks: Vec<HookDef>,
    sandbox: HookSandbox,
}

impl Snapshot {
    /// `withheld`: the variables the agent's key is read from.
    pub fn of(def: &AgentDef, withheld: Vec<String>) -> Snapshot {
        Snapshot {
            hooks: def.hooks.on_finish.clone(),
            sandbox: HookSandbox {
                workspace: def.tools.workspace.clone(),
                clean_env: def.tools.env == super::EnvMode::Clean,
                env_pass: def.tools.env_pass.clone(),
                withheld,
            },
        }
    }

    /// Puts the hooks `exec` (settled) leaves to deliver into the state it settles
    /// with, in place of any an earlier settling of it left there (a crash between
    /// the state and the record, on the files, settles it again).
    pub fn add_to(&self, state: &mut AgentState, exec: &Execution) {
        state.hooks.retain(|hook| hook.execution_id != exec.id);
        state.hooks.extend(self.pending_for(exec));
    }

    /// Those whose `when` takes the execution's status.
    fn pending_for(&self, exec: &Execution) -> Vec<PendingHook> {
        let sandbox = &self.sandbox;
        let hooks = self.hooks.iter().enumerate();
        hooks
            .filter(|(_, hook)| hook.runs_for(exec.status))
            .filter_map(|(i, hook)| {
                let target = hook.target()?;
                let max_attempts = match target {
                    HookTarget::Command { .. } => COMMAND_ATTEMPTS,
                    _ => hook.max_attempts.unwrap_or(DEFAULT_URL_ATTEMPTS),
                };
                Some(PendingHook {
                    execution_id: exec.id,
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    spec: HookSpec {
                        target,
                        timeout_ms: u64::try_from(
                            hook.timeout.unwrap_or(DEFAULT_TIMEOUT).as_millis(),
                        )
                        .unwrap_or(u64::MAX),
                        max_attempts,
                        cwd: hook.cwd.clone(),
                        sandbox: sandbox.clone(),
                    },
                    attempts: 0,
                })
            })
            .collect()
    }
}

/// Every problem of `[hooks] on_finish`, in order.
pub(super) fn check_hooks(def: &AgentDef, problems: &mut Vec<Problem>) {
    for (i, hook) in def.hooks.on_finish.iter().enumerate() {
        check_hook(i, hook, problems);
    }
}

/// `on_finish` entry `i`: one target, usable; statuses that exist; keys that go with
/// its kind.
fn check_hook(i: usize, hook: &HookDef, problems: &mut Vec<Problem>) {
    let key = |field: &str| format!("hooks.on_finish[{i}].{field}");
    let given = [
        hook.argv.is_some(),
        hook.url.is_some(),
        hook.url_env.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        problems.push(Problem::new(
            format!("hooks.on_finish[{i}]"),
            "give exactly one of `argv` (a program), `url` or `url_env` (the variable holding the URL)",
        ));
    }
    if let Some(argv) = &hook.argv {
        match argv.first().map(String::as_str) {
            None | Some("") => problems.push(Problem::new(
                key("argv"),
                "needs at least the program to run",
            )),
            // A program found in the workspace would be the model's to rewrite; a hook
            // runs what the definition says, outside the model's reach.
            Some(program) if program.contains('/') && !program.starts_with('/') => {
                problems.push(Problem::new(
                    key("argv"),
                    format!(
                        "`{}`: a hook's program is a name looked up in PATH or an absolute path, never a path relative to the workspace (which the model can write)",
                        program.escape_default()
                    ),
                ));
            }
            Some(_) => {}
        }
        if hook.max_attempts.is_some() {
            problems.push(Problem::new(
                key("max_attempts"),
                "is for url hooks: a command hook that fails is not run again (retry inside the command)",
            ));
        }
    } else if hook.cwd.is_some() {
        problems.push(Problem::new(key("cwd"), "is for command hooks (argv) only"));
    }
    if let Some(cwd) = &hook.cwd
        && let Err(message) = check_relative(cwd)
    {
        problems.push(Problem::new(key("cwd"), message));
    }
    if let Some(url) = &hook.url
        && let Err(message) = check_base_url(url)
    {
        problems.push(Problem::new(key("url"), message));
    }
    if let Some(name) = &hook.url_env
        && let Err(message) = check_env_name(name)
    {
        problems.push(Problem::new(key("url_env"), message));
    }
    for (j, status) in hook.when.iter().enumerate() {
        if !WHEN.contains(&status.as_str()) {
            problems.push(Problem::new(
                format!("hooks.on_finish[{i}].when[{j}]"),
                format!(
                    "`{}` is not a status an execution ends in; use {}",
                    status.escape_default(),
                    WHEN.join(", ")
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::HomeConfig;

    fn problems(hooks: &str) -> Vec<(String, String)> {
        let text = format!(
            "name = \"h\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntext = \"done\"\n{hooks}"
        );
        let source = super::super::Source {
            path: "agents/h.toml".into(),
            text,
        };
        match source.load(&Default::default(), &HomeConfig::default()) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.into_iter().map(|p| (p.key, p.message)).collect(),
        }
    }

    #[test]
    fn a_hook_has_one_target_a_program_outside_the_workspace_and_statuses_that_exist() {
        assert_eq!(
            problems(
                r#"
                [[hooks.on_finish]]
                argv = ["notify-send", "done"]
                when = ["failed", "stopped"]
                [[hooks.on_finish]]
                url_env = "SLACK_WEBHOOK_URL"
                max_attempts = 3
                timeout = "5s"
                [[hooks.on_finish]]
                url = "https://hooks.example.com/x"
                "#
            ),
            []
        );
        let keys: Vec<String> = problems(
            r#"
            [hooks]
            on_finish = [
              { argv = ["./notify.sh"], max_attempts = 2 },
              { url = "https://x/y", url_env = "HOOK_URL" },
              {},
              { url = "ftp://host/x", cwd = "sub" },
              { url_env = "https://hooks.slack.com/services/T/B/secret" },
              { argv = ["/usr/bin/true"], when = ["done"], cwd = "../out" },
            ]
            "#,
        )
        .into_iter()
        .map(|(key, _)| key)
        .collect();
        assert_eq!(
            keys,
            [
                "hooks.on_finish[0].argv",
                "hooks.on_finish[0].max_attempts",
                "hooks.on_finish[1]",
                "hooks.on_finish[2]",
                "hooks.on_finish[3].cwd",
                "hooks.on_finish[3].url",
                "hooks.on_finish[4].url_env",
                "hooks.on_finish[5].cwd",
                "hooks.on_finish[5].when[0]",
            ]
        );
        let unknown = problems("[[hooks.on_finish]]\nargv = [\"true\"]\nshell = true\n");
        assert_eq!(unknown[0].0, "hooks.on_finish[0].shell", "{unknown:?}");
        let secret = problems(
            "[[hooks.on_finish]]\nurl_env = \"https://hooks.slack.com/services/T/B/secret\"\n",
        );
        assert!(
            !secret[0].1.contains("secret"),
            "a URL pasted for the variable's name is not echoed: {secret:?}"
        );
    }
}

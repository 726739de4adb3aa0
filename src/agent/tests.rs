//! The agent loop against an in-memory sink and the scripted provider.

use super::*;
use crate::agent::budget::Budgets;
use crate::definition::Source;
use crate::domain::state::CurrentExecution;
use crate::provider::scripted::Scripted;
use std::collections::BTreeMap;

#[derive(Default)]
struct Memory {
    events: Vec<EventPayload>,
    transcript: Vec<TranscriptLine>,
    checkpoints: usize,
    /// Per checkpoint: how many lines it appended, and the failed check rounds its
    /// state counted.
    checkpointed: Vec<(usize, u32)>,
    /// Stop requested once this many events were recorded.
    stop_after: Option<(usize, Stop)>,
    /// Events of this type fail to be written, as if the worker died right there.
    crash_at: Option<&'static str>,
}

impl Sink for Memory {
    fn emit(&mut self, payload: EventPayload) -> anyhow::Result<()> {
        if self.crash_at == Some(payload.type_name()) {
            anyhow::bail!("killed before writing {}", payload.type_name());
        }
        self.events.push(payload);
        Ok(())
    }
    fn checkpoint(
        &mut self,
        lines: Vec<TranscriptLine>,
        state: &mut AgentState,
    ) -> anyhow::Result<()> {
        let rounds = state.current.as_ref().map_or(0, |c| c.failed_check_rounds);
        self.checkpointed.push((lines.len(), rounds));
        self.transcript.extend(lines);
        state.transcript.lines = self.transcript.len() as u64;
        self.checkpoints += 1;
        Ok(())
    }
    fn stop_requested(&mut self) -> Option<Stop> {
        self.stop_after
            .filter(|(n, _)| self.events.len() >= *n)
            .map(|(_, s)| s)
    }
    /// Time moves one second per recorded event, so time limits can be tested.
    fn now(&self) -> Timestamp {
        Timestamp(self.events.len() as i64 * 1000)
    }
}

impl Memory {
    fn types(&self) -> Vec<&'static str> {
        self.events.iter().map(EventPayload::type_name).collect()
    }
}

fn agent(body: &str) -> AgentDef {
    let text = format!("name = \"t\"\n{body}");
    Source {
        path: "agents/t.toml".into(),
        text,
    }
    .load(&BTreeMap::new(), &crate::config::HomeConfig::default())
    .unwrap()
}

/// The state of an execution resumed after `model_calls` model calls, changed by
/// `edit`.
fn resumed_state(model_calls: u64, edit: impl FnOnce(&mut CurrentExecution)) -> AgentState {
    let mut state = fresh_state();
    state.model_calls = model_calls;
    edit(state.current.as_mut().unwrap());
    state
}

/// The state of an execution about to take its first step.
fn fresh_state() -> AgentState {
    AgentState {
        current: Some(CurrentExecution {
            execution_id: Uuid::nil(),
            message_id: Uuid::nil(),
            message_seq: 0,
            previous_execution: None,
            attempts: 1,
            steps: 0,
            usage: Usage::default(),
            started_at: Timestamp(0),
            failed_steps_in_a_row: 0,
            failed_check_rounds: 0,
            invalid_answers: 0,
            parked_ms: 0,
            open_step: None,
        }),
        ..AgentState::default()
    }
}

struct Harness {
    def: AgentDef,
    workspace: tempfile::TempDir,
    preset: EventsPreset,
    session_usage: Usage,
    price: Option<crate::config::Price>,
}

impl Harness {
    fn new(body: &str) -> Harness {
        Harness {
            def: agent(body),
            workspace: tempfile::tempdir().unwrap(),
            preset: EventsPreset::Standard,
            session_usage: Usage::default(),
            price: None,
        }
    }

    fn run(&self, sink: &mut Memory, input: &str) -> (LoopEnd, AgentState) {
        let history = vec![Message::User {
            content: input.into(),
        }];
        self.run_from(sink, history, fresh_state())
    }

    /// Runs from a given history and state, as a worker resuming an execution does.
    fn run_from(
        &self,
        sink: &mut Memory,
        mut history: Vec<Message>,
        mut state: AgentState,
    ) -> (LoopEnd, AgentState) {
        let end = self.try_run(sink, &mut history, &mut state).unwrap();
        (end, state)
    }

    /// Runs on `history` and `state`, leaving them as the loop did, failed or not.
    fn try_run(
        &self,
        sink: &mut Memory,
        history: &mut Vec<Message>,
        state: &mut AgentState,
    ) -> anyhow::Result<LoopEnd> {
        let provider = Scripted::new(
            self.def.model.script.clone(),
            crate::provider::retry::RetryPolicy::with_max_attempts(self.def.model.max_attempts),
        );
        let tools = Toolbox::new(
            self.workspace.path().to_owned(),
            &self.def.tools.builtin,
            self.def.tools.command.clone(),
        );
        let run = Run {
            def: &self.def,
            provider: &provider,
            tools: &tools,
            preset: self.preset,
            execution_id: Uuid::nil(),
            session_usage: self.session_usage,
            budgets: Budgets::from_def(&self.def, 0, self.price),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(super::run(&run, history, state, sink))
    }
}

const READ_THEN_ANSWER: &str = r#"
[model]
provider = "scripted"
[[model.script]]
text = "Writing."
tool_calls = [{ name = "write_file", arguments = { path = "a.txt", content = "hello" } }, { name = "read_file", arguments = { path = "a.txt" } }]
usage = { input = 10, output = 2 }
[[model.script]]
text = "Done: {input}"
usage = { input = 20, output = 3 }
[tools]
builtin = ["read_file", "write_file"]
"#;

#[test]
fn tool_results_go_back_to_the_model_until_it_answers() {
    let h = Harness::new(READ_THEN_ANSWER);
    let mut sink = Memory::default();
    let (end, state) = h.run(&mut sink, "go");
    let LoopEnd::Settled(outcome) = end else {
        panic!("suspended")
    };
    assert_eq!(outcome.status, ExecStatus::Completed);
    assert_eq!(outcome.response.as_deref(), Some("Done: go"));
    assert_eq!(state.model_calls, 2);
    let current = state.current.unwrap();
    assert_eq!(current.steps, 2);
    assert_eq!(current.usage, Usage::new(30, 5));
    // The first answer, the start of the side-effecting write, each result, the answer.
    assert_eq!(sink.checkpoints, 5);
    let tool_result = &sink.transcript[2].message;
    assert_eq!(
        tool_result,
        &Message::Tool {
            tool_call_id: "call_1_2".into(),
            name: "read_file".into(),
            content: "hello".into(),
            is_error: false
        }
    );
    assert_eq!(
        sink.types(),
        vec![
            "agent.step.started",
            "agent.stream.chunk",
            "agent.tool.started",
            "agent.tool.completed",
            "agent.tool.started",
            "agent.tool.completed",
            "agent.step.completed",
            "agent.step.started",
            "agent.stream.chunk",
            "agent.stream.chunk",
            "agent.step.completed",
        ],
        "the answer's own event is written by the worker when it settles the execution"
    );
}

#[test]
fn max_steps_stops_the_execution() {
    let h = Harness::new(
        r#"
        [model]
        provider = "scripted"
        [[model.script]]
        text = "again"
        tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
        [limits]
        max_steps = 3
        [tools]
        builtin = ["list_dir"]
        "#,
    );
    let mut sink = Memory::default();
    let (end, state) = h.run(&mut sink, "loop");
    let LoopEnd::Settled(outcome) = end else {
        panic!("suspended")
    };
    assert_eq!(
        (outcome.status, outcome.stop_reason),
        (ExecStatus::Stopped, StopReason::StepsLimit)
    );
    assert_eq!(state.current.unwrap().steps, 3);
}

#[test]
fn a_transient_provider_error_is_retried_then_fails_as_unavailable() {
    let h = Harness::new(
        r#"
        [model]
        provider = "scripted"
        max_attempts = 2
        [[model.script]]
        error = { status = 503, message = "overloaded" }
        "#,
    );
    let mut sink = Memory::default();
    let (end, state) = h.run(&mut sink, "x");
    let LoopEnd::Settled(outcome) = end else {
        panic!("suspended")
    };
    assert_eq!(outcome.stop_reason, StopReason::ProviderUnavailable);
    let retries: Vec<&EventPayload> = sink
        .events
        .iter()
        .filter(|e| matches!(e, EventPayload::ProviderRetry(_)))
        .collect();
    assert_eq!(retries.len(), 1, "max_attempts = 2: one retry");
    let message = outcome.error.unwrap().message;
    assert!(message.contains("overloaded"), "{message}");
    assert!(message.contains("gave up after 2 attempts"), "{message}");
    assert_eq!(state.model_calls, 1, "the script entry is used up");
    assert_eq!(sink.checkpoints, 0);
}

#[test]
fn unknown_tools_are_errors_the_model_sees() {
    let h = Harness::new(
        r#"
        [model]
        provider = "scripted"
        [[model.script]]
        tool_calls = [{ name = "rm_rf", arguments = {} }]
        [[model.script]]
        text = "sorry"
        "#,
    );
    let mut sink = Memory::default();
    let (end, _) = h.run(&mut sink, "x");
    assert!(matches!(
        end,
        LoopEnd::Settled(Outcome {
            status: ExecStatus::Completed,
            ..
        })
    ));
    let Message::Tool {
        is_error, content, ..
    } = &sink.transcript[1].message
    else {
        panic!()
    };
    assert!(is_error);
    assert!(content.contains("unknown tool `rm_rf`"));
}

#[test]
fn cancellation_between_tool_calls_answers_the_rest_with_errors() {
    let h = Harness::new(READ_THEN_ANSWER);
    // Stop once the first tool has completed (step.started, chunk, tool.started, tool.completed).
    let mut sink = Memory {
        stop_after: Some((4, Stop::Cancel)),
        ..Memory::default()
    };
    let (end, _) = h.run(&mut sink, "x");
    assert_eq!(end, LoopEnd::Settled(cancelled()));
    assert_eq!(
        sink.transcript.len(),
        3,
        "assistant line and both tool results are kept"
    );
    let Message::Tool {
        is_error, content, ..
    } = &sink.transcript[2].message
    else {
        panic!()
    };
    assert!(*is_error && content.contains("cancelled"));
}

#[test]
fn shutdown_mid_stream_leaves_the_step_unsettled() {
    let h = Harness::new(READ_THEN_ANSWER);
    let mut sink = Memory {
        stop_after: Some((1, Stop::Shutdown)),
        ..Memory::default()
    };
    let (end, state) = h.run(&mut sink, "x");
    assert_eq!(end, LoopEnd::Suspended);
    assert_eq!(sink.checkpoints, 0);
    assert_eq!(
        state.model_calls, 0,
        "the interrupted call will be made again"
    );
    assert!(!h.workspace.path().join("a.txt").exists(), "no tool ran");
}

#[test]
fn the_debug_preset_traces_each_continuation() {
    let mut h = Harness::new(READ_THEN_ANSWER);
    h.preset = EventsPreset::Debug;
    let mut sink = Memory::default();
    h.run(&mut sink, "x");
    let traces: Vec<_> = sink
        .events
        .iter()
        .filter_map(|e| match e {
            EventPayload::Continuation(c) => Some((c.step_number, c.should_continue)),
            _ => None,
        })
        .collect();
    assert_eq!(traces, vec![(1, true), (2, false)]);
    let full_args = sink
        .events
        .iter()
        .any(|e| matches!(e, EventPayload::ToolStarted(t) if t.args.is_some()));
    assert!(full_args);
}

#[test]
fn the_minimal_preset_records_no_chunks() {
    let mut h = Harness::new(READ_THEN_ANSWER);
    h.preset = EventsPreset::Minimal;
    let mut sink = Memory::default();
    h.run(&mut sink, "x");
    assert!(!sink.types().contains(&"agent.stream.chunk"));
}

fn outcome(end: LoopEnd) -> Outcome {
    match end {
        LoopEnd::Settled(outcome) => outcome,
        LoopEnd::Suspended => panic!("suspended"),
        LoopEnd::Parked(parked) => panic!("parked on {parked:?}"),
    }
}

const TOOL_FOREVER: &str = r#"
[model]
provider = "scripted"
[[model.script]]
text = "again"
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
usage = { input = 100, output = 10 }
[tools]
builtin = ["list_dir"]
"#;

#[test]
fn max_tokens_stops_the_execution() {
    let h = Harness::new(&format!("{TOOL_FOREVER}[limits]\nmax_tokens = 300\n"));
    let (end, state) = h.run(&mut Memory::default(), "x");
    assert_eq!(outcome(end).stop_reason, StopReason::TokenLimit);
    assert_eq!(
        state.current.unwrap().usage.total,
        330,
        "stops after the step that passed it"
    );
}

#[test]
fn session_max_tokens_counts_earlier_executions() {
    let mut h = Harness::new(&format!(
        "{TOOL_FOREVER}[limits]\nsession_max_tokens = 1000\n"
    ));
    h.session_usage = Usage::new(900, 0);
    let (end, state) = h.run(&mut Memory::default(), "x");
    assert_eq!(outcome(end).stop_reason, StopReason::TokenLimit);
    assert_eq!(state.current.unwrap().steps, 1);
}

#[test]
fn max_cost_usd_stops_with_cost_limit_when_priced() {
    let mut h = Harness::new(&format!("{TOOL_FOREVER}[limits]\nmax_cost_usd = 0.002\n"));
    h.price = Some(crate::config::Price {
        input_per_mtok: 10.0,
        output_per_mtok: 10.0,
    });
    // $0.0011 per step: stops after the second.
    let (end, state) = h.run(&mut Memory::default(), "x");
    assert_eq!(outcome(end).stop_reason, StopReason::CostLimit);
    assert_eq!(state.current.unwrap().steps, 2);
}

#[test]
fn the_timeout_stops_between_steps_and_mid_stream() {
    let h = Harness::new(&format!("{TOOL_FOREVER}[limits]\ntimeout = \"5s\"\n"));
    let (end, _) = h.run(&mut Memory::default(), "x");
    assert_eq!(outcome(end), Outcome::stopped(StopReason::TimeLimit));
}

const FAILING_TOOL: &str = r#"
[model]
provider = "scripted"
[[model.script]]
text = "trying"
tool_calls = [{ name = "read_file", arguments = { path = "missing.txt" } }]
[tools]
builtin = ["read_file"]
"#;

#[test]
fn consecutive_tool_errors_fail_the_execution() {
    let h = Harness::new(FAILING_TOOL);
    let (end, state) = h.run(&mut Memory::default(), "x");
    let outcome = outcome(end);
    assert_eq!(
        (outcome.status, outcome.stop_reason),
        (ExecStatus::Failed, StopReason::Error)
    );
    assert!(
        outcome
            .error
            .unwrap()
            .message
            .contains("3 steps in a row had all their tool calls fail")
    );
    assert_eq!(state.current.unwrap().steps, 3);
}

/// A step of four calls that all fail (a small model guessing absolute paths), then
/// the model's answer once it has seen the errors.
const FOUR_FAILING_CALLS_THEN_ANSWER: &str = r#"
[model]
provider = "scripted"
[[model.script]]
tool_calls = [
    { name = "read_file", arguments = { path = "/Users/me/a.txt" } },
    { name = "read_file", arguments = { path = "/Users/me/b.txt" } },
    { name = "read_file", arguments = { path = "/Users/me/c.txt" } },
    { name = "read_file", arguments = { path = "/Users/me/d.txt" } },
]
[[model.script]]
text = "I see: the paths are relative."
[tools]
builtin = ["read_file"]
"#;

#[test]
fn a_step_whose_calls_all_fail_goes_back_to_the_model_before_it_is_judged() {
    let h = Harness::new(FOUR_FAILING_CALLS_THEN_ANSWER);
    let mut sink = Memory::default();
    let (end, state) = h.run(&mut sink, "x");
    let outcome = outcome(end);
    assert_eq!(outcome.status, ExecStatus::Completed, "{outcome:?}");
    assert_eq!(
        outcome.response.as_deref(),
        Some("I see: the paths are relative.")
    );
    let errors = sink
        .transcript
        .iter()
        .filter(|l| matches!(l.message, Message::Tool { is_error: true, .. }))
        .count();
    assert_eq!(errors, 4, "every error went back to the model");
    assert_eq!(
        state.current.unwrap().failed_steps_in_a_row,
        1,
        "one step, under the limit of 3"
    );
}

#[test]
fn a_step_with_one_call_that_works_resets_the_count_of_failed_steps() {
    // Steps alternate: one failing call, then a failing and a working one. Counting
    // calls, four would fail in a row; counting steps, never two.
    let h = Harness::new(
        r#"
        [model]
        provider = "scripted"
        [[model.script]]
        tool_calls = [{ name = "read_file", arguments = { path = "missing.txt" } }]
        [[model.script]]
        tool_calls = [
            { name = "read_file", arguments = { path = "missing.txt" } },
            { name = "list_dir", arguments = { path = "." } },
        ]
        [[model.script]]
        tool_calls = [{ name = "read_file", arguments = { path = "missing.txt" } }]
        [[model.script]]
        text = "done"
        [tools]
        builtin = ["read_file", "list_dir"]
        [limits]
        max_consecutive_errors = 2
        "#,
    );
    let (end, state) = h.run(&mut Memory::default(), "x");
    assert_eq!(outcome(end).status, ExecStatus::Completed);
    assert_eq!(state.current.unwrap().steps, 4);
}

/// A declared command that leaves its mark, then waits (at most `tries` × 50 ms) for
/// the other's: two of them can only both succeed if they run at the same time.
fn rendezvous(name: &str, mine: &str, theirs: &str, tries: u32, read_only: bool) -> String {
    format!(
        r#"
        [[tools.command]]
        name = "{name}"
        argv = ["sh", "-c", "touch {mine}; i=0; while [ ! -e {theirs} ] && [ $i -lt {tries} ]; do sleep 0.05; i=$((i+1)); done; [ -e {theirs} ] && echo {name} met"]
        read_only = {read_only}
        "#
    )
}

#[test]
fn read_only_calls_of_a_step_run_at_the_same_time_and_report_in_call_order() {
    let h = Harness::new(&format!(
        r#"
        [model]
        provider = "scripted"
        [[model.script]]
        tool_calls = [{{ name = "left" }}, {{ name = "right" }}, {{ name = "list_dir", arguments = {{ path = "." }} }}]
        [[model.script]]
        text = "both met"
        [tools]
        builtin = ["list_dir"]
        {}{}"#,
        rendezvous("left", "left.mark", "right.mark", 200, true),
        rendezvous("right", "right.mark", "left.mark", 200, true),
    ));
    let mut sink = Memory::default();
    let (end, _) = h.run(&mut sink, "x");
    assert_eq!(outcome(end).status, ExecStatus::Completed);
    let results: Vec<(&str, &str, bool)> = sink
        .transcript
        .iter()
        .filter_map(|l| match &l.message {
            Message::Tool {
                name,
                content,
                is_error,
                ..
            } => Some((name.as_str(), content.as_str(), *is_error)),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        ["left", "right", "list_dir"],
        "results in the order of the calls"
    );
    assert!(
        results.iter().all(|r| !r.2),
        "the commands met, so they ran at the same time: {results:?}"
    );
    let tools: Vec<(&str, &str)> = sink
        .events
        .iter()
        .filter_map(|e| match e {
            EventPayload::ToolStarted(t) => Some(("started", t.tool_name.as_str())),
            EventPayload::ToolCompleted(t) => Some(("completed", t.tool_name.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        tools,
        [
            ("started", "left"),
            ("started", "right"),
            ("started", "list_dir"),
            ("completed", "left"),
            ("completed", "right"),
            ("completed", "list_dir"),
        ]
    );
}

#[test]
fn side_effecting_calls_run_one_at_a_time() {
    let h = Harness::new(&format!(
        r#"
        [model]
        provider = "scripted"
        [[model.script]]
        tool_calls = [{{ name = "left" }}, {{ name = "right" }}]
        [[model.script]]
        text = "done"
        {}{}"#,
        rendezvous("left", "left.mark", "right.mark", 10, false),
        rendezvous("right", "right.mark", "left.mark", 10, false),
    ));
    let mut sink = Memory::default();
    let (end, _) = h.run(&mut sink, "x");
    assert_eq!(outcome(end).status, ExecStatus::Completed);
    let types: Vec<&str> = sink
        .types()
        .into_iter()
        .filter(|t| t.starts_with("agent.tool"))
        .collect();
    assert_eq!(
        types,
        [
            "agent.tool.started",
            "agent.tool.completed",
            "agent.tool.started",
            "agent.tool.completed"
        ]
    );
    let failed = sink
        .transcript
        .iter()
        .filter(|l| matches!(l.message, Message::Tool { is_error: true, .. }))
        .count();
    assert_eq!(
        failed, 1,
        "the first waited in vain for the second, which then met it"
    );
}

#[test]
fn on_tool_error_stop_fails_at_the_first_error() {
    let h = Harness::new(&format!(
        "{FAILING_TOOL}[limits]\non_tool_error = \"stop\"\n"
    ));
    let (end, state) = h.run(&mut Memory::default(), "x");
    let outcome = outcome(end);
    assert_eq!(outcome.stop_reason, StopReason::Error);
    assert!(outcome.error.unwrap().message.contains("does not exist"));
    assert_eq!(state.current.unwrap().steps, 1);
}

#[test]
fn todo_write_keeps_the_plan_in_the_state() {
    let h = Harness::new(
        r#"
        [model]
        provider = "scripted"
        [[model.script]]
        tool_calls = [{ name = "todo_write", arguments = { todos = [{ content = "read", status = "in_progress" }, { content = "write", status = "pending" }] } }]
        [[model.script]]
        text = "planned"
        [tools]
        builtin = ["todo_write"]
        "#,
    );
    let (_, state) = h.run(&mut Memory::default(), "x");
    assert_eq!(state.todos.len(), 2);
    assert_eq!(
        state.todos[0].status,
        crate::domain::state::TodoStatus::InProgress
    );
}

#[test]
fn an_oversized_history_is_compacted_with_a_scripted_summary() {
    // Step 1 reads a big file. Before step 2 the prompt is over 80% of the window, but
    // the big result belongs to the exchange in progress, which stays whole. After step
    // 2 it can go: the third model call writes the summary and the fourth answers.
    let h = Harness::new(
        r#"
        [model]
        provider = "scripted"
        context_window = 2000
        [[model.script]]
        text = "reading"
        tool_calls = [{ name = "read_file", arguments = { path = "big.txt" } }]
        [[model.script]]
        text = "listing"
        tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
        [[model.script]]
        text = "SUMMARY: the user asked; big.txt was read."
        [[model.script]]
        text = "done"
        [tools]
        builtin = ["read_file", "list_dir"]
        "#,
    );
    std::fs::write(h.workspace.path().join("big.txt"), "word ".repeat(2000)).unwrap();
    let mut sink = Memory::default();
    let (end, state) = h.run(&mut sink, "summarise big.txt");
    assert_eq!(outcome(end).response.as_deref(), Some("done"));
    let compacted: Vec<_> = sink
        .events
        .iter()
        .filter_map(|e| match e {
            EventPayload::ContextCompacted(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(compacted.len(), 1);
    assert!(compacted[0].summarized);
    assert!(compacted[0].after_tokens < compacted[0].before_tokens);
    let compaction = state.compaction.unwrap();
    assert_eq!(
        compaction.summary.as_deref(),
        Some("SUMMARY: the user asked; big.txt was read.")
    );
    assert_eq!(
        sink.transcript.len(),
        5,
        "every step is kept in the transcript"
    );
    assert_eq!(compaction.through, 3);
    assert_eq!(state.model_calls, 4);
}

#[test]
fn a_resumed_step_runs_only_unanswered_calls_and_never_reruns_a_started_one() {
    // Script entry 1 answers; entry 0 (the step being resumed) is not called again.
    let h = Harness::new(READ_THEN_ANSWER);
    let calls = vec![
        ToolCall::from_json_text(
            "call_1_1".into(),
            "write_file".into(),
            r#"{"path":"a.txt","content":"hello"}"#,
        ),
        ToolCall::from_json_text("call_1_2".into(), "read_file".into(), r#"{"path":"a.txt"}"#),
    ];
    let history = vec![
        Message::User {
            content: "go".into(),
        },
        Message::Assistant {
            content: "Writing.".into(),
            tool_calls: calls,
        },
    ];
    let state = resumed_state(1, |current| {
        current.usage = Usage::new(10, 2);
        current.open_step = Some(crate::domain::state::OpenStep {
            finish_reason: Some("tool_calls".into()),
            usage: Usage::new(10, 2),
            tool_started: Some("call_1_1".into()),
            awaiting: None,
        });
    });
    let mut sink = Memory::default();
    let (end, state) = h.run_from(&mut sink, history, state);
    assert_eq!(outcome(end).response.as_deref(), Some("Done: go"));
    assert!(
        !h.workspace.path().join("a.txt").exists(),
        "the started write is not run again"
    );
    let Message::Tool {
        content, is_error, ..
    } = &sink.transcript[0].message
    else {
        panic!()
    };
    assert!(*is_error && content.starts_with("interrupted"), "{content}");
    let Message::Tool { content, .. } = &sink.transcript[1].message else {
        panic!()
    };
    assert!(
        content.contains("does not exist"),
        "the read ran: {content}"
    );
    assert_eq!(state.current.unwrap().steps, 2);
    assert_eq!(
        state.model_calls, 2,
        "the answer of step 1 was not asked for again"
    );
    assert!(
        !sink.types().contains(&"agent.step.started")
            || sink
                .types()
                .iter()
                .filter(|t| **t == "agent.step.started")
                .count()
                == 1
    );
}

#[test]
fn a_resumed_execution_whose_last_step_answered_settles_without_a_model_call() {
    let h = Harness::new(READ_THEN_ANSWER);
    let history = vec![
        Message::User {
            content: "go".into(),
        },
        Message::Assistant {
            content: "Already answered.".into(),
            tool_calls: vec![],
        },
    ];
    let state = resumed_state(2, |current| current.steps = 1);
    let mut sink = Memory::default();
    let (end, state) = h.run_from(&mut sink, history, state);
    assert_eq!(outcome(end).response.as_deref(), Some("Already answered."));
    assert!(sink.events.is_empty());
    assert_eq!(state.model_calls, 2);
}

/// A command that takes far longer than a test may wait, declared with `read_only`.
fn hanging_command(read_only: bool) -> String {
    format!(
        r#"
[model]
provider = "scripted"
[[model.script]]
text = "Running."
tool_calls = [{{ name = "hang", arguments = {{}} }}]
[[model.script]]
text = "carried on"
[[tools.command]]
name = "hang"
argv = ["sleep", "30"]
read_only = {read_only}
"#
    )
}

#[test]
fn a_shutdown_cuts_a_running_command_and_its_resumed_step_never_runs_it_again() {
    for read_only in [false, true] {
        let h = Harness::new(&hanging_command(read_only));
        // step.started, one chunk, tool.started: the shutdown comes while it runs.
        let mut sink = Memory {
            stop_after: Some((3, Stop::Shutdown)),
            ..Memory::default()
        };
        let started = Instant::now();
        let (end, state) = h.run(&mut sink, "x");
        assert_eq!(end, LoopEnd::Suspended, "read_only = {read_only}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let marked = state.current.as_ref().unwrap().open_step.as_ref().unwrap();
        // Only a call that may have had effects is marked; a read-only one runs again.
        assert_eq!(
            marked.tool_started.is_some(),
            !read_only,
            "read_only = {read_only}"
        );
        assert_eq!(sink.transcript.len(), 1, "the answer only, no tool result");
        assert!(sink.events.iter().any(|e| matches!(
            e,
            EventPayload::ToolCompleted(t) if !t.success && t.error.as_deref().is_some_and(|e| e.starts_with("interrupted"))
        )));

        if read_only {
            // Resumed, a read-only call is run again: not waited for here.
            continue;
        }
        let history: Vec<Message> = std::iter::once(Message::User {
            content: "x".into(),
        })
        .chain(sink.transcript.iter().map(|l| l.message.clone()))
        .collect();
        let mut resumed = Memory::default();
        let (end, _) = h.run_from(&mut resumed, history, state);
        assert_eq!(outcome(end).response.as_deref(), Some("carried on"));
        let Message::Tool {
            is_error, content, ..
        } = &resumed.transcript[0].message
        else {
            panic!("{:?}", resumed.transcript)
        };
        assert!(*is_error && content.starts_with("interrupted"), "{content}");
    }
}

/// Answers at once, then writes the file the check looks for, then answers again.
const CHECKED: &str = r#"
[model]
provider = "scripted"
[[model.script]]
text = "Done."
[[model.script]]
text = "Fixing."
tool_calls = [{ name = "write_file", arguments = { path = "ok.txt", content = "ok" } }]
[[model.script]]
text = "Done now."
[tools]
builtin = ["write_file"]
[[checks]]
name = "ok"
argv = ["sh", "-c", "echo 'ok.txt is missing' >&2; test -f ok.txt"]
"#;

fn checks_of(sink: &Memory) -> Vec<(String, u32, bool)> {
    sink.events
        .iter()
        .filter_map(|e| match e {
            EventPayload::CheckCompleted(c) => Some((c.name.clone(), c.round, c.success)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failed_check_goes_back_to_the_model_in_one_checkpoint_with_its_round() {
    let h = Harness::new(CHECKED);
    let mut sink = Memory::default();
    let (end, state) = h.run(&mut sink, "go");
    let outcome = outcome(end);
    assert_eq!(outcome.status, ExecStatus::Completed);
    assert_eq!(outcome.response.as_deref(), Some("Done now."));
    assert_eq!(outcome.checks.len(), 1);
    assert!(outcome.checks[0].success);
    assert_eq!(outcome.checks[0].exit_code, Some(0));
    assert_eq!(
        checks_of(&sink),
        [("ok".to_owned(), 1, false), ("ok".to_owned(), 2, true)]
    );
    assert_eq!(state.model_calls, 3);
    let feedback = &sink.transcript[1];
    assert_eq!(
        feedback.feedback,
        Some(crate::domain::transcript::Feedback::Check)
    );
    let Message::User { content } = &feedback.message else {
        panic!("{feedback:?}")
    };
    assert!(
        content.contains("The check `ok`") && content.contains("ok.txt is missing"),
        "{content}"
    );
    // The answer's checkpoint, then the feedback line alone with the round counted.
    assert_eq!(&sink.checkpointed[..2], [(1, 0), (1, 1)]);
    assert_eq!(state.current.unwrap().failed_check_rounds, 1);
}

#[test]
fn a_resumed_answer_runs_its_round_of_checks_again_without_a_model_call() {
    let h = Harness::new(&CHECKED.replace("test -f ok.txt", "false"));
    let history = vec![
        Message::User {
            content: "go".into(),
        },
        Message::Assistant {
            content: "Done.".into(),
            tool_calls: vec![],
        },
    ];
    let state = resumed_state(5, |current| {
        current.attempts = 2;
        current.steps = 5;
        current.failed_check_rounds = 2;
    });
    let mut sink = Memory::default();
    let (end, state) = h.run_from(&mut sink, history, state);
    let outcome = outcome(end);
    assert_eq!(outcome.status, ExecStatus::Failed);
    assert_eq!(outcome.stop_reason, StopReason::ChecksFailed);
    let error = outcome.error.unwrap();
    assert!(
        error.message.contains("`ok` (exit code: 1") && error.message.contains("3 rounds"),
        "{error:?}"
    );
    assert_eq!(checks_of(&sink), [("ok".to_owned(), 3, false)]);
    assert_eq!(state.model_calls, 5, "no model call");
    assert_eq!(sink.checkpoints, 0, "the last round is not sent back");
}

#[test]
fn a_shutdown_during_a_check_kills_it_and_suspends_with_the_round_unrecorded() {
    let h = Harness::new(&CHECKED.replace("test -f ok.txt", "sleep 30"));
    // step.started, one chunk, step.completed, check.started: then the shutdown.
    let mut sink = Memory {
        stop_after: Some((4, Stop::Shutdown)),
        ..Memory::default()
    };
    let started = Instant::now();
    let (end, state) = h.run(&mut sink, "go");
    assert_eq!(end, LoopEnd::Suspended);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(sink.checkpointed, [(1, 0)], "the answer alone");
    assert_eq!(state.current.unwrap().failed_check_rounds, 0);
    assert!(matches!(
        sink.events.last(),
        Some(EventPayload::CheckCompleted(c)) if !c.success && c.output_summary.contains("runs again")
    ));
}

const GATED: &str = r#"
[model]
provider = "scripted"
[[model.script]]
text = "Deploying."
tool_calls = [{ name = "deploy", arguments = { target = "prod" } }]
[[model.script]]
text = "Done."
[[tools.command]]
name = "deploy"
description = "Deploy"
argv = ["true"]
approval = "required"
"#;

#[test]
fn a_park_cut_short_before_its_event_reports_it_at_the_next_park() {
    let h = Harness::new(GATED);
    let mut sink = Memory {
        crash_at: Some("approval.requested"),
        ..Memory::default()
    };
    let mut history = vec![Message::User {
        content: "go".into(),
    }];
    let mut state = fresh_state();
    h.try_run(&mut sink, &mut history, &mut state)
        .expect_err("the worker dies after the park's checkpoint");
    let awaiting = |state: &AgentState| {
        let open = state.current.as_ref().unwrap().open_step.as_ref().unwrap();
        open.awaiting.clone().expect("parked")
    };
    assert!(awaiting(&state).unreported, "the state says so");

    sink.crash_at = None;
    let end = h.try_run(&mut sink, &mut history, &mut state).unwrap();
    assert!(matches!(end, LoopEnd::Parked(_)), "{end:?}");
    assert_eq!(
        sink.types()
            .iter()
            .filter(|t| **t == "approval.requested")
            .count(),
        1,
        "{:?}",
        sink.types()
    );
    assert!(!awaiting(&state).unreported);

    // A third park (a worker that finds nothing decided) writes nothing more.
    h.try_run(&mut sink, &mut history, &mut state).unwrap();
    assert_eq!(
        sink.types()
            .iter()
            .filter(|t| **t == "approval.requested")
            .count(),
        1
    );
}

//! What both renderings say of approvals: the call that waits, with the commands that
//! decide it, and the decision.

use uuid::Uuid;

use crate::domain::approval::{ApprovalDecided, ApprovalRequested, Verdict};
use crate::text::{ERROR_CAP, FIELD_CAP, one_line, summarize_args};

/// `⏸ run_tests (call_3_1) waits for approval: path: 'x'`, and on the next line the
/// commands that approve or deny it.
pub fn requested(session: Uuid, p: &ApprovalRequested) -> String {
    let args = if p.arguments_truncated {
        "(arguments too long to show here)".to_owned()
    } else {
        summarize_args(&p.arguments, 100)
    };
    format!(
        "⏸ {} ({}) waits for approval: {}\n  {}",
        super::tool_label(&p.tool_name, p.server.as_deref()),
        one_line(&p.tool_call_id, FIELD_CAP),
        one_line(&args, FIELD_CAP),
        commands(session, &p.tool_call_id)
    )
}

/// `agentq approve ID CALL | agentq deny ID CALL --reason …`.
pub fn commands(session: Uuid, call: &str) -> String {
    let call = one_line(call, FIELD_CAP);
    format!("agentq approve {session} {call} | agentq deny {session} {call} --reason …")
}

/// `✓ approved call_3_1 (by ann)` / `✗ denied call_3_1 (by ann): too risky`.
pub fn decided(p: &ApprovalDecided) -> String {
    let (mark, verdict) = match p.decision {
        Verdict::Approved => ("✓", "approved"),
        Verdict::Denied => ("✗", "denied"),
    };
    let reason = p
        .reason
        .as_deref()
        .map(|r| format!(": {}", one_line(r, ERROR_CAP)))
        .unwrap_or_default();
    format!(
        "{mark} {verdict} {} (by {}){reason}",
        one_line(&p.tool_call_id, FIELD_CAP),
        one_line(&p.by.user, FIELD_CAP)
    )
}

//! `agentq approve`: lets the call a session's execution is parked on run, through an
//! `approve` entry in the inbox (`approval.rs` finds the call and queues it).

use anyhow::Result;

use super::Context;
use super::approval::{Asked, decide};
use crate::cli::ApproveArgs;
use crate::domain::approval::Verdict;

pub fn run(ctx: &Context, args: ApproveArgs) -> Result<u8> {
    decide(
        ctx,
        Asked {
            session: &args.id,
            call: args.call_id.as_deref(),
            verdict: Verdict::Approved,
            reason: None,
            json: args.json,
        },
    )
}

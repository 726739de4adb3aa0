//! `agentq deny`: refuses the call a session's execution is parked on, through a
//! `deny` entry in the inbox; the model gets a tool error with the reason.

use anyhow::Result;

use super::Context;
use super::approval::{Asked, decide};
use crate::cli::DenyArgs;
use crate::domain::approval::Verdict;

pub fn run(ctx: &Context, args: DenyArgs) -> Result<u8> {
    decide(
        ctx,
        Asked {
            session: &args.id,
            call: args.call_id.as_deref(),
            verdict: Verdict::Denied,
            reason: args.reason,
            json: args.json,
        },
    )
}

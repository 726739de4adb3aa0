mod agent_loop;
mod env;
mod fake_server;
mod pipeline;
mod providers;
mod refusals;

pub use env::*;

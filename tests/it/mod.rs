mod agent_loop;
mod env;
mod fake_server;
mod faults;
mod formats;
mod mcp;
mod mcp_worker;
mod pipeline;
mod postgres;
mod providers;
mod real;
mod refusals;
mod store_cmd;
mod watching;
mod workers;

pub use env::*;

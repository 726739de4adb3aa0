mod agent_loop;
mod browser;
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
mod serve;
mod store_cmd;
mod watching;
mod workers;

pub use env::*;

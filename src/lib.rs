//! agentq: a command-line job runner for LLM agents whose whole state lives in files.
//!
//! The binary is a thin shell over this library; the layout follows the architecture:
//! `domain` (data types, no I/O), `store` (the files), `definition` (agent definitions),
//! `provider` (models), `tools`, `agent` (the loop), `worker`, `render`, `commands`.

pub mod agent;
pub mod cli;
pub mod commands;
pub mod config;
pub mod definition;
pub mod domain;
pub mod error;
pub mod ids;
pub mod plural;
pub mod provider;
pub mod render;
pub mod store;
pub mod time;
pub mod tools;
pub mod worker;

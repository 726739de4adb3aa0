//! The integration suite: every test drives the real `agentq` binary in a temporary
//! home. One test binary, modules by area.

mod it;

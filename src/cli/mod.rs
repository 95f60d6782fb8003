//! The `agentd` command line's subcommands (the binary's `main` only dispatches).

pub mod docs;
pub mod eval;
pub mod run;
pub mod serve;
pub mod workflow;

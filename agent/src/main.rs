//! `mesh`: the agent that gives containers on many hosts one overlay
//! network, and the commands that drive it.
//!
//! Data flow, top down: [`cli`] parses a command; `mesh agent` runs
//! [`daemon`], which wires the [`agent`] (cluster session, state in the
//! [`datadir`]) to membership (`mesh-membership`) and serves the control
//! API ([`control`], messages in [`api`]) that the other commands call.

mod agent;
mod api;
mod cli;
mod config;
mod control;
mod daemon;
mod datadir;
mod dataplane;
mod docker;
mod ipam;
mod logging;
mod names;
mod unix_http;
mod upkeep;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

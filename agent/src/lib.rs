//! `mesh`: the agent that gives containers on many hosts one overlay
//! network, and the commands that drive it.
//!
//! Data flow, top down: [`cli`] parses a command; `mesh agent` runs
//! [`daemon`], which opens the services ([`dataplane`]: the view onto the
//! kernel through `mesh-netdev`; [`names`]: DNS through `mesh-dns`), hands
//! them to the [`agent`] (cluster session, state in the [`datadir`]) that
//! wires them to membership (`mesh-membership`) and runs [`upkeep`] and
//! [`credentials`] beside its session, and serves the front doors: the
//! control API ([`control`], messages in [`api`]) that the other commands
//! call, the Docker plugin ([`docker`]) and `/metrics` ([`metrics_http`]).
//! Run as `mesh-cni` (a copy or link), it is a CNI plugin ([`cni`]), a
//! client of the control API.
//! [`hostile`] exposes the decoders of user and runtime bytes to the
//! hostile-input harness.
//!
//! Each module (a room) imports only rooms in the layers below its own;
//! DESIGN.md's "Layers" lists them and `scenarios/tests/layers.rs` checks.

mod agent;
mod api;
mod bootstrap;
mod cli;
mod clock;
mod cni;
mod config;
mod control;
mod credentials;
mod daemon;
mod datadir;
mod dataplane;
mod docker;
mod ipam;
mod metrics;
mod metrics_http;
mod names;
mod sd_notify;
mod unix_http;
mod upkeep;

pub mod hostile;

use std::process::ExitCode;

/// Runs `mesh` (or, invoked as `mesh-cni`, the CNI plugin) with the
/// process's arguments and environment.
pub fn main() -> ExitCode {
    let invoked_as = std::env::args_os().next().map(std::path::PathBuf::from);
    if invoked_as.as_deref().and_then(std::path::Path::file_name).is_some_and(|name| name == cni::NAME) {
        return cni::main();
    }
    match cli::run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

//! The mesh lab: N hosts on one machine, each a network namespace joined by
//! veth to an underlay bridge in a namespace of its own, each running the
//! real `mesh` binary. Scenario tests and benchmarks build on it; the
//! `mesh-lab` binary runs the demo and cleans up after crashed runs.
//!
//! Every lab has a unique name prefix (`mlab-PID-N-`), so labs can run in
//! parallel, and removes its namespaces and processes when dropped, pass or
//! fail. Agents also die with the process that started them
//! (`setpriv --pdeathsig KILL`), and `mesh-lab clean` removes what a killed
//! run left behind.

pub mod api;
pub mod bench;
pub mod chaos;
pub mod cpu_quota;
pub mod demo;
pub mod docker;
pub mod encrypted;
pub mod hostile;
mod image;
mod lab;
pub mod podman;
mod process;
pub mod procfs;
pub mod rogue;
pub mod sim;

pub use lab::{
    clean_leftovers, clean_up_on_signal, host_ip, members_at, outside_ip, previous_release_binary, Lab, Leftovers,
    Member, AGENT_PORT, OUTSIDE_ROUTER,
};
pub use process::{require_root, run, Output};

//! `mesh-lab`: the demo, the benchmarks, the simulator, and clean-up of
//! labs a crashed run left behind. Run as root (the simulator needs no root).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_scenarios::{bench, clean_leftovers, demo, hostile, Leftovers};

/// The mesh lab: several hosts on one machine, in network namespaces.
#[derive(Debug, Parser)]
#[command(name = "mesh-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a 3-host lab, form a cluster, show it, and tear it down.
    Demo,
    /// Measure membership (join convergence, failure detection, memory,
    /// idle CPU) on N hosts, beside HashiCorp Serf on the same lab.
    BenchMembership {
        /// Number of hosts.
        #[arg(long, default_value_t = 20)]
        hosts: usize,
        /// Skip the Serf baseline.
        #[arg(long)]
        no_serf: bool,
    },
    /// Count false "down" verdicts under random loss and a frozen-then-
    /// resumed agent, beside HashiCorp Serf under the same faults.
    BenchVerdicts {
        /// Number of hosts.
        #[arg(long, default_value_t = 20)]
        hosts: usize,
        /// Length of the run, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Share of packets each host drops, in percent.
        #[arg(long, default_value_t = 10)]
        loss_percent: u32,
    },
    /// Measure how fast a sandbox reaches every host's view on N hosts,
    /// beside a Serf user event on the same lab.
    BenchRecords {
        /// Number of hosts.
        #[arg(long, default_value_t = 20)]
        hosts: usize,
        /// Number of changes (sandboxes created one after another).
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// Skip the Serf baseline.
        #[arg(long)]
        no_serf: bool,
    },
    /// Simulate N nodes in virtual time: dissemination of changes, idle
    /// traffic and false verdicts, beside memberlist's gossip model.
    Sim {
        /// Number of nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Number of changes measured.
        #[arg(long, default_value_t = 10)]
        changes: usize,
        /// Share of datagrams lost, in percent.
        #[arg(long, default_value_t = 1.0)]
        loss_percent: f64,
        /// One-way link latency in milliseconds.
        #[arg(long, default_value_t = 1)]
        latency_ms: u64,
        /// Seed of the run (the same seed gives the same run).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Measure iperf3 across the overlay between two hosts, beside a
    /// hand-built VXLAN pair and the raw underlay.
    BenchOverlay {
        /// Seconds per figure.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// Measure iperf3 and ping across an encrypted network between two
    /// hosts, beside Nebula, wireguard-go, the plaintext overlay and the
    /// raw underlay; the agent's CPU per Gbit carried and its memory.
    BenchEncrypted {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Rounds of every system in turn (figures are their medians).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Measure programming N remote endpoints into one host, beside
    /// iproute2's batch mode.
    BenchEntries {
        /// Number of remote endpoints.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
    /// Measure mesh's resolver with dnsperf beside dnsmasq serving the
    /// same names, and how soon a new sandbox's name resolves elsewhere.
    BenchDns {
        /// Number of names served.
        #[arg(long, default_value_t = 1000)]
        names: usize,
        /// Seconds of each saturated dnsperf run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Number of timed sandbox creations.
        #[arg(long, default_value_t = 50)]
        creates: usize,
    },
    /// Measure `docker run` on one host to the container resolved and
    /// pinged from another: mesh's plugin beside Docker swarm's overlay.
    BenchDocker {
        /// Containers timed per system.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Write the hostile-input harness's valid inputs, one directory per
    /// target, as seed corpora for cargo-fuzz (`scenarios/fuzz`).
    FuzzSeeds {
        /// Where the target directories go (cargo-fuzz reads `fuzz/corpus`).
        #[arg(long, default_value = "scenarios/fuzz/corpus")]
        dir: std::path::PathBuf,
    },
    /// Remove namespaces and agents left by lab runs that crashed.
    Clean,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = mesh_scenarios::clean_up_on_signal() {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    let printed = |figures: anyhow::Result<Vec<bench::report::Figure>>| figures.map(|f| bench::report::print(&f));
    let result = match cli.command {
        Command::Demo => demo::run(),
        Command::BenchMembership { hosts, no_serf } => {
            printed(bench::membership::run(hosts, !no_serf, bench::membership::Idle::steady(hosts)))
        }
        Command::BenchVerdicts { hosts, seconds, loss_percent } => {
            printed(bench::verdicts::run(hosts, std::time::Duration::from_secs(seconds), loss_percent))
        }
        Command::BenchRecords { hosts, changes, no_serf } => printed(bench::records::run(hosts, changes, !no_serf)),
        Command::BenchOverlay { seconds } => printed(bench::overlay::run(seconds)),
        Command::BenchEncrypted { seconds, rounds } => {
            printed(bench::encrypted::run(&bench::encrypted::EncryptedBench { seconds, rounds }))
        }
        Command::BenchEntries { count } => printed(bench::entries::run(count)),
        Command::BenchDns { names, seconds, creates } => printed(bench::dns::run(names, seconds, creates)),
        Command::BenchDocker { runs } => printed(bench::docker::run(runs)),
        Command::FuzzSeeds { dir } => write_fuzz_seeds(&dir),
        Command::Sim { nodes, changes, loss_percent, latency_ms, seed } => {
            printed(bench::sim::run(&bench::sim::SimBench {
                nodes,
                changes,
                loss: loss_percent / 100.0,
                latency: std::time::Duration::from_millis(latency_ms),
                seed,
            }))
        }
        Command::Clean => clean_leftovers(Leftovers::OfDeadRuns).map(|removed| {
            for name in &removed {
                println!("removed {name}");
            }
            println!("{} namespaces removed", removed.len());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes each hostile-input target's seeds under `dir/<target>/`.
fn write_fuzz_seeds(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::ValueEnum;
    for target in hostile::Target::ALL {
        let name = target.to_possible_value().map(|v| v.get_name().replace('-', "_")).unwrap_or_default();
        let target_dir = dir.join(&name);
        std::fs::create_dir_all(&target_dir)?;
        for (k, seed) in hostile::seeds(target).iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{k}")), seed)?;
        }
        println!("{}: {} seeds", target_dir.display(), hostile::seeds(target).len());
    }
    Ok(())
}

//! `mesh-bench [--quick] --out DIR`: the whole benchmark suite, every
//! figure beside its baseline from the same run; writes `results.json`,
//! `report.md` and `advantage.png` into DIR. Run as root.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_scenarios::bench::suite;

/// The mesh benchmark suite: mesh beside Serf, Docker swarm, dnsmasq and
/// the hand-built kernel paths, on the lab and in the simulator.
#[derive(Debug, Parser)]
#[command(name = "mesh-bench")]
struct Cli {
    /// Each benchmark at a small size (a few minutes): a smoke check.
    #[arg(long)]
    quick: bool,
    /// Where the report goes.
    #[arg(long, value_name = "DIR", required_unless_present = "rewrite")]
    out: Option<PathBuf>,
    /// Write the report of an earlier run again from its results.json
    /// (nothing is measured).
    #[arg(long, value_name = "RESULTS_JSON", conflicts_with_all = ["quick", "out"])]
    rewrite: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = mesh_scenarios::clean_up_on_signal() {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    let (result, out) = match (&cli.rewrite, &cli.out) {
        (Some(results), _) => (suite::rewrite(results), results.parent().map(PathBuf::from).unwrap_or_default()),
        (None, Some(out)) => (suite::run(cli.quick, out), out.clone()),
        (None, None) => (Err(anyhow::anyhow!("give --out DIR")), PathBuf::new()),
    };
    match result {
        Ok(report) if report.failures.is_empty() => ExitCode::SUCCESS,
        Ok(report) => {
            eprintln!("{} benchmarks failed (see {})", report.failures.len(), out.join("report.md").display());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

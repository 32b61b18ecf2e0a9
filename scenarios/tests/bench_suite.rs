//! The benchmark suite's smoke check: `mesh-bench --quick` runs every
//! benchmark at a small size and produces every figure of mesh's, each
//! benchmark with its baselines, and the report. It asserts that figures
//! exist, never what they are (a baseline that did not reach a figure in
//! time is reported as such, not failed here: it is the peer's).
//! Needs root.

use anyhow::{ensure, Context};
use serde_json::Value;

/// Every benchmark the suite runs.
const BENCHES: [&str; 9] =
    ["membership", "verdicts", "records", "docker", "sim", "dns", "entries", "overlay", "encrypted"];

#[test]
fn the_quick_suite_produces_every_figure_and_the_report() -> anyhow::Result<()> {
    mesh_scenarios::require_root()?;
    let out = tempfile::tempdir()?;
    let run = mesh_scenarios::run(
        env!("CARGO_BIN_EXE_mesh-bench"),
        ["--quick", "--out", out.path().to_str().context("utf-8")?],
    )?;
    ensure!(run.success, "mesh-bench --quick failed: {}", run.stderr);
    let results: Value = serde_json::from_slice(&std::fs::read(out.path().join("results.json"))?)?;
    ensure!(results["failures"].as_array().is_some_and(Vec::is_empty), "failures: {}", results["failures"]);
    let figures = results["figures"].as_array().context("figures")?;
    for bench in BENCHES {
        let of_bench: Vec<&Value> = figures.iter().filter(|f| f["bench"] == bench).collect();
        ensure!(!of_bench.is_empty(), "no figure from {bench}");
        for figure in of_bench {
            ensure!(figure["mesh"].is_number(), "{bench}: mesh's figure missing: {figure}");
        }
        ensure!(figures.iter().any(|f| f["bench"] == bench && f["baseline"].is_object()), "{bench} has no baseline");
    }
    let report = std::fs::read_to_string(out.path().join("report.md"))?;
    ensure!(BENCHES.iter().all(|b| report.contains(&format!("## {b}"))), "the report has a section per benchmark");
    ensure!(std::fs::metadata(out.path().join("advantage.png"))?.len() > 1000, "the plot is drawn");
    Ok(())
}

//! The lab itself: what a test or the demo sees when a tool is missing.
//! Needs root.

use anyhow::ensure;
use mesh_scenarios::Lab;

#[test]
fn a_program_that_cannot_start_in_a_host_is_an_error_that_names_it() -> anyhow::Result<()> {
    mesh_scenarios::require_root()?;
    let lab = Lab::new(1)?;
    let error = match lab.exec(1, "mesh-no-such-program", &["-c", "1"]) {
        Ok(out) => anyhow::bail!("a missing program ran: {out:?}"),
        Err(error) => format!("{error:#}"),
    };
    ensure!(error.contains("cannot run mesh-no-such-program") && error.contains("is it installed?"), "{error}");
    ensure!(!lab.exec(1, "false", &[])?.success, "a program that runs and fails is its exit code, not an error");
    Ok(())
}

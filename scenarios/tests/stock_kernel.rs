//! Debian's stock kernel, the kind mesh's hosts run: this machine runs a
//! small 6.18 without WireGuard, IPsec or IPVS, so `scripts/kernel-vm.sh`
//! boots Debian's (6.1, with all three as modules) under qemu, and the
//! demo's whole story runs inside it unchanged: three agents, init, join,
//! a network, svc2 pinging svc1 by name over VXLAN, the entries shown. It
//! is also where the kernel-only paths (kernel WireGuard) are tested.
//! Needs root, and `scripts/kernel-vm.sh prepare` (`scripts/test.sh` runs it).

use std::path::Path;

use anyhow::{ensure, Context};

#[test]
fn the_demo_runs_on_debians_stock_kernel_in_a_vm() -> anyhow::Result<()> {
    mesh_scenarios::require_root()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kernel-vm.sh");
    let script = script.to_str().context("utf-8 path")?;
    let host = mesh_scenarios::run("uname", ["-r"])?.stdout.trim().to_owned();
    let run = mesh_scenarios::run(
        script,
        [
            "--mem",
            "3072",
            "--",
            "bash",
            "-c",
            "echo \"guest kernel: $(uname -r)\" && exec \"$0\" demo",
            env!("CARGO_BIN_EXE_mesh-lab"),
        ],
    )?;
    ensure!(run.success, "the demo in the VM failed:\n{}\n{}", run.stdout, run.stderr);
    let guest = run
        .stdout
        .lines()
        .find_map(|line| line.split_once("guest kernel: ").map(|(_, version)| version.trim()))
        .context("the guest's uname -r")?;
    eprintln!("host kernel {host}, guest kernel {guest}");
    ensure!(guest != host, "the VM ran this machine's kernel ({host}), not Debian's");
    ensure!(run.stdout.contains("bytes from svc1"), "svc2 did not ping svc1 by name in the VM:\n{}", run.stdout);
    ensure!(run.stdout.contains("VXLAN, flags"), "tcpdump saw no VXLAN on the VM's underlay:\n{}", run.stdout);
    ensure!(run.stdout.contains("dst 198.18.0.1 self permanent"), "no FDB entry to h1 in the VM:\n{}", run.stdout);
    Ok(())
}

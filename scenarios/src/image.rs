//! The image every lab container runs: busybox-static and its applets,
//! packed once per lab as a tarball that `docker import` and `podman
//! import` take (no registry is reachable).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::lab::Lab;
use crate::process::run;

/// The image every lab container runs.
pub const IMAGE: &str = "mesh-busybox:latest";
/// The busybox applets the image links.
const APPLETS: &[&str] = &["sh", "ping", "nslookup", "sleep", "cat", "ip", "hostname", "ls", "true"];
/// How long a lab container's default command lives (bounded, so that a
/// killed run leaves nothing running for long).
pub const CONTAINER_LIFETIME: &str = "600";

/// The lab's image as a tarball (made once per lab): busybox and its
/// applets, for `docker import` and `podman import`.
pub fn busybox_image(lab: &Lab) -> anyhow::Result<PathBuf> {
    let tarball = lab.host_dir(1).join("busybox.tar");
    if tarball.exists() {
        return Ok(tarball);
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox is not installed: apt-get install busybox-static")?;
    let tree = lab.host_dir(1).join("image");
    std::fs::create_dir_all(tree.join("bin"))?;
    std::fs::copy(busybox, tree.join("bin/busybox"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    let out = run(
        "tar",
        ["-C", tree.to_str().context("path is not UTF-8")?, "-cf"]
            .into_iter()
            .chain([tarball.to_str().context("path is not UTF-8")?, "."]),
    )?;
    if !out.success {
        bail!("cannot pack the image: {}", out.stderr);
    }
    Ok(tarball)
}

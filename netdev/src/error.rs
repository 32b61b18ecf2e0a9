//! What can go wrong talking to the kernel: [`NetdevError`], the one
//! error of every room of this crate (re-exported at the crate root).

use std::net::IpAddr;

/// A netlink conversation with the kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The kernel refused or failed a request.
    #[error("netlink {what}: {source}")]
    Netlink {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// A file of a namespace could not be handled.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The system's answer.
        source: std::io::Error,
    },
    /// A namespace could not be made, entered or used.
    #[error("namespace {}: {reason}", path.display())]
    Namespace {
        /// The namespace's path.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A device in the way has other settings than mesh's; nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// An encrypted network was to be built on a host with no encrypted
    /// path (no kernel WireGuard, no TUN device).
    #[error("this host cannot carry encrypted networks: load the wireguard module (modprobe wireguard) or give the agent /dev/net/tun")]
    NoEncryptedPath,
    /// No interface holds the advertise address.
    #[error("no interface of this host holds the advertise address {0}: advertise an address of the underlay")]
    NoUnderlay(IpAddr),
    /// A network's plan gives a remote a VTEP of another address family
    /// than the local VTEP (a VXLAN device speaks IPv4 or IPv6, not both);
    /// nothing of that network was changed.
    #[error(
        "remote VTEP {vtep} is not of the family of the local VTEP {local}: a VXLAN device's local and remote VTEPs are all IPv4 or all IPv6"
    )]
    MixedFamilies {
        /// The local VTEP.
        local: IpAddr,
        /// The first remote VTEP of the other family.
        vtep: IpAddr,
    },
    /// `nft` failed or could not be run.
    #[error("{0}")]
    Firewall(String),
    /// This kernel has no WireGuard (no module, or built without it): it
    /// refused a device of kind `wireguard`, or knows no generic netlink
    /// family `wireguard`. Nothing was changed; the agent may take the
    /// userspace path instead.
    #[error(
        "this kernel has no WireGuard ({0}): load the wireguard module (modprobe wireguard) or take the userspace path"
    )]
    NoKernelWireguard(String),
    /// The kernel's WireGuard refused or failed a generic netlink request
    /// (or answered with something else than asked); what the request was
    /// to change may be partly changed.
    #[error("wireguard netlink {what}: {reason}")]
    Wireguard {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer, or what was wrong with it.
        reason: String,
    },
    /// Something the kernel just created was not found.
    #[error("{0} is missing")]
    Missing(&'static str),
}

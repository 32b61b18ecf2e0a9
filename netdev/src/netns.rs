//! Network namespaces: named ones under `/run/netns` (made the way
//! `ip netns add` makes them, so `ip netns` lists them), and running work
//! inside one. A netlink socket belongs to the namespace of the thread
//! that opened it, so work for a namespace runs on a thread of its own that
//! entered it first.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::NetdevError;

/// Where named namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of the named namespace `name`.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the named namespace `name` (an error if it exists).
pub fn create(name: &str) -> Result<PathBuf, NetdevError> {
    let path = path_of(name);
    let io = |what: &'static str| move |source| NetdevError::Io { what, path: path_of(name), source };
    std::fs::create_dir_all(NETNS_DIR).map_err(io("cannot create"))?;
    share_netns_dir()?;
    File::options().write(true).create_new(true).open(&path).map_err(io("cannot create"))?;
    let target = path.clone();
    let made = std::thread::spawn(move || -> nix::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
    })
    .join()
    .map_err(|_| NetdevError::Namespace { path: path.clone(), reason: "the namespace thread panicked".into() })?;
    if let Err(errno) = made {
        let _ = std::fs::remove_file(&path);
        return Err(NetdevError::Namespace { path, reason: format!("cannot make the namespace: {errno}") });
    }
    Ok(path)
}

/// Removes the named namespace at `path` (nothing if it is gone already).
pub fn remove(path: &Path) -> Result<(), NetdevError> {
    if !path.exists() {
        return Ok(());
    }
    // EINVAL: not a mount point (already unmounted); the file goes anyway.
    let _ = umount2(path, MntFlags::MNT_DETACH);
    std::fs::remove_file(path).map_err(|source| NetdevError::Io {
        what: "cannot remove",
        path: path.to_owned(),
        source,
    })
}

/// Whether `path` is a network namespace.
pub fn is_netns(path: &Path) -> bool {
    File::open(path).is_ok_and(|file| setns_probe(&file))
}

/// Runs `work` on a thread inside the namespace at `path`, with a tokio
/// runtime of its own, and returns its result.
pub fn run_in<R, F>(path: &Path, work: F) -> Result<R, NetdevError>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R, NetdevError> + Send + 'static,
{
    let file =
        File::open(path).map_err(|source| NetdevError::Io { what: "cannot open", path: path.to_owned(), source })?;
    let target = path.to_owned();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|errno| NetdevError::Namespace { path: target, reason: format!("cannot enter: {errno}") })?;
        work()
    })
    .join()
    .map_err(|_| NetdevError::Namespace { path: path.to_owned(), reason: "the namespace thread panicked".into() })?
}

/// Where `ip netns exec NAME` finds files to put over `/etc` (such as the
/// `resolv.conf` that points a sandbox at mesh's resolver).
pub const ETC_DIR: &str = "/etc/netns";

/// The per-namespace `/etc` files of the named namespace at `path`.
pub fn etc_of(path: &Path) -> Option<PathBuf> {
    path.strip_prefix(NETNS_DIR)
        .ok()
        .filter(|name| !name.as_os_str().is_empty())
        .map(|name| Path::new(ETC_DIR).join(name))
}

/// Runs `work` as `ip netns exec` runs a command: inside the namespace at
/// `path`, and, if it is a named one with files under [`ETC_DIR`], in a
/// mount namespace of its own where they cover their `/etc` namesakes.
/// Processes `work` starts inherit both.
pub fn run_as_exec<R, F>(path: &Path, work: F) -> Result<R, NetdevError>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R, NetdevError> + Send + 'static,
{
    let etc = etc_of(path).filter(|dir| dir.is_dir());
    let target = path.to_owned();
    run_in(path, move || {
        if let Some(dir) = etc {
            cover_etc(&dir).map_err(|errno| NetdevError::Namespace {
                path: target,
                reason: format!("cannot put {} over /etc: {errno}", dir.display()),
            })?;
        }
        work()
    })
}

/// In a new mount namespace of the calling thread, binds each file of
/// `dir` over the file of the same name in `/etc`.
fn cover_etc(dir: &Path) -> nix::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)?;
    let entries = std::fs::read_dir(dir).map_err(|_| nix::errno::Errno::ENOENT)?;
    for entry in entries.flatten() {
        let target = Path::new("/etc").join(entry.file_name());
        if target.exists() {
            mount(Some(&entry.path()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
        }
    }
    Ok(())
}

/// Runs `work` with a netlink handle opened inside the namespace at `path`.
pub fn netlink_in<R, F, Fut>(path: &Path, work: F) -> Result<R, NetdevError>
where
    R: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<R, NetdevError>>,
{
    run_in(path, move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NetdevError::Socket)?;
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            let task = tokio::spawn(connection);
            let result = work(handle).await;
            task.abort();
            result
        })
    })
}

/// Whether a thread can enter `file` as a network namespace.
fn setns_probe(file: &File) -> bool {
    let Ok(file) = file.try_clone() else { return false };
    std::thread::spawn(move || setns(&file, CloneFlags::CLONE_NEWNET).is_ok()).join().unwrap_or(false)
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so
/// namespaces mounted there are seen from every mount namespace.
fn share_netns_dir() -> Result<(), NetdevError> {
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(Some(""), NETNS_DIR, Some("none"), shared, None::<&str>).is_ok() {
        return Ok(());
    }
    mount(Some(NETNS_DIR), NETNS_DIR, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .and_then(|()| mount(Some(""), NETNS_DIR, Some("none"), shared, None::<&str>))
        .map_err(|errno| NetdevError::Namespace {
            path: NETNS_DIR.into(),
            reason: format!("cannot share the directory: {errno}"),
        })
}

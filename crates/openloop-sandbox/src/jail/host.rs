//! The server's own mounts (not a jail's): its private mount namespace, and the small tmpfs
//! its sandboxes' sockets are bound from.

use super::mounts::mount;
use super::sys::{check, cstr, path_bytes};
use std::io::Result;
use std::path::Path;

/// Give the calling process (the server, before it starts any thread) a mount namespace of
/// its own: mounts it makes (devbox disks and roots, the engine socket's directory) are
/// invisible to the host and vanish with the process, even after `kill -9`. Host mounts
/// still propagate in.
pub fn private_mounts() -> Result<()> {
    check(
        unsafe { libc::unshare(libc::CLONE_NEWNS) },
        "unshare(CLONE_NEWNS)",
    )?;
    mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE, None)
}

/// Mount a small tmpfs (1 MiB) at `dir`, for sockets that are bound into sandboxes: a bind
/// from its own file system shows in a sandbox's mount table without any host path.
pub fn socket_tmpfs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = cstr(path_bytes(dir))?;
    mount(
        Some(c"tmpfs"),
        &target,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(c"size=1048576,mode=755"),
    )
}

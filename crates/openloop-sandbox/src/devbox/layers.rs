//! A devbox's layers on disk: the agent layer, the overlay mount over the base image (and a
//! snapshot or blueprint layer), unmounting and removing a devbox's directory, and the
//! leftovers of a previous server process.

use super::*;

/// Put the agent binary into `layer` at `opt/openloop/agent`, a read-only layer stacked over
/// the base image of every devbox (so no host path is bound into a devbox).
pub fn prepare_agent_layer(agent_bin: &Path, layer: &Path) -> std::io::Result<()> {
    let target = layer.join("opt/openloop/agent");
    let wanted = std::fs::read(agent_bin)?;
    if std::fs::read(&target).ok().as_deref() == Some(&wanted[..]) {
        return link_sudo(layer);
    }
    std::fs::create_dir_all(layer.join("opt/openloop"))?;
    for d in [
        layer.to_path_buf(),
        layer.join("opt"),
        layer.join("opt/openloop"),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    let tmp = layer.join("opt/openloop/.agent.new");
    std::fs::write(&tmp, &wanted)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &target)?;
    link_sudo(layer)
}

/// `usr/bin/sudo` in the agent layer: the agent under that name (see the agent's `sudo`
/// module; without `--devbox-sudo` it says sudo is not available and fails).
pub(super) fn link_sudo(layer: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(layer.join("usr/bin"))?;
    for d in [layer.join("usr"), layer.join("usr/bin")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    let sudo = layer.join("usr/bin/sudo");
    if std::fs::read_link(&sudo).ok().as_deref() != Some(Path::new(AGENT_PATH)) {
        let _ = std::fs::remove_file(&sudo);
        std::os::unix::fs::symlink(AGENT_PATH, &sudo)?;
    }
    Ok(())
}

/// The read-only layers under a devbox's own upper layer, top first.
pub(super) struct Layers<'a> {
    pub(super) agent: &'a Path,
    pub(super) snapshot: Option<&'a Path>,
    pub(super) image: &'a Path,
}

/// Mount the devbox's root: its upper layer over the agent layer over a snapshot's layer
/// (if any) over the image. The agent layer is above the snapshot so that no snapshot can
/// shadow the agent. The layers are named by descriptors (`/proc/self/fd/N`), so the
/// devbox's mount table, which shows these options, names no host path. `redirect_dir` and
/// `metacopy` are off so that an upper layer holds whole files and plain directories, and
/// can itself become a snapshot's layer.
/// A build's lower layers are idmapped mounts instead (`idmapped`, see [`crate::build`]).
pub(super) fn mount_overlay(
    layers: &Layers<'_>,
    dir: &Path,
    idmapped: bool,
) -> std::io::Result<()> {
    let open = |p: &Path| -> std::io::Result<OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(p)
            .map(OwnedFd::from)
    };
    let mut paths = vec![layers.agent];
    paths.extend(layers.snapshot);
    paths.push(layers.image);
    let lower: Vec<OwnedFd> = match idmapped {
        true => crate::build::idmapped_layers(&paths)?,
        false => paths
            .into_iter()
            .map(open)
            .collect::<std::io::Result<_>>()?,
    };
    let upper = open(&dir.join("disk/upper"))?;
    let work = open(&dir.join("disk/work"))?;
    let fd = |f: &OwnedFd| format!("/proc/self/fd/{}", f.as_raw_fd());
    let lowerdir: Vec<String> = lower.iter().map(fd).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
        lowerdir.join(":"),
        fd(&upper),
        fd(&work)
    );
    let target = CString::new(dir.join("root").into_os_string().into_encoded_bytes())?;
    let opts = CString::new(opts)?;
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmount a devbox's root and then its disk, keeping the directory (and the disk image).
/// A plain unmount is tried first (a few times: the sandbox's mount namespace may be
/// released a moment after its processes), so the disk is really detached, not only hidden.
pub fn unmount(dir: &Path) {
    for mount_point in ["root", "disk"] {
        let Ok(target) = CString::new(dir.join(mount_point).into_os_string().into_encoded_bytes())
        else {
            continue;
        };
        for attempt in 0..50 {
            if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            // EINVAL: not a mount point (any more).
            if err.raw_os_error() == Some(libc::EINVAL) || err.raw_os_error() == Some(libc::ENOENT)
            {
                break;
            }
            if attempt == 49 {
                tracing::warn!(dir = %dir.display(), mount_point, error = %err, "devbox mount still busy; detaching it");
                unsafe {
                    libc::umount2(target.as_ptr(), libc::MNT_DETACH);
                }
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Unmount a devbox root (if mounted) and delete its directory.
pub fn remove_dir(dir: &Path) {
    for mount_point in ["root", "disk"] {
        if let Ok(target) =
            CString::new(dir.join(mount_point).into_os_string().into_encoded_bytes())
        {
            unsafe {
                // The loop device of the disk is released with its last mount (autoclear).
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove devbox directory");
        }
    }
}

/// Remove devboxes left by a previous server process: kill their processes, drop cgroups,
/// unmount and delete their directories. Returns the ids found.
pub fn clean_leftovers(devbox_dir: &Path) -> Vec<String> {
    clean_leftovers_except(devbox_dir, &std::collections::HashSet::new())
}

/// Like [`clean_leftovers`], but the directories of `keep` (suspended devboxes) are only
/// unmounted: their disk images stay for a later resume. Returns the ids removed.
pub fn clean_leftovers_except(
    devbox_dir: &Path,
    keep: &std::collections::HashSet<String>,
) -> Vec<String> {
    let mut ids = Vec::new();
    let Ok(entries) = std::fs::read_dir(devbox_dir) else {
        return ids;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().to_string();
        cgroup::leftover(&id).destroy();
        if keep.contains(&id) {
            unmount(&e.path());
            continue;
        }
        remove_dir(&e.path());
        ids.push(id);
    }
    ids
}

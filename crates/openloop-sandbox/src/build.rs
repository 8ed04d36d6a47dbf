//! Blueprint build sandboxes: a devbox whose commands run as root of their own user
//! namespace, and the layer captured from it.
//!
//! A devbox maps one uid (its `user`, 1000 → host [`crate::SANDBOX_HOST_UID`]); the image's
//! files, owned by host root, appear to it as `nobody`. A build must change them as root
//! (`RUN apt-get …`, `pip install` into `/usr/local`) without being host root, so:
//!
//! - its processes run in a user namespace the server makes with two mappings: 0 → host
//!   [`BUILD_HOST_UID`] and 1000 → host [`crate::SANDBOX_HOST_UID`] (the devbox user, so the
//!   build can write `/home/user`), keeping the capabilities root has *in that namespace*
//!   only (they act only on files whose owner is mapped; the seccomp filter, no nested user
//!   namespaces and the cgroup apply as in any devbox);
//! - every read-only layer under it (agent, parent layer, image) is an *idmapped* mount
//!   (`mount_setattr(MOUNT_ATTR_IDMAP)`): files host root owns on disk appear owned by
//!   [`BUILD_HOST_UID`], root in the build; nothing on disk changes;
//! - what the build wrote (its upper layer, owned by [`BUILD_HOST_UID`]) is captured like a
//!   snapshot and its owners shifted back ([`BUILD_HOST_UID`] → 0), so the layer looks like
//!   the image to a devbox: root's files are root's (`nobody` in the devbox), the user's are
//!   the user's.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

/// The host uid that root of a blueprint build maps to (devboxes are 100000, function code
/// and package builds 100001).
pub const BUILD_HOST_UID: u32 = 100_002;

/// What root of a build may do in its own user namespace (on files whose owners it maps):
/// own, write and chown files, set ids, like root in a container; nothing of the host's.
pub(crate) const BUILD_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_KILL",
];

/// The uid and gid maps of a build's user namespace.
const BUILD_MAP: &str = "0 100002 1\n1000 100000 1\n";
/// The idmapping of the layers under a build: on-disk root → [`BUILD_HOST_UID`], the devbox
/// user stays itself.
const LAYER_MAP: &str = "0 100002 1\n100000 100000 1\n";

/// A user namespace with `map` as its uid and gid maps, owned by host uid `owner` (so a
/// process of that uid may enter it): a short-lived helper process unshares it, the server
/// (root) writes the maps, the namespace is kept by its descriptor.
fn user_namespace(owner: u32, map: &str) -> std::io::Result<OwnedFd> {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("60")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    unsafe {
        cmd.pre_exec(move || {
            if owner != 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(owner) != 0
                    || libc::setuid(owner) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let opened = (|| {
        std::fs::write(format!("/proc/{pid}/uid_map"), map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), map)?;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    let _ = child.kill();
    let _ = child.wait();
    opened
}

/// The user namespace a build's sandbox enters (see the module's documentation).
pub(crate) fn build_namespace() -> std::io::Result<OwnedFd> {
    user_namespace(BUILD_HOST_UID, BUILD_MAP)
}

/// `open_tree(path, OPEN_TREE_CLONE)` made an idmapped mount through `userns`: a detached
/// mount of `path` where on-disk owners appear as [`LAYER_MAP`] maps them.
fn idmapped(path: &Path, userns: &OwnedFd) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(tree)
}

/// The read-only layers of a build, each an idmapped mount (see the module's documentation).
/// The idmapping's user namespace is made once per process (it never changes, and only
/// names the mapping); each sandbox still gets a user namespace of its own to run in.
pub(crate) fn idmapped_layers(paths: &[&Path]) -> std::io::Result<Vec<OwnedFd>> {
    static LAYER_NS: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    let userns = match LAYER_NS.get() {
        Some(ns) => ns,
        None => {
            let made = user_namespace(0, LAYER_MAP)?;
            LAYER_NS.get_or_init(|| made)
        }
    };
    paths.iter().map(|p| idmapped(p, userns)).collect()
}

/// Give the top of a build's upper layer to its root, so `mkdir /app` works in the build.
pub(crate) fn own_upper(upper: &Path) -> std::io::Result<()> {
    std::os::unix::fs::lchown(upper, Some(BUILD_HOST_UID), Some(BUILD_HOST_UID))
}

/// Shift the owners of a captured build layer: [`BUILD_HOST_UID`] (the build's root) becomes
/// host root, as the image's files are. Set-id bits, which `chown` clears, are kept.
pub fn shift_to_host(root: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(root)?;
    let map = |id: u32| if id == BUILD_HOST_UID { 0 } else { id };
    if meta.uid() == BUILD_HOST_UID || meta.gid() == BUILD_HOST_UID {
        std::os::unix::fs::lchown(root, Some(map(meta.uid())), Some(map(meta.gid())))?;
        if !meta.file_type().is_symlink() {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(root)? {
            shift_to_host(&entry?.path())?;
        }
    }
    Ok(())
}

impl crate::Devbox {
    /// End a build sandbox and capture what it wrote (over `parent`'s files, so the layer
    /// stands alone, as a snapshot does) into `dest`, its owners shifted to the host's
    /// ([`shift_to_host`], as every captured layer's). Returns the layer's size in bytes. Call
    /// [`shutdown`](crate::Devbox::shutdown) afterwards.
    pub async fn capture_build(
        &self,
        parent: Option<std::path::PathBuf>,
        dest: std::path::PathBuf,
    ) -> Result<u64, crate::SandboxError> {
        self.halt().await;
        let upper = self.dir.join("disk/upper");
        tokio::task::spawn_blocking(move || {
            crate::snapshot::capture(&upper, parent.as_deref(), &dest)
        })
        .await
        .map_err(|e| crate::SandboxError::Start(e.to_string()))?
        .map_err(|e| crate::SandboxError::Start(format!("capturing the build's layer: {e}")))
    }
}

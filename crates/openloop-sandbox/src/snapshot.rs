//! Disk snapshots: a devbox's writable layer (the overlay's upper directory on its own disk)
//! copied once into a directory of the data directory, later stacked read-only under the
//! upper layers of the devboxes started from it (see [`crate::DevboxSpec::lower`]).
//!
//! A snapshot is self-contained: a devbox that was itself started from a snapshot is
//! captured as its snapshot's files with its own changes merged over them, so a snapshot
//! never depends on another. Overlay whiteouts (character devices 0/0, a deletion of a file
//! below) and opaque directories (`trusted.overlay.opaque`, a directory replaced whole) are
//! kept as such, so a snapshot hides what its devbox had deleted from the image too.
//!
//! A running devbox is frozen (its cgroup's freezer) while its layer is copied, so the copy
//! is one moment of its disk; a suspended devbox's disk is mounted again for the copy.

use crate::devbox::Devbox;
use crate::{disk, SandboxError};
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a devbox's processes get to stop for a snapshot.
const FREEZE_WITHIN: Duration = Duration::from_secs(10);

impl Devbox {
    /// Copy this running devbox's writable layer (over its own snapshot's, if it was started
    /// from one) into a new snapshot layer at `dest`; its processes are frozen meanwhile.
    /// Returns the snapshot's size in bytes.
    pub async fn snapshot_disk(&self, dest: PathBuf) -> Result<u64, SandboxError> {
        let freezer = self.cgroup.freezer().ok_or_else(|| {
            SandboxError::Start("this host offers no cgroup freezer to pause the devbox".into())
        })?;
        let upper = self.dir.join("disk/upper");
        let parent = self.lower.clone();
        tokio::task::spawn_blocking(move || {
            freezer.freeze(FREEZE_WITHIN)?;
            // Thawed whatever happens to the copy.
            let _thaw = Thaw(&freezer);
            capture(&upper, parent.as_deref(), &dest)
        })
        .await
        .map_err(|e| SandboxError::Start(e.to_string()))?
        .map_err(|e| SandboxError::Start(format!("copying the devbox's disk: {e}")))
    }
}

struct Thaw<'a>(&'a crate::cgroup::Freezer);
impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.thaw() {
            tracing::error!(error = %e, "could not thaw a devbox after its snapshot");
        }
    }
}

/// Snapshot a suspended devbox (no processes: its directory `devbox_dir` holds only its disk
/// image): the image is mounted (in the server's namespace only; nothing runs on it) for the
/// copy, then unmounted again.
pub async fn snapshot_suspended(
    devbox_dir: &Path,
    parent: Option<PathBuf>,
    dest: PathBuf,
) -> Result<u64, SandboxError> {
    disk::mount_disk(devbox_dir)
        .await
        .map_err(|e| SandboxError::Start(format!("mounting the suspended devbox's disk: {e}")))?;
    let dir = devbox_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let copied = capture(&dir.join("disk/upper"), parent.as_deref(), &dest);
        crate::devbox::unmount(&dir);
        copied
    })
    .await
    .map_err(|e| SandboxError::Start(e.to_string()))?
    .map_err(|e: std::io::Error| SandboxError::Start(format!("copying the devbox's disk: {e}")))
}

/// Build a snapshot layer at `dest` from `upper` merged over `parent` (itself a layer), in a
/// sibling directory renamed into place at the end, so `dest` never holds half a copy.
/// Returns the bytes of the files it holds.
pub fn capture(upper: &Path, parent: Option<&Path>, dest: &Path) -> std::io::Result<u64> {
    let partial = dest.with_extension("partial");
    remove(&partial)?;
    std::fs::create_dir_all(&partial)?;
    let built = (|| {
        if let Some(parent) = parent {
            copy_tree(parent, &partial)?;
            clear_conflicts(upper, &partial)?;
        }
        copy_tree(upper, &partial)?;
        // What root of a build or of a root devbox wrote becomes host root's (see
        // `crate::build`): no layer holds a file its next user's root would own.
        crate::build::shift_to_host(&partial)?;
        // The root of a layer: anyone may enter (the devbox's own user reads through it).
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
        let size = tree_bytes(&partial)?;
        std::fs::rename(&partial, dest)?;
        Ok(size)
    })();
    if built.is_err() {
        let _ = remove(&partial);
    }
    built
}

/// Delete a snapshot layer (nothing when it is already gone).
pub fn remove(layer: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(layer) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `cp -a from/. to/`: contents with owners, modes, times, extended attributes (the
/// overlay's `trusted.overlay.*` among them), whiteout devices, fifos, sockets and links.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut src = from.as_os_str().to_owned();
    src.push("/.");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(src)
        .arg(to)
        .stdin(std::process::Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "cp: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Make room in `target` (a copy of the parent layer) for `upper` to be copied over it with
/// overlay semantics: whatever the upper layer replaces (a whiteout, an opaque directory, a
/// file where there was a directory or the reverse, any non-directory) is removed first; a
/// plain directory in both is merged entry by entry.
fn clear_conflicts(upper: &Path, target: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(upper)? {
        let entry = entry?;
        let dst = target.join(entry.file_name());
        let Some(dst_meta) = existing(&dst)? else {
            continue;
        };
        let src = entry.path();
        let src_meta = std::fs::symlink_metadata(&src)?;
        if src_meta.is_dir() && dst_meta.is_dir() && !is_opaque(&src) {
            clear_conflicts(&src, &dst)?;
        } else if dst_meta.is_dir() {
            std::fs::remove_dir_all(&dst)?;
        } else {
            std::fs::remove_file(&dst)?;
        }
    }
    Ok(())
}

fn existing(path: &Path) -> std::io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `meta` is an overlay whiteout (a character device 0/0).
pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether the directory `path` is opaque in its overlay layer (it hides everything below).
fn is_opaque(path: &Path) -> bool {
    let Ok(p) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut value = [0u8; 4];
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr() as *mut libc::c_void,
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

/// The bytes of the regular files under `dir` (not following links).
fn tree_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn whiteout(path: &Path) {
        let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, 0) },
            0
        );
    }

    /// A snapshot of a devbox started from a snapshot holds the parent's files with the
    /// devbox's changes over them: replaced, deleted (kept as a whiteout, so the image's
    /// file stays hidden), a directory turned into a file and a directory replaced whole.
    #[test]
    fn merges_upper_over_parent() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: whiteouts and trusted xattrs need root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (parent, upper, dest) = (t.path().join("p"), t.path().join("u"), t.path().join("d"));
        write(&parent.join("keep.txt"), "parent");
        write(&parent.join("change.txt"), "old");
        write(&parent.join("gone.txt"), "x");
        write(&parent.join("was_dir/inner.txt"), "x");
        write(&parent.join("opaque/old.txt"), "x");
        write(&parent.join("merged/a.txt"), "a");
        whiteout(&parent.join("image_file_deleted_before"));
        write(&upper.join("change.txt"), "new");
        whiteout(&upper.join("gone.txt"));
        write(&upper.join("was_dir"), "now a file");
        write(&upper.join("opaque/new.txt"), "y");
        let opaque =
            CString::new(upper.join("opaque").into_os_string().into_encoded_bytes()).unwrap();
        assert_eq!(
            unsafe {
                libc::lsetxattr(
                    opaque.as_ptr(),
                    c"trusted.overlay.opaque".as_ptr(),
                    b"y".as_ptr() as *const libc::c_void,
                    1,
                    0,
                )
            },
            0
        );
        write(&upper.join("merged/b.txt"), "b");

        let size = capture(&upper, Some(&parent), &dest).unwrap();

        let read = |p: &str| std::fs::read_to_string(dest.join(p)).unwrap();
        assert_eq!(read("keep.txt"), "parent");
        assert_eq!(read("change.txt"), "new");
        assert!(is_whiteout(
            &std::fs::symlink_metadata(dest.join("gone.txt")).unwrap()
        ));
        assert!(is_whiteout(
            &std::fs::symlink_metadata(dest.join("image_file_deleted_before")).unwrap()
        ));
        assert_eq!(read("was_dir"), "now a file");
        assert!(!dest.join("opaque/old.txt").exists());
        assert_eq!(read("opaque/new.txt"), "y");
        assert!(is_opaque(&dest.join("opaque")));
        assert_eq!(read("merged/a.txt"), "a");
        assert_eq!(read("merged/b.txt"), "b");
        assert_eq!(size, ("parent".len() + "new".len() + 10 + 1 + 1 + 1) as u64);
        assert!(!dest.with_extension("partial").exists());
    }
}

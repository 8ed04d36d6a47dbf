//! A devbox's own disk: a sparse ext4 image, loop-mounted, holding the overlay's upper and
//! work directories. Writes past its size fail with ENOSPC inside the devbox, never on the host.
//!
//! Formatting and mounting take ~15 ms, so a [`DiskPool`] keeps a few disks of the default
//! size ready; a devbox takes one by renaming its directory (the mount moves with it).

use openloop_sync::lock;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

/// The name of a devbox's disk image in its directory.
pub const IMAGE: &str = "disk.img";

/// Create `dir/disk.img` of `bytes` and mount it at `dir/disk`, with `upper/` and `work/`.
pub async fn make_disk(dir: &Path, bytes: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("disk"))?;
    let image = dir.join(IMAGE);
    let file = std::fs::File::create(&image)?;
    file.set_len(bytes)?;
    drop(file);
    let mut mkfs = tokio::process::Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(&image);
    run(mkfs).await?;
    let mut mount = tokio::process::Command::new("mount");
    mount
        .args(["-o", "loop,nosuid,nodev"])
        .arg(&image)
        .arg(dir.join("disk"));
    run(mount).await?;
    for sub in ["disk/upper", "disk/work"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let _ = std::fs::remove_dir_all(dir.join("disk/lost+found"));
    Ok(())
}

/// Mount an existing `dir/disk.img` at `dir/disk` again (a suspended devbox's), read-only
/// when asked. Refused while the image is still attached to a loop device: mounting one
/// ext4 image twice would corrupt it.
pub async fn mount_disk(dir: &Path, read_only: bool) -> std::io::Result<()> {
    let image = dir.join(IMAGE);
    if image_in_use(&image) {
        return Err(std::io::Error::other(
            "the disk image is still attached from before; try again in a moment",
        ));
    }
    std::fs::create_dir_all(dir.join("disk"))?;
    let mut mount = tokio::process::Command::new("mount");
    mount
        .args([
            "-o",
            if read_only {
                "loop,ro,nosuid,nodev,noexec"
            } else {
                "loop,nosuid,nodev"
            },
        ])
        .arg(&image)
        .arg(dir.join("disk"));
    run(mount).await
}

/// Wait (up to `within`) until `dir/disk.img` is attached to no loop device (a loop device
/// set to auto-clear lets go of its file a moment after its last unmount).
pub fn wait_released(dir: &Path, within: std::time::Duration) -> std::io::Result<()> {
    let image = dir.join(IMAGE);
    let deadline = std::time::Instant::now() + within;
    let mut pause = std::time::Duration::from_millis(1);
    while image_in_use(&image) {
        if std::time::Instant::now() >= deadline {
            return Err(std::io::Error::other(format!(
                "{} is still attached to a loop device",
                image.display()
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// Whether some loop device is backed by `image` (`/sys/block/loop*/loop/backing_file`).
pub fn image_in_use(image: &Path) -> bool {
    let Ok(wanted) = std::fs::canonicalize(image) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("loop")
            && std::fs::read_to_string(e.path().join("loop/backing_file"))
                .map(|f| Path::new(f.trim()) == wanted)
                .unwrap_or(false)
    })
}

async fn run(mut cmd: tokio::process::Command) -> std::io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Disks of one size, formatted and mounted ahead of time.
pub struct DiskPool {
    dir: PathBuf,
    size: u64,
    want: usize,
    ready: Mutex<VecDeque<PathBuf>>,
    refill: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for DiskPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskPool")
            .field("dir", &self.dir)
            .field("size", &self.size)
            .finish()
    }
}

impl DiskPool {
    /// Start keeping `want` disks of `size` bytes ready under `dir` (emptied first).
    pub fn start(dir: PathBuf, size: u64, want: usize) -> Arc<DiskPool> {
        clean(&dir);
        let pool = Arc::new(DiskPool {
            dir,
            size,
            want,
            ready: Mutex::new(VecDeque::new()),
            refill: Arc::new(tokio::sync::Notify::new()),
        });
        let weak = Arc::downgrade(&pool);
        let refill = pool.refill.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            loop {
                let Some(pool) = weak.upgrade() else { return };
                while lock(&pool.ready).len() < pool.want {
                    n += 1;
                    let dir = pool.dir.join(format!("d{n}"));
                    match make_disk(&dir, pool.size).await {
                        Ok(()) => {
                            lock(&pool.ready).push_back(dir);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not prepare a devbox disk; devboxes will format their own");
                            crate::devbox::remove_dir(&dir);
                            break;
                        }
                    }
                }
                drop(pool);
                refill.notified().await;
            }
        });
        pool
    }

    /// A ready disk directory of exactly `size` bytes, if one is waiting.
    pub fn take(&self, size: u64) -> Option<PathBuf> {
        if size != self.size {
            return None;
        }
        let disk = lock(&self.ready).pop_front();
        self.refill.notify_one();
        disk
    }
}

/// Unmount and delete every prepared disk under `dir`.
pub fn clean(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            crate::devbox::remove_dir(&e.path());
        }
    }
    let _ = std::fs::create_dir_all(dir);
}

impl Drop for DiskPool {
    fn drop(&mut self) {
        clean(&self.dir);
    }
}

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

/// Mount an existing `dir/disk.img` at `dir/disk` again (a suspended devbox's).
///
/// The image may still be attached to a loop device: a copy of the devbox's old mount in
/// another mount namespace (every sandbox launched while the devbox ran copied the server's
/// mounts before detaching them, and the kernel keeps a locked copy alive while that
/// namespace holds its old root) keeps the file system alive for a while after the server's
/// own unmount. Mounting the image through a second loop device would open one ext4 twice
/// and corrupt it, so the same loop device is mounted again: the kernel then shares the
/// one live file system. The loop device's backing file is checked once mounted (a loop
/// device can be let go and reused between the look-up and the mount; once mounted it
/// cannot), and the mount is retried through the file if it changed.
pub async fn mount_disk(dir: &Path) -> std::io::Result<()> {
    let image = dir.join(IMAGE);
    std::fs::create_dir_all(dir.join("disk"))?;
    for _ in 0..3 {
        let Some(device) = attached_loop(&image) else {
            let mut mount = tokio::process::Command::new("mount");
            mount
                .args(["-o", "loop,nosuid,nodev"])
                .arg(&image)
                .arg(dir.join("disk"));
            return run(mount).await;
        };
        let mut mount = tokio::process::Command::new("mount");
        mount
            .args(["-o", "nosuid,nodev"])
            .arg(&device)
            .arg(dir.join("disk"));
        run(mount).await?;
        if attached_loop(&image).as_deref() == Some(device.as_path()) {
            return Ok(());
        }
        // The loop device was reused for another file meanwhile: not this disk.
        let target =
            std::ffi::CString::new(dir.join("disk").into_os_string().into_encoded_bytes())?;
        unsafe {
            libc::umount2(target.as_ptr(), 0);
        }
    }
    Err(std::io::Error::other(
        "the disk image's loop device kept changing; try again",
    ))
}

/// The loop device backed by `image`, if any (`/sys/block/loop*/loop/backing_file`).
pub fn attached_loop(image: &Path) -> Option<PathBuf> {
    let wanted = std::fs::canonicalize(image).ok()?;
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with("loop") {
                return None;
            }
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            (Path::new(backing.trim()) == wanted).then(|| PathBuf::from("/dev").join(name))
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

//! The base root filesystem every devbox starts from.
//!
//! Built once with `debootstrap --variant=minbase` from a Debian mirror, then prepared
//! (the `user` account, mount points for the agent) and renamed into place atomically,
//! so a half-built image is never used. A file lock serialises concurrent builders,
//! including other server processes sharing the cache.

use crate::{SandboxError, SANDBOX_HOST_UID, SANDBOX_UID};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// Bump when the preparation below changes, so caches are rebuilt.
pub const IMAGE_NAME: &str = "debian-bookworm-v4";
const PACKAGES: &str = "python3,python3-pip,python3-venv,git,curl,ca-certificates,procps,less";

/// Return the path of the ready base image, building it first if needed.
pub async fn ensure_base_image(image_dir: &Path, mirror: &str) -> Result<PathBuf, SandboxError> {
    let target = image_dir.join(IMAGE_NAME);
    if target.join(".openloop-ready").exists() {
        return Ok(target);
    }
    std::fs::create_dir_all(image_dir)
        .map_err(|e| SandboxError::Image(format!("cannot create {}: {e}", image_dir.display())))?;
    let lock_path = image_dir.join(".build.lock");
    let dir = image_dir.to_path_buf();
    let mirror = mirror.to_string();
    let lock = tokio::task::spawn_blocking(move || FileLock::acquire(&lock_path))
        .await
        .map_err(|e| SandboxError::Image(e.to_string()))?
        .map_err(|e| SandboxError::Image(format!("cannot lock the image cache: {e}")))?;
    let result = if target.join(".openloop-ready").exists() {
        Ok(target)
    } else {
        build(&dir, &target, &mirror).await.map(|_| target)
    };
    drop(lock);
    result
}

async fn build(dir: &Path, target: &Path, mirror: &str) -> Result<(), SandboxError> {
    let tmp = dir.join(format!("{IMAGE_NAME}.building"));
    let _ = std::fs::remove_dir_all(&tmp);
    tracing::info!(image = %target.display(), "building the devbox base image with debootstrap (about a minute, once)");
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(&tmp)
        .arg(mirror)
        .output()
        .await
        .map_err(|e| {
            SandboxError::Image(format!(
                "could not run debootstrap ({e}); install it with `apt-get install debootstrap`"
            ))
        })?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        return Err(SandboxError::Image(format!(
            "debootstrap failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    locale_archive(&tmp).await?;
    prepare(&tmp).map_err(|e| SandboxError::Image(format!("preparing the image: {e}")))?;
    let _ = std::fs::remove_dir_all(target);
    std::fs::rename(&tmp, target)
        .map_err(|e| SandboxError::Image(format!("cannot move the image into place: {e}")))?;
    Ok(())
}

/// Put the image's compiled `C.UTF-8` locale (the devboxes' `LANG`) into a locale archive:
/// every program that calls `setlocale` then maps one file instead of opening a dozen, which
/// is a tenth of a millisecond off every command a devbox starts (`bash -c`). The image's own
/// `localedef` does it (debootstrap ran the image's programs the same way), so the archive's
/// format is its glibc's.
async fn locale_archive(root: &Path) -> Result<(), SandboxError> {
    let out = Command::new("chroot")
        .arg(root)
        .args(["localedef", "--add-to-archive", "/usr/lib/locale/C.utf8"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .await
        .map_err(|e| SandboxError::Image(format!("could not run chroot for localedef: {e}")))?;
    if !out.status.success() {
        return Err(SandboxError::Image(format!(
            "localedef --add-to-archive C.utf8 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Add the devbox user and its home. (The agent comes from a layer of its own, stacked over
/// the image: see `devbox::prepare_agent_layer`.)
fn prepare(root: &Path) -> std::io::Result<()> {
    let home = root.join("home/user");
    std::fs::create_dir_all(&home)?;
    std::fs::create_dir_all(home.join(".local/bin"))?;
    for p in [&home, &home.join(".local"), &home.join(".local/bin")] {
        std::os::unix::fs::chown(p, Some(SANDBOX_HOST_UID), Some(SANDBOX_HOST_UID))?;
    }
    append(
        &root.join("etc/passwd"),
        &format!("user:x:{SANDBOX_UID}:{SANDBOX_UID}:Devbox user:/home/user:/bin/bash\n"),
    )?;
    append(&root.join("etc/group"), &format!("user:x:{SANDBOX_UID}:\n"))?;
    std::fs::write(root.join("etc/hostname"), "devbox\n")?;
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost devbox\n::1 localhost\n",
    )?;
    // The resolver of slirp4netns (outbound network); never the host's configuration.
    std::fs::write(root.join("etc/resolv.conf"), "nameserver 10.0.2.3\n")?;
    // No package caches or host resolver configuration are carried into devboxes.
    let _ = std::fs::remove_dir_all(root.join("var/cache/apt/archives"));
    std::fs::write(root.join(".openloop-ready"), IMAGE_NAME)?;
    Ok(())
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(line.as_bytes())
}

/// An exclusive `flock` held until drop.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

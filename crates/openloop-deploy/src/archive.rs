//! A deployment's source as one archive, named by the hash of its content: what the node
//! that built a deployment stores in the database, and every other node of a cluster
//! unpacks to build the same environment on its first run of it.

use crate::DeployError;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The largest source archive a cluster keeps (the database holds it).
pub const MAX_ARCHIVE_BYTES: usize = 128 << 20;

/// Pack `repo` (without `.git`) into a tar archive; returns its SHA-256 (hex) and bytes.
/// Symbolic links are kept as links, never followed.
pub fn pack(repo: &Path) -> Result<(String, Vec<u8>), DeployError> {
    // Sized first, from the files' metadata: nothing past the limit is read into memory.
    let size = tree_size(repo, true)?;
    if size > MAX_ARCHIVE_BYTES as u64 {
        return Err(too_large(size));
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    add_dir(&mut builder, repo, Path::new(""))?;
    let bytes = builder.into_inner()?;
    if bytes.len() > MAX_ARCHIVE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    let hash = hex::encode(Sha256::digest(&bytes));
    Ok((hash, bytes))
}

fn too_large(bytes: u64) -> DeployError {
    DeployError::Source(format!(
        "the source is {} MiB, more than the {} MiB a cluster keeps per deployment; leave large files out of the repository",
        bytes >> 20,
        MAX_ARCHIVE_BYTES >> 20
    ))
}

/// Bytes of the regular files below `dir` (not following links; `.git` at the top left out).
fn tree_size(dir: &Path, top: bool) -> Result<u64, DeployError> {
    let mut total = 0u64;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if top && e.file_name() == ".git" {
            continue;
        }
        let kind = e.file_type()?;
        if kind.is_dir() {
            total += tree_size(&e.path(), false)?;
        } else if kind.is_file() {
            total += e.metadata()?.len();
        }
        if total > MAX_ARCHIVE_BYTES as u64 {
            break;
        }
    }
    Ok(total)
}

/// Entries in name order, so the same content always packs to the same bytes.
fn add_dir(builder: &mut tar::Builder<Vec<u8>>, dir: &Path, rel: &Path) -> Result<(), DeployError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if rel.as_os_str().is_empty() && name == ".git" {
            continue;
        }
        let path = e.path();
        let inner = rel.join(&name);
        let kind = e.file_type()?;
        if kind.is_dir() {
            builder.append_dir(&inner, &path)?;
            add_dir(builder, &path, &inner)?;
        } else if kind.is_file() || kind.is_symlink() {
            builder.append_path_with_name(&path, &inner)?;
        }
    }
    Ok(())
}

/// Unpack an archive made by [`pack`] into `dest` (created). Checks the content against
/// `hash` first. Entries that would land outside `dest` (absolute paths, `..`, through a
/// link) are refused by the tar reader; owners are not restored.
pub fn unpack(bytes: &[u8], hash: &str, dest: &Path) -> Result<(), DeployError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual != hash {
        return Err(DeployError::Source(format!(
            "the stored source archive does not match its hash ({actual} is not {hash}); deploy again"
        )));
    }
    std::fs::create_dir_all(dest)?;
    let mut archive = tar::Archive::new(bytes);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.unpack(dest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_content_packs_to_the_same_hash_and_unpacks_whole() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("pkg/sub")).unwrap();
        std::fs::write(a.path().join("requirements.txt"), "").unwrap();
        std::fs::write(a.path().join("pkg/sub/mod.py"), "x = 1\n").unwrap();
        std::fs::create_dir_all(a.path().join(".git")).unwrap();
        std::fs::write(a.path().join(".git/HEAD"), "ref").unwrap();
        std::os::unix::fs::symlink("sub/mod.py", a.path().join("pkg/link.py")).unwrap();
        let (h1, bytes) = pack(a.path()).unwrap();
        let (h2, _) = pack(a.path()).unwrap();
        assert_eq!(h1, h2);
        let b = tempfile::tempdir().unwrap();
        unpack(&bytes, &h1, b.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(b.path().join("pkg/sub/mod.py")).unwrap(),
            "x = 1\n"
        );
        assert_eq!(
            std::fs::read_link(b.path().join("pkg/link.py")).unwrap(),
            Path::new("sub/mod.py")
        );
        assert!(!b.path().join(".git").exists());
        std::fs::write(a.path().join("pkg/sub/mod.py"), "x = 2\n").unwrap();
        assert_ne!(pack(a.path()).unwrap().0, h1);
    }

    #[test]
    fn a_source_past_the_limit_is_refused_before_it_is_read() {
        let a = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(a.path().join("huge")).unwrap();
        // Sparse: the size is there, the bytes are not.
        f.set_len(MAX_ARCHIVE_BYTES as u64 * 4).unwrap();
        let e = pack(a.path()).unwrap_err().to_string();
        assert!(e.contains("MiB"), "{e}");
    }

    #[test]
    fn a_corrupt_archive_is_refused() {
        let a = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("f"), "1").unwrap();
        let (h, mut bytes) = pack(a.path()).unwrap();
        bytes[600] ^= 1;
        let b = tempfile::tempdir().unwrap();
        assert!(unpack(&bytes, &h, b.path()).is_err());
    }

    #[test]
    fn entries_escaping_the_destination_are_not_written() {
        // A hand-made archive: a link to the parent directory, then a file through it.
        let mut builder = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        builder.append_link(&mut h, "up", "..").unwrap();
        let mut f = tar::Header::new_gnu();
        f.set_size(3);
        f.set_mode(0o644);
        builder
            .append_data(&mut f, "up/escaped", &b"bad"[..])
            .unwrap();
        let bytes = builder.into_inner().unwrap();
        let hash = hex::encode(Sha256::digest(&bytes));
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("dest");
        let _ = unpack(&bytes, &hash, &dest);
        assert!(!root.path().join("escaped").exists());
    }
}

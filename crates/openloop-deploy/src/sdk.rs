//! The `runloop` Python SDK, embedded from `sdk/python/runloop` at compile time.

use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::OnceLock;

/// `(file name, contents)` of every module of the package.
pub const FILES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../../sdk/python/runloop/__init__.py"),
    ),
    (
        "_client.py",
        include_str!("../../../sdk/python/runloop/_client.py"),
    ),
    (
        "_coordinator.py",
        include_str!("../../../sdk/python/runloop/_coordinator.py"),
    ),
    (
        "_devbox.py",
        include_str!("../../../sdk/python/runloop/_devbox.py"),
    ),
    (
        "_errors.py",
        include_str!("../../../sdk/python/runloop/_errors.py"),
    ),
    (
        "_function.py",
        include_str!("../../../sdk/python/runloop/_function.py"),
    ),
    (
        "_host.py",
        include_str!("../../../sdk/python/runloop/_host.py"),
    ),
    (
        "_isolation.py",
        include_str!("../../../sdk/python/runloop/_isolation.py"),
    ),
    (
        "_manifest.py",
        include_str!("../../../sdk/python/runloop/_manifest.py"),
    ),
    (
        "_run.py",
        include_str!("../../../sdk/python/runloop/_run.py"),
    ),
    ("py.typed", ""),
];

/// A short hash of the SDK's contents; part of every environment's cache key.
pub fn content_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut h = Sha256::new();
        for (name, text) in FILES {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(text.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())[..12].to_string()
    })
}

/// Write the package into a `site-packages` directory.
pub fn install(site_packages: &Path) -> std::io::Result<()> {
    let dir = site_packages.join("runloop");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for (name, text) in FILES {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every module of the package in the repository is embedded (a module left out would
    /// only fail when an environment imports it).
    #[test]
    fn every_module_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python/runloop");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".py") || n == "py.typed")
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = super::FILES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }
}

//! The jail's root planned before the forks: the spec turned into the steps that assemble it,
//! and every string the set-up code in `G` needs.

use super::spec::{JailSpec, Network};
use super::sys::{cstr, path_bytes};
use crate::seccomp::Filter;
use std::ffi::CString;
use std::io::{Error, Result};
use std::path::{Path, PathBuf};

/// One step of assembling the root, with every path prepared ahead (no allocation after fork).
pub(super) enum Step {
    /// Create a directory (and its parents) at this path.
    Dir(CString),
    /// Create an empty file to bind a file onto.
    File(CString),
    Symlink {
        target: CString,
        at: CString,
    },
    /// Bind source number `src` (see [`Plan::open_sources`]) at `dst`.
    Bind {
        src: usize,
        dst: CString,
        writable: bool,
        /// A device node: its mount must not get `nodev`.
        device: bool,
    },
    /// Show directory source number `src` read-only at `dst` as an overlay of it and an
    /// empty directory: unlike a bind mount, whose entry in the mount table names its
    /// source's path on the host, an overlay's entry names only its layers' descriptors.
    Overlay {
        src: usize,
        dst: CString,
    },
    /// Bind a file written into the set-up root over `dst` (read-only), for files inside
    /// read-only binds (the resolver configuration of a jail with outbound network).
    Cover {
        name: CString,
        contents: Vec<u8>,
        dst: CString,
    },
    Tmpfs {
        dst: CString,
        opts: CString,
    },
    Proc(CString),
    Write {
        dst: CString,
        contents: Vec<u8>,
    },
}

pub(super) struct Plan {
    /// Bring up the loopback interface of the jail's own network namespace.
    pub(super) loopback: bool,
    /// Host paths of the bind sources.
    pub(super) sources: Vec<CString>,
    pub(super) hostname: CString,
    pub(super) steps: Vec<Step>,
    pub(super) cwd: CString,
    pub(super) program: CString,
    pub(super) argv: Vec<CString>,
    pub(super) envp: Vec<CString>,
    pub(super) keep_fds: Vec<i32>,
    pub(super) filter: Filter,
}

/// `/newroot` + an absolute path inside the jail.
fn new_root(p: &Path) -> Result<CString> {
    if !p.is_absolute() {
        return Err(Error::other(format!(
            "jail paths must be absolute: {}",
            p.display()
        )));
    }
    let mut v = b"/newroot".to_vec();
    v.extend_from_slice(path_bytes(p));
    cstr(v)
}

/// Record `p` as a bind source; its number.
fn source(p: &Path, sources: &mut Vec<CString>) -> Result<usize> {
    sources.push(cstr(path_bytes(p))?);
    Ok(sources.len() - 1)
}

/// Every ancestor directory of `p` (inside the jail), outermost first, as `/newroot` paths.
fn parents(p: &Path) -> Result<Vec<Step>> {
    let mut out = Vec::new();
    let mut ancestors: Vec<&Path> = p.ancestors().skip(1).collect();
    ancestors.reverse();
    for a in ancestors {
        if a != Path::new("/") {
            out.push(Step::Dir(new_root(a)?));
        }
    }
    Ok(out)
}

impl Plan {
    pub(super) fn new(spec: &JailSpec) -> Result<Plan> {
        let mut steps = Vec::new();
        let mut sources = Vec::new();
        for b in &spec.binds {
            let meta = std::fs::symlink_metadata(&b.src).map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("cannot bind {} into the jail: {e}", b.src.display()),
                )
            })?;
            steps.extend(parents(&b.dst)?);
            if meta.file_type().is_symlink() && b.src == b.dst {
                let target = std::fs::read_link(&b.src)?;
                steps.push(Step::Symlink {
                    target: cstr(path_bytes(&target))?,
                    at: new_root(&b.dst)?,
                });
                continue;
            }
            let is_dir = std::fs::metadata(&b.src)?.is_dir();
            if is_dir && !b.writable && b.src != b.dst {
                steps.push(Step::Dir(new_root(&b.dst)?));
                steps.push(Step::Overlay {
                    src: source(&b.src, &mut sources)?,
                    dst: new_root(&b.dst)?,
                });
                continue;
            }
            steps.push(if is_dir {
                Step::Dir(new_root(&b.dst)?)
            } else {
                Step::File(new_root(&b.dst)?)
            });
            steps.push(Step::Bind {
                src: source(&b.src, &mut sources)?,
                dst: new_root(&b.dst)?,
                writable: b.writable,
                device: false,
            });
        }
        for t in &spec.tmpfs {
            steps.extend(parents(&t.dst)?);
            steps.push(Step::Dir(new_root(&t.dst)?));
            steps.push(Step::Tmpfs {
                dst: new_root(&t.dst)?,
                opts: cstr(format!("size={},mode={:o}", t.size_bytes.max(4096), t.mode))?,
            });
        }
        // A fresh /proc of the jail's own pid namespace, and a minimal /dev.
        steps.push(Step::Dir(new_root(Path::new("/proc"))?));
        steps.push(Step::Proc(new_root(Path::new("/proc"))?));
        steps.push(Step::Dir(new_root(Path::new("/dev"))?));
        steps.push(Step::Tmpfs {
            dst: new_root(Path::new("/dev"))?,
            opts: cstr("size=65536,mode=755")?,
        });
        for node in ["null", "zero", "full", "random", "urandom"] {
            let dev = PathBuf::from("/dev").join(node);
            if dev.exists() {
                steps.push(Step::File(new_root(&dev)?));
                steps.push(Step::Bind {
                    src: source(&dev, &mut sources)?,
                    dst: new_root(&dev)?,
                    writable: true,
                    device: true,
                });
            }
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            steps.push(Step::Symlink {
                target: cstr(target)?,
                at: new_root(&Path::new("/dev").join(name))?,
            });
        }
        steps.push(Step::Dir(new_root(Path::new("/dev/shm"))?));
        steps.push(Step::Tmpfs {
            dst: new_root(Path::new("/dev/shm"))?,
            opts: cstr("size=67108864,mode=1777")?,
        });
        for f in &spec.files {
            steps.extend(parents(&f.dst)?);
            steps.push(Step::Write {
                dst: new_root(&f.dst)?,
                contents: f.contents.clone(),
            });
        }
        if spec.network == Network::Outbound {
            // Names resolve through slirp4netns's resolver, the one private address allowed.
            steps.push(Step::Cover {
                name: cstr("/resolv.conf")?,
                contents: format!("nameserver {}\n", crate::egress::RESOLVER).into_bytes(),
                dst: new_root(Path::new("/etc/resolv.conf"))?,
            });
        }
        let argv = std::iter::once(cstr(path_bytes(&spec.program)))
            .chain(spec.args.iter().map(cstr))
            .collect::<Result<Vec<_>>>()?;
        let envp = spec
            .env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Plan {
            loopback: spec.network != Network::Host,
            sources,
            hostname: cstr(&spec.hostname)?,
            steps,
            cwd: cstr(path_bytes(&spec.cwd))?,
            program: cstr(path_bytes(&spec.program))?,
            argv,
            envp,
            keep_fds: spec.keep_fds.clone(),
            filter: Filter::new(spec.seccomp.into()),
        })
    }
}

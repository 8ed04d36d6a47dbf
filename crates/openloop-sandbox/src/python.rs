//! The sandbox a deployment's Python code runs in: its build (`uv`), the import that reads
//! its manifest, and its warm process with every run. It is a [`crate::jail`]: the host's
//! system directories read-only, the deployment's environment and code at fixed neutral
//! paths, a size-limited tmpfs as `/tmp`, its own user, pid, mount, ipc, uts and cgroup
//! namespaces, uid 1000 with no capabilities, a seccomp filter, its own cgroup, and an
//! environment made only of [`PythonSandbox::env`] and the documented basics.

use crate::cgroup::Cgroup;
use crate::jail::{Bind, JailFile, JailSpec, Network, SeccompProfile};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Where a deployment's virtual environment is, inside.
pub const VENV: &str = "/opt/openloop/venv";
/// Where the deployment's code is, inside (the working directory).
pub const APP: &str = "/opt/openloop/app";
/// Where a build's `uv` cache is, inside.
pub const UV_CACHE: &str = "/opt/openloop/uv-cache";
/// Where the `uv` binary is, inside a build.
pub const UV: &str = "/opt/openloop/bin/uv";
/// A writable directory for results that leave the sandbox (the manifest).
pub const OUT: &str = "/opt/openloop/out";
/// The engine socket runs connect to, inside.
pub const ENGINE_SOCKET: &str = "/run/openloop/engine.sock";
/// The API's Unix socket, inside: function code has no network path to the server.
pub const API_SOCKET: &str = "/run/openloop/api.sock";
/// How the SDK inside names the API (`OPENLOOP_API_URL`).
pub const API_URL: &str = "unix:/run/openloop/api.sock";
/// The seccomp program each run loads once it has set up its own namespaces.
pub const RUN_SECCOMP: &str = "/run/openloop/seccomp-run.bpf";

/// The environment every Python sandbox starts with, before its own variables.
pub fn base_env() -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            format!("{VENV}/bin:/usr/local/bin:/usr/bin:/bin"),
        ),
        ("HOME".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ("PYTHONUNBUFFERED".into(), "1".into()),
    ]
}

/// What a Python sandbox is made of.
#[derive(Debug, Clone)]
pub struct PythonSandbox {
    /// The `openloop` binary, which acts as the jail launcher (`openloop __jail`).
    pub launcher: PathBuf,
    /// Binds beyond the host's system directories.
    pub binds: Vec<Bind>,
    /// Small files written into the sandbox, read-only.
    pub files: Vec<JailFile>,
    /// Size of the tmpfs at `/tmp` (its pages count against the cgroup's memory limit).
    pub tmp_bytes: u64,
    /// Variables beyond [`base_env`].
    pub env: Vec<(String, String)>,
    /// The working directory inside.
    pub cwd: PathBuf,
    pub network: Network,
    /// Where outbound traffic may go (the default rules when `None`).
    pub egress: Option<crate::egress::EgressPolicy>,
    pub seccomp: SeccompProfile,
    /// `cgroup.procs` files the sandbox joins before anything in it runs.
    pub cgroup_procs: Vec<CString>,
    /// Descriptors beyond 0, 1 and 2 that stay open inside.
    pub keep_fds: Vec<i32>,
}

/// Where the interpreter at `python` is installed (the directory above its `bin/`), for
/// each of its given and real paths that lies outside the system directories every Python
/// sandbox has ([`crate::jail::SYSTEM_DIRS`]): an interpreter of its own (pyenv, a build
/// under `/opt`) must be visible, read-only and at the same path, to the sandboxes that run
/// it or an environment made from it. Empty for the distribution's own interpreter.
pub fn interpreter_prefixes(python: &Path) -> Vec<PathBuf> {
    let given = std::path::absolute(python).ok();
    let real = python.canonicalize().ok();
    let mut out: Vec<PathBuf> = Vec::new();
    for exe in [given, real].into_iter().flatten() {
        let Some(prefix) = exe.parent().and_then(Path::parent) else {
            continue;
        };
        let system = crate::jail::SYSTEM_DIRS
            .iter()
            .any(|d| prefix.starts_with(d));
        if !system && prefix != Path::new("/") && !out.iter().any(|p| p == prefix) {
            out.push(prefix.to_path_buf());
        }
    }
    out
}

/// The base interpreter of the environment at `venv` (on the host), from its `pyvenv.cfg`'s
/// `home` (the interpreter's `bin/` directory).
pub fn venv_base_python(venv: &Path) -> Option<PathBuf> {
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    cfg.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "home").then(|| Path::new(value.trim()).join("python3"))
    })
}

impl PythonSandbox {
    /// Bind the installation of the interpreter at `python` where it lies outside the
    /// system directories ([`interpreter_prefixes`]).
    pub fn with_interpreter(mut self, python: &Path) -> Self {
        for prefix in interpreter_prefixes(python) {
            let dst = prefix.to_string_lossy().into_owned();
            self = self.bind(&prefix, &dst, false);
        }
        self
    }

    /// [`with_interpreter`](Self::with_interpreter) for the base interpreter of the
    /// environment at `venv` (on the host).
    pub fn with_venv_interpreter(self, venv: &Path) -> Self {
        match venv_base_python(venv) {
            Some(python) => self.with_interpreter(&python),
            None => self,
        }
    }

    /// A sandbox with the basics: system directories, `/tmp` of `tmp_bytes`, [`APP`] as the
    /// working directory, the host's network, the `Sandbox` seccomp profile.
    pub fn new(launcher: &Path, tmp_bytes: u64) -> PythonSandbox {
        PythonSandbox {
            launcher: launcher.to_path_buf(),
            binds: Vec::new(),
            files: Vec::new(),
            tmp_bytes,
            env: Vec::new(),
            cwd: PathBuf::from(APP),
            network: Network::Host,
            egress: None,
            seccomp: SeccompProfile::Sandbox,
            cgroup_procs: Vec::new(),
            keep_fds: Vec::new(),
        }
    }

    pub fn bind(mut self, src: &Path, dst: &str, writable: bool) -> Self {
        self.binds.push(Bind {
            src: src.to_path_buf(),
            dst: PathBuf::from(dst),
            writable,
        });
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Run inside `cgroup` (joined before the sandbox is assembled).
    pub fn in_cgroup(mut self, cgroup: &Cgroup) -> Self {
        self.cgroup_procs = cgroup.procs_files();
        self
    }

    /// The jail's full specification for running `program args…`.
    pub fn spec(&self, program: &str, args: &[String]) -> JailSpec {
        let mut binds = JailSpec::system_binds();
        binds.extend(self.binds.iter().cloned());
        let mut env = base_env();
        env.extend(self.env.iter().cloned());
        JailSpec {
            binds,
            tmpfs: vec![crate::jail::Tmpfs {
                dst: PathBuf::from("/tmp"),
                size_bytes: self.tmp_bytes,
                mode: 0o1777,
            }],
            files: self.files.clone(),
            env,
            cwd: self.cwd.clone(),
            hostname: "openloop".into(),
            network: self.network,
            egress: self.egress.clone(),
            seccomp: self.seccomp,
            keep_fds: self.keep_fds.clone(),
            program: PathBuf::from(program),
            args: args.to_vec(),
        }
    }

    /// A command that runs `program args…` inside the sandbox. Its environment is empty
    /// apart from the sandbox's own; descriptors in `keep_fds` must be open (without
    /// close-on-exec) when the command execs. It dies with the server: start it with
    /// [`crate::lasting::spawn`], since it dies with the thread that starts it.
    pub fn command(
        &self,
        program: &str,
        args: &[String],
    ) -> std::io::Result<tokio::process::Command> {
        let mut cmd = self.spec(program, args).command(&self.launcher)?;
        let procs = self.cgroup_procs.clone();
        unsafe {
            cmd.pre_exec(move || {
                crate::cgroup::join_in_child(&procs)?;
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_interpreter_outside_the_system_dirs_is_bound() {
        assert!(interpreter_prefixes(Path::new("/usr/bin/python3")).is_empty());
        assert!(interpreter_prefixes(Path::new("/usr/local/bin/python3")).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("py/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("python3"), "").unwrap();
        assert_eq!(
            interpreter_prefixes(&bin.join("python3")),
            vec![dir.path().canonicalize().unwrap().join("py")]
        );
    }

    #[test]
    fn the_base_interpreter_of_an_environment_is_read_from_its_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pyvenv.cfg"),
            "home = /opt/py/bin\ninclude-system-site-packages = false\n",
        )
        .unwrap();
        assert_eq!(
            venv_base_python(dir.path()),
            Some(PathBuf::from("/opt/py/bin/python3"))
        );
        assert_eq!(venv_base_python(&dir.path().join("none")), None);
    }
}

//! The jail: Openloop's own launcher for the sandboxes that run a deployment's Python code
//! (its build, the import that reads its manifest, and its warm process with every run).
//!
//! Why not bubblewrap, as for devboxes: bubblewrap covers parts of `/proc` with read-only
//! bind mounts, and the kernel refuses a new `/proc` to a nested namespace while any proc
//! mount it can see is partly covered. Each run of a deployment gets its own pid namespace
//! and its own `/proc` (so it can neither see nor signal nor trace any other run), which
//! needs a `/proc` in the jail that nothing covers. Nothing is lost: every path below the
//! jail's root is read-only unless the spec says otherwise, `/proc/sys` and friends are
//! owned by the host's root and so never writable by the jail's unprivileged user.
//!
//! How it starts (the server spawns `openloop __jail SPEC`, with an empty environment):
//! 1. `P` (host root) forks `C`, which unshares user, mount, pid, ipc, uts and cgroup
//!    namespaces (and the network namespace for [`Network::None`]).
//! 2. `P` writes `C`'s uid and gid maps: uid 0 inside is [`JAIL_ROOT_HOST_UID`] (an account
//!    that owns nothing on the host, used only while the jail is assembled) and uid 1000 is
//!    [`FUNCTION_HOST_UID`].
//! 3. `C` forks `G`, pid 1 of the new pid namespace. `G` builds the root file system on a
//!    tmpfs from the spec's binds, tmpfs mounts and files, mounts a fresh `/proc` and a
//!    minimal `/dev`, pivots into it, detaches the host's root, remounts the root read-only,
//!    drops to uid 1000 with no capabilities (bounding set emptied, `no_new_privs`), closes
//!    every inherited descriptor the spec does not keep, installs the seccomp filter, and
//!    `execve`s the program with exactly the spec's environment.
//! 4. `C` and `P` wait and exit with `G`'s status; each dies with its parent, and when `G`
//!    (pid 1) dies the kernel kills everything else in the jail.

use crate::seccomp::{Filter, Profile};
use serde::{Deserialize, Serialize};
use std::ffi::{CStr, CString};
use std::io::{Error, Result};
use std::path::{Path, PathBuf};

/// The host uid that uid 1000 inside a jail maps to: function code and builds. It differs
/// from the devboxes' uid, so the two kinds of sandbox never share an account.
pub const FUNCTION_HOST_UID: u32 = 100_001;
/// The host uid of uid 0 inside a jail, which only the jail's own set-up code ever runs as.
pub const JAIL_ROOT_HOST_UID: u32 = 100_002;
/// The uid everything in a jail runs as.
pub const JAIL_UID: u32 = 1000;

/// The first argument that makes the `openloop` binary act as the jail launcher.
pub const JAIL_ARG: &str = "__jail";

/// One bind mount: host `src` at `dst` inside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub writable: bool,
}

/// A size-limited tmpfs at `dst`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tmpfs {
    pub dst: PathBuf,
    pub size_bytes: u64,
    pub mode: u32,
}

/// A small read-only file the jail writes into its root (for example a seccomp program).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailFile {
    pub dst: PathBuf,
    pub contents: Vec<u8>,
}

/// The network a jail sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network namespace (builds fetch packages; the SDK reaches the API).
    Host,
    /// A network namespace of its own with only a loopback interface (up).
    None,
    /// A network namespace of its own with outbound connections through slirp4netns (as
    /// for devboxes): never to the host's loopback, and by default to no private,
    /// link-local or host address ([`crate::egress`]).
    Outbound,
}

/// The seccomp profile a jail's program runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    Sandbox,
    WarmHost,
}

impl From<SeccompProfile> for Profile {
    fn from(p: SeccompProfile) -> Profile {
        match p {
            SeccompProfile::Sandbox => Profile::Sandbox,
            SeccompProfile::WarmHost => Profile::WarmHost,
        }
    }
}

/// Everything a jail is made of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailSpec {
    pub binds: Vec<Bind>,
    pub tmpfs: Vec<Tmpfs>,
    pub files: Vec<JailFile>,
    /// The whole environment of the program; nothing of the server's is inherited.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub hostname: String,
    pub network: Network,
    /// Where [`Network::Outbound`] traffic may go (the default rules when `None`).
    #[serde(default)]
    pub egress: Option<crate::egress::EgressPolicy>,
    pub seccomp: SeccompProfile,
    /// Descriptors beyond 0, 1 and 2 that stay open (for example a control socket as 3).
    pub keep_fds: Vec<i32>,
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Host directories every Python sandbox needs, read-only at the same path. Symbolic links
/// among them (`/lib` → `usr/lib` on merged-/usr systems) are recreated as links.
pub const SYSTEM_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"];

impl JailSpec {
    /// Read-only binds of [`SYSTEM_DIRS`] that exist on this host.
    pub fn system_binds() -> Vec<Bind> {
        SYSTEM_DIRS
            .iter()
            .filter(|d| Path::new(d).exists())
            .map(|d| Bind {
                src: PathBuf::from(d),
                dst: PathBuf::from(d),
                writable: false,
            })
            .collect()
    }

    /// The command that starts this jail through `launcher` (the `openloop` binary). The
    /// command starts with an empty environment; the caller sets stdio and may add a
    /// `pre_exec` (descriptors in `keep_fds` must be open in the child when it execs).
    pub fn command(&self, launcher: &Path) -> Result<tokio::process::Command> {
        let spec = serde_json::to_string(self).map_err(Error::other)?;
        let mut cmd = tokio::process::Command::new(launcher);
        cmd.arg(JAIL_ARG).arg(spec).env_clear();
        Ok(cmd)
    }
}

/// Give the calling process (the server, before it starts any thread) a mount namespace of
/// its own: mounts it makes (devbox disks and roots, the engine socket's directory) are
/// invisible to the host and vanish with the process, even after `kill -9`. Host mounts
/// still propagate in.
pub fn private_mounts() -> Result<()> {
    check(
        unsafe { libc::unshare(libc::CLONE_NEWNS) },
        "unshare(CLONE_NEWNS)",
    )?;
    mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE, None)
}

/// Mount a small tmpfs (1 MiB) at `dir`, for sockets that are bound into sandboxes: a bind
/// from its own file system shows in a sandbox's mount table without any host path.
pub fn socket_tmpfs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = cstr(path_bytes(dir))?;
    mount(
        Some(c"tmpfs"),
        &target,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(c"size=1048576,mode=755"),
    )
}

/// The launcher's entry point (`openloop __jail SPEC`). Must be called before any thread is
/// started. Never returns: exits with the jailed program's status.
pub fn main(spec_json: &str) -> ! {
    let spec: JailSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => fail(&format!("unreadable jail spec: {e}")),
    };
    match launch(&spec) {
        Ok(code) => std::process::exit(code),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("openloop jail: {msg}");
    // 111: the sandbox could not be set up (distinct from any exit of the program itself).
    unsafe { libc::_exit(111) }
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc < 0 {
        let e = Error::last_os_error();
        Err(Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

fn pipe() -> Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe",
    )?;
    Ok((fds[0], fds[1]))
}

fn read_byte(fd: i32) -> bool {
    let mut b = 0u8;
    loop {
        let n = unsafe { libc::read(fd, &mut b as *mut u8 as *mut libc::c_void, 1) };
        if n < 0 && Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return n == 1;
    }
}

fn write_byte(fd: i32) {
    let b = 1u8;
    unsafe {
        libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
    }
}

/// Wait for `pid` and turn its status into an exit code (128 + signal for a killed one).
fn wait_code(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return 111;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        111
    }
}

fn die_with_parent() {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
}

fn launch(spec: &JailSpec) -> Result<i32> {
    // Everything that allocates happens before the forks.
    let plan = Plan::new(spec)?;
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let child = unsafe { libc::fork() };
    check(child, "fork")?;
    if child == 0 {
        unsafe {
            libc::close(ready_r);
            libc::close(go_w);
        }
        die_with_parent();
        let mut flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP;
        if spec.network != Network::Host {
            flags |= libc::CLONE_NEWNET;
        }
        if let Err(e) = check(unsafe { libc::unshare(flags) }, "unshare") {
            fail(&e.to_string());
        }
        write_byte(ready_w);
        if !read_byte(go_r) {
            fail("the launcher did not map the jail's user namespace");
        }
        let grandchild = unsafe { libc::fork() };
        if grandchild < 0 {
            fail("fork inside the jail failed");
        }
        if grandchild == 0 {
            die_with_parent();
            match plan.enter() {
                Ok(never) => match never {},
                Err(e) => fail(&e.to_string()),
            }
        }
        unsafe { libc::_exit(wait_code(grandchild)) }
    }
    unsafe {
        libc::close(ready_w);
        libc::close(go_r);
    }
    if !read_byte(ready_r) {
        return Ok(wait_code(child));
    }
    let maps = [
        (
            "uid_map",
            format!("0 {JAIL_ROOT_HOST_UID} 1\n{JAIL_UID} {FUNCTION_HOST_UID} 1\n"),
        ),
        (
            "gid_map",
            format!("0 {JAIL_ROOT_HOST_UID} 1\n{JAIL_UID} {FUNCTION_HOST_UID} 1\n"),
        ),
    ];
    for (file, map) in maps {
        if let Err(e) = std::fs::write(format!("/proc/{child}/{file}"), map) {
            unsafe { libc::kill(child, libc::SIGKILL) };
            return Err(Error::new(
                e.kind(),
                format!("writing the jail's {file}: {e}"),
            ));
        }
    }
    // The outbound network is in place before anything in the jail runs; it ends with this
    // process (its exit descriptor closes).
    let _network = if spec.network == Network::Outbound {
        match crate::egress::attach(child, spec.egress.as_ref()) {
            Ok(n) => Some(n),
            Err(e) => {
                unsafe { libc::kill(child, libc::SIGKILL) };
                return Err(Error::new(e.kind(), format!("the jail's network: {e}")));
            }
        }
    } else {
        None
    };
    write_byte(go_w);
    Ok(wait_code(child))
}

/// One step of assembling the root, with every path prepared ahead (no allocation after fork).
enum Step {
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

struct Plan {
    /// Bring up the loopback interface of the jail's own network namespace.
    loopback: bool,
    /// Host paths of the bind sources.
    sources: Vec<CString>,
    hostname: CString,
    steps: Vec<Step>,
    cwd: CString,
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    keep_fds: Vec<i32>,
    filter: Filter,
}

fn cstr(p: impl AsRef<[u8]>) -> Result<CString> {
    CString::new(p.as_ref().to_vec()).map_err(|_| Error::other("a path contains a NUL byte"))
}

fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_encoded_bytes()
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
    fn new(spec: &JailSpec) -> Result<Plan> {
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

    /// Open every bind source as an `O_PATH` descriptor while this process still has the
    /// host uid 0 as its file-system uid (so directories such as a 0700 `/root` on the way
    /// can be searched), and name each as the set-up code will see it later: through the
    /// host's `/proc`, kept at `/oldroot/proc` until the jail is sealed. The descriptors
    /// close on exec.
    fn open_sources(&self) -> Result<Vec<CString>> {
        let mut names = Vec::with_capacity(self.sources.len());
        for src in &self.sources {
            let fd = unsafe { libc::open(src.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            check(fd, &format!("opening {src:?}"))?;
            names.push(cstr(format!("/oldroot/proc/self/fd/{fd}"))?);
        }
        Ok(names)
    }

    /// In `G`: assemble the root, drop privileges and exec. Returns only on failure.
    fn enter(&self) -> Result<std::convert::Infallible> {
        let sources = self.open_sources()?;
        // Become uid 0 of the jail (an unprivileged host account) to assemble it.
        check(unsafe { libc::setresgid(0, 0, 0) }, "setresgid 0")?;
        check(unsafe { libc::setresuid(0, 0, 0) }, "setresuid 0")?;
        if self.loopback {
            loopback_up()?;
        }
        let h = self.hostname.as_bytes();
        check(
            unsafe { libc::sethostname(h.as_ptr() as *const libc::c_char, h.len()) },
            "sethostname",
        )?;
        mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
        // A tmpfs becomes the root for a moment; the host's root is kept at /oldroot while
        // the new root is assembled at /newroot (as bubblewrap does).
        mount(
            Some(c"tmpfs"),
            c"/tmp",
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"mode=755,size=1048576"),
        )?;
        check(unsafe { libc::chdir(c"/tmp".as_ptr()) }, "chdir /tmp")?;
        mkdir(c"newroot")?;
        mount(
            Some(c"newroot"),
            c"newroot",
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        mkdir(c"oldroot")?;
        // The empty second layer of read-only overlays (overlayfs wants two without an upper).
        mkdir(c"empty")?;
        check(
            unsafe {
                libc::syscall(libc::SYS_pivot_root, c"/tmp".as_ptr(), c"oldroot".as_ptr()) as i32
            },
            "pivot_root",
        )?;
        check(unsafe { libc::chdir(c"/".as_ptr()) }, "chdir /")?;
        for step in &self.steps {
            apply(step, &sources)?;
        }
        check(
            unsafe { libc::umount2(c"/oldroot".as_ptr(), libc::MNT_DETACH) },
            "detaching the host's root",
        )?;
        check(unsafe { libc::chdir(c"/newroot".as_ptr()) }, "chdir")?;
        check(
            unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32 },
            "pivot_root",
        )?;
        check(
            unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) },
            "detaching the set-up root",
        )?;
        check(unsafe { libc::chdir(c"/".as_ptr()) }, "chdir /")?;
        // Nothing outside the spec's writable binds and tmpfs mounts can be written.
        mount(
            None,
            c"/",
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )?;
        check(
            unsafe { libc::chdir(self.cwd.as_ptr()) },
            "chdir to the working directory",
        )?;
        self.drop_privileges()?;
        self.close_other_fds()?;
        self.filter
            .install()
            .map_err(|e| Error::new(e.kind(), format!("seccomp: {e}")))?;
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        unsafe { libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = Error::last_os_error();
        Err(Error::new(
            e.kind(),
            format!("exec {:?}: {e}", self.program),
        ))
    }
}

/// Carry out one step of assembling the root; `sources` names the bind sources.
fn apply(step: &Step, sources: &[CString]) -> Result<()> {
    {
        match step {
            Step::Dir(p) => mkdir(p),
            Step::File(p) => {
                let fd = unsafe {
                    libc::open(
                        p.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    )
                };
                check(fd, &format!("creating {p:?}"))?;
                unsafe { libc::close(fd) };
                Ok(())
            }
            Step::Symlink { target, at } => {
                let rc = unsafe { libc::symlink(target.as_ptr(), at.as_ptr()) };
                if rc < 0 && Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                    return check(rc, &format!("symlink {at:?}"));
                }
                Ok(())
            }
            Step::Bind {
                src,
                dst,
                writable,
                device,
            } => {
                mount(
                    Some(&sources[*src]),
                    dst,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                )?;
                if *device {
                    return Ok(());
                }
                let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                if !writable {
                    flags |= libc::MS_RDONLY;
                }
                flags |= locked_flags(dst);
                mount(None, dst, None, flags, None)
            }
            Step::Overlay { src, dst } => {
                let opts = cstr(format!(
                    "lowerdir={}:/empty",
                    sources[*src].to_string_lossy()
                ))?;
                mount(
                    Some(c"overlay"),
                    dst,
                    Some(c"overlay"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                    Some(&opts),
                )
            }
            Step::Cover {
                name,
                contents,
                dst,
            } => {
                apply(
                    &Step::Write {
                        dst: name.clone(),
                        contents: contents.clone(),
                    },
                    sources,
                )?;
                mount(Some(name), dst, None, libc::MS_BIND, None)?;
                mount(
                    None,
                    dst,
                    None,
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV,
                    None,
                )
            }
            Step::Tmpfs { dst, opts } => mount(
                Some(c"tmpfs"),
                dst,
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(opts),
            ),
            Step::Proc(dst) => mount(
                Some(c"proc"),
                dst,
                Some(c"proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            ),
            Step::Write { dst, contents } => {
                let fd = unsafe {
                    libc::open(
                        dst.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
                        0o444,
                    )
                };
                check(fd, &format!("creating {dst:?}"))?;
                let mut off = 0;
                while off < contents.len() {
                    let n = unsafe {
                        libc::write(
                            fd,
                            contents[off..].as_ptr() as *const libc::c_void,
                            contents.len() - off,
                        )
                    };
                    if n <= 0 {
                        unsafe { libc::close(fd) };
                        return check(-1, &format!("writing {dst:?}"));
                    }
                    off += n as usize;
                }
                unsafe { libc::close(fd) };
                Ok(())
            }
        }
    }
}

impl Plan {
    fn drop_privileges(&self) -> Result<()> {
        // Empty the bounding set while uid 0 of the jail still may, then become uid 1000:
        // leaving uid 0 clears every capability, and none can come back (no_new_privs).
        for cap in 0..64 {
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        }
        check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
        check(
            unsafe { libc::setresgid(JAIL_UID, JAIL_UID, JAIL_UID) },
            "setresgid",
        )?;
        check(
            unsafe { libc::setresuid(JAIL_UID, JAIL_UID, JAIL_UID) },
            "setresuid",
        )?;
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        check(
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
            "no_new_privs",
        )?;
        Ok(())
    }

    fn close_other_fds(&self) -> Result<()> {
        // Every descriptor from 3 up closes on exec, except those the spec keeps.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        check(rc as i32, "close_range")?;
        for fd in &self.keep_fds {
            check(
                unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) },
                "keeping a descriptor",
            )?;
        }
        Ok(())
    }
}

/// Set `lo` up in this process's network namespace.
fn loopback_up() -> Result<()> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket")?;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    let result = (|| {
        check(
            unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) },
            "reading lo's flags",
        )?;
        unsafe {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        }
        check(
            unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) },
            "setting lo up",
        )
    })();
    unsafe { libc::close(fd) };
    result
}

fn mkdir(p: &CStr) -> Result<()> {
    let rc = unsafe { libc::mkdir(p.as_ptr(), 0o755) };
    if rc < 0 && Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return check(rc, &format!("mkdir {p:?}"));
    }
    Ok(())
}

fn mount(
    src: Option<&CStr>,
    dst: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<()> {
    let rc = unsafe {
        libc::mount(
            src.map_or(std::ptr::null(), |s| s.as_ptr()),
            dst.as_ptr(),
            fstype.map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    };
    check(rc, &format!("mount {dst:?}"))
}

/// Flags a remount inside a user namespace must keep (the kernel locks them).
fn locked_flags(p: &CStr) -> libc::c_ulong {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(p.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (libc::ST_RDONLY, libc::MS_RDONLY),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    flags
}

//! Starting a devbox's sandbox: the `bwrap` command line, its seccomp program handed over
//! in a memfd, and the pid of the process it runs.

use super::*;

/// The devbox's seccomp program, compiled once.
pub(super) fn seccomp_program() -> &'static [u8] {
    static PROGRAM: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| crate::seccomp::Filter::new(crate::seccomp::Profile::Sandbox).to_bytes())
}

/// A sealed in-memory file holding `bytes`, read from its start (for `bwrap --seccomp`).
/// Not a pipe: bwrap reads to end-of-file, which a pipe would not give while another
/// child forked by the server meanwhile still held its write end.
pub(super) fn memfd_with(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    use std::os::fd::FromRawFd;
    let fd = unsafe { libc::memfd_create(c"openloop-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

type Started = (Option<Pidfd>, watch::Receiver<Option<String>>, i32, OwnedFd);

pub(super) async fn spawn(
    _config: &SandboxConfig,
    spec: &DevboxSpec,
    dir: &Path,
    cgroup: &Cgroup,
) -> Result<Started, SandboxError> {
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io(std::io::Error::last_os_error()));
    }
    let (info_r, info_w) = (fds[0], fds[1]);
    // The agent's control socket (fd 3 inside) and the seccomp program (fd 5 for bwrap).
    let (control, agent_end) = openloop_agent_proto::fdpass::control_pair()?;
    let seccomp = memfd_with(seccomp_program())?;
    let (agent_fd, seccomp_fd) = (agent_end.as_raw_fd(), seccomp.as_raw_fd());
    let mut cmd = tokio::process::Command::new("bwrap");
    // bwrap itself is the sandbox's first process: it sees nothing of the server's environment.
    cmd.env_clear();
    // A build, a root devbox or one with sudo enters the user namespace made for it (fd 6),
    // as its root, keeping the capabilities root has there; a devbox gets a namespace of its
    // own mapping `user`.
    let root_mode = spec.root || spec.sudo;
    let userns =
        match root_mode {
            true => Some(crate::build::build_namespace().map_err(|e| {
                SandboxError::Start(format!("making the build's user namespace: {e}"))
            })?),
            false => None,
        };
    let userns_fd = userns.as_ref().map(|u| u.as_raw_fd());
    let uid = match root_mode {
        true => "0".to_string(),
        false => SANDBOX_UID.to_string(),
    };
    match root_mode {
        true => cmd.args([
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--userns",
            "6",
        ]),
        false => cmd.args(["--unshare-all", "--unshare-user"]),
    };
    let (home, caps): (&str, &[&str]) = match (spec.root, spec.sudo) {
        (true, _) => ("/root", crate::build::BUILD_CAPS),
        (false, true) => ("/home/user", crate::build::BUILD_CAPS),
        (false, false) => ("/home/user", &[]),
    };
    cmd.args(["--uid", &uid, "--gid", &uid, "--hostname", "devbox"])
        .arg("--bind")
        .arg(dir.join("root"))
        .arg("/")
        .args(["--proc", "/proc", "--dev", "/dev"])
        .args(["--die-with-parent", "--new-session", "--cap-drop", "ALL"])
        .args(caps.iter().flat_map(|c| ["--cap-add", c]))
        // No user namespace can be made inside (and the seccomp filter refuses them too; bwrap
        // offers this only for namespaces it makes, not a build's, where the filter alone does).
        .args((!root_mode).then_some("--disable-userns"))
        .args(["--chdir", home, "--clearenv"])
        .args([
            "--setenv",
            "HOME",
            home,
            "--setenv",
            "PATH",
            "/usr/bin:/bin",
        ])
        .args(["--info-fd", "4", "--seccomp", "5"])
        .args(["--", AGENT_PATH, "--control-fd", "3"])
        .args(spec.sudo.then_some("--as-user"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let procs: Vec<CString> = cgroup.procs_files();
    let host_uid = match root_mode {
        true => crate::build::BUILD_HOST_UID,
        false => SANDBOX_HOST_UID,
    };
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on the new descriptors.
            for (from, to) in [(agent_fd, 3), (info_w, 4), (seccomp_fd, 5)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = userns_fd {
                if libc::dup2(fd, 6) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            cgroup::join_in_child(&procs)?;
            // Drop to the unprivileged host uid before bwrap: the sandbox's user
            // namespace then maps to an account that owns nothing on the host.
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(host_uid) != 0
                || libc::setuid(host_uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // bwrap dies with the thread that starts it (`--die-with-parent`): a lasting one.
    let spawned = crate::lasting::spawn(cmd);
    unsafe {
        libc::close(info_w);
    }
    drop(agent_end);
    drop(seccomp);
    drop(userns);
    let info = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(info_r) };
    let mut child = spawned.map_err(|e| {
        SandboxError::Start(format!(
            "could not run bwrap ({e}); install it with `apt-get install bubblewrap`"
        ))
    })?;
    // Opened before anything waits for the child, so it is bwrap's and nobody else's.
    let process = child.id().and_then(|p| Pidfd::open(p as i32).ok());
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.next_line().await;
    if !matches!(ready, Ok(Some(ref l)) if l == "READY") {
        let _ = child.start_kill();
        let _ = child.wait().await;
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        return Err(SandboxError::Start(format!(
            "the sandbox exited before its agent was ready: {}",
            err.trim()
        )));
    }
    // bwrap reports the pid of the sandbox's first process (in the host's pid namespace).
    let inner_pid = tokio::task::spawn_blocking(move || read_child_pid(info))
        .await
        .ok()
        .flatten()
        .unwrap_or(-1);
    let (tx, rx) = watch::channel(None);
    let id = spec.id.clone();
    tokio::spawn(async move {
        let mut err = String::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_string(&mut err).await;
        let status = child.wait().await;
        let reason = match status {
            Ok(s) => format!("the devbox's sandbox exited ({s})"),
            Err(e) => format!("the devbox's sandbox could not be waited for: {e}"),
        };
        tracing::debug!(devbox = %id, %reason, stderr = %err.trim(), "devbox sandbox ended");
        let _ = tx.send(Some(reason));
    });
    Ok((process, rx, inner_pid, control))
}

pub(super) fn read_child_pid(mut info: std::fs::File) -> Option<i32> {
    use std::io::Read;
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    while !text.ends_with(b"}") && text.len() < 4096 {
        match info.read(&mut byte) {
            Ok(1) => text.push(byte[0]),
            _ => break,
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v["child-pid"].as_i64().map(|p| p as i32)
}

//! A devbox's outbound network: slirp4netns in the devbox's network namespace, with the
//! egress rules.

use super::*;

/// A devbox's outbound network: slirp4netns, and the DNS filter of its policy's hostnames.
#[derive(Debug)]
pub(super) struct Network {
    pub(super) slirp: tokio::process::Child,
    pub(super) names: Option<crate::dns::DnsFilter>,
}

/// Outbound network for the sandbox's network namespace: slirp4netns in user mode, with the
/// host's loopback refused, in its own sandbox and seccomp filter, inside the devbox's cgroup;
/// the egress rules of `policy` installed first.
pub(super) async fn start_network(
    inner_pid: i32,
    cgroup: &Cgroup,
    policy: Option<crate::egress::EgressPolicy>,
) -> Result<Network, SandboxError> {
    let slirp = start_slirp(inner_pid, cgroup, policy.clone()).await?;
    let names =
        tokio::task::spawn_blocking(move || crate::egress::name_filter(inner_pid, policy.as_ref()))
            .await
            .map_err(|e| SandboxError::Start(e.to_string()))?
            .map_err(|e| SandboxError::Start(format!("the devbox's DNS filter: {e}")))?;
    Ok(Network { slirp, names })
}

pub(super) async fn start_slirp(
    inner_pid: i32,
    cgroup: &Cgroup,
    policy: Option<crate::egress::EgressPolicy>,
) -> Result<tokio::process::Child, SandboxError> {
    if inner_pid <= 0 {
        return Err(SandboxError::Start(
            "bwrap did not report the sandbox's pid".into(),
        ));
    }
    // The egress rules are in the namespace before it has any way out.
    tokio::task::spawn_blocking(move || crate::egress::apply_rules(inner_pid, policy.as_ref()))
        .await
        .map_err(|e| SandboxError::Start(e.to_string()))?
        .map_err(|e| SandboxError::Start(format!("the devbox's egress rules: {e}")))?;
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io(std::io::Error::last_os_error()));
    }
    let (ready_r, ready_w) = (fds[0], fds[1]);
    let userns = owning_userns(inner_pid).map_err(|e| {
        SandboxError::Start(format!("cannot open the sandbox's network namespace: {e}"))
    })?;
    let userns_fd = std::os::fd::AsRawFd::as_raw_fd(&userns);
    // bwrap nests a second user namespace; the network namespace belongs to the outer one.
    let mut cmd =
        tokio::process::Command::from(crate::egress::slirp_command(inner_pid, "/proc/self/fd/4"));
    cmd.kill_on_drop(true);
    let procs = cgroup.procs_files();
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(ready_w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(userns_fd, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            cgroup::join_in_child(&procs)?;
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(userns);
    unsafe {
        libc::close(ready_w);
    }
    let ready = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(ready_r) };
    let mut child = spawned.map_err(|e| {
        SandboxError::Start(format!(
            "could not run slirp4netns ({e}); install it with `apt-get install slirp4netns`"
        ))
    })?;
    let ok = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut b = [0u8; 1];
        matches!((&ready).read(&mut b), Ok(1))
    })
    .await
    .unwrap_or(false);
    if !ok {
        let _ = child.start_kill();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        return Err(SandboxError::Start(format!(
            "the devbox network did not come up (sandbox pid {inner_pid}): {}",
            err.trim()
        )));
    }
    Ok(child)
}

/// The user namespace that owns the network namespace of `pid` (`NS_GET_USERNS`).
pub(super) fn owning_userns(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    let net = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let fd = unsafe { libc::ioctl(net.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

//! Running one command and streaming its output as frames.

use crate::{simple, HOME};
use openloop_agent_proto::{kind, read_frame, write_frame, AgentError, ExitStatus};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

pub fn run(
    stream: &mut UnixStream,
    command: &str,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    attach_stdin: bool,
) -> Result<(), AgentError> {
    let cwd = match cwd {
        Some(c) => crate::resolve(&c)?,
        None => HOME.into(),
    };
    // The command's whole environment: the devbox's own variables, then the request's.
    let mut vars: BTreeMap<String, String> = [
        (
            "PATH",
            "/home/user/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", HOME),
        ("USER", "user"),
        ("LOGNAME", "user"),
        ("SHELL", "/bin/bash"),
        ("LANG", simple::AGENT_LANG),
        ("TERM", "xterm"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    vars.extend(env);
    // A devbox with sudo runs commands as the user from a root agent, whose own checks of
    // what the user may execute would not be the user's: those always go to bash.
    let direct = if crate::as_user() {
        None
    } else {
        simple::direct(command, &vars, &cwd)
    };
    let spawn = |direct: Option<&simple::Direct>| {
        let mut cmd = match direct {
            Some(d) => {
                let mut c = Command::new(&d.program);
                c.arg0(&d.argv[0])
                    .args(&d.argv[1..])
                    .env_clear()
                    .envs(&vars)
                    .envs(d.extra_env.iter().map(|(k, v)| (*k, v.as_str())));
                c
            }
            None => {
                let mut c = Command::new("/bin/bash");
                c.arg("-c").arg(command).env_clear().envs(&vars);
                c
            }
        };
        cmd.current_dir(&cwd)
            .stdin(if attach_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Own process group, so the whole command tree can be killed at once. Set by the
        // spawn itself (posix_spawn's POSIX_SPAWN_SETPGROUP; std restores SIGPIPE's default
        // there too), so the agent does not fork a copy of itself per command: a `pre_exec`
        // closure would.
        cmd.process_group(0);
        // An agent running as root (a devbox with sudo) runs commands as the user: that needs
        // the closure, and so the fork.
        if crate::as_user() {
            unsafe {
                cmd.pre_exec(|| {
                    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                    crate::sudo::become_user()?;
                    Ok(())
                });
            }
        }
        cmd.spawn()
    };
    let mut child = match direct.as_ref().map(|d| spawn(Some(d))) {
        Some(Ok(child)) => child,
        // Not executable as it stands after all (a script without `#!`, a file changed since
        // the check; nothing ran): bash runs it, or says why it cannot.
        _ => spawn(None).map_err(|e| AgentError {
            code: "spawn".into(),
            message: format!("could not start /bin/bash in {}: {e}", cwd.display()),
        })?,
    };
    let pgid = child.id() as i32;
    let out = Arc::new(Mutex::new(stream.try_clone()?));
    // The server ends an execution (kill, shutdown, its own exit) by closing the connection:
    // then the whole command tree is killed. With a stdin pipe it may also send standard input
    // (`DATA`, `END`) and `SIGNAL` frames, which a thread of their own follows; without one it
    // sends nothing, and this thread watches for the hang-up itself (in `pump`, then while it
    // waits for the command), so a command costs no second thread.
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hangup = (!attach_stdin).then(|| stream.as_raw_fd());
    if attach_stdin {
        let watch = stream.try_clone()?;
        let finished = Arc::clone(&finished);
        let stdin = child.stdin.take();
        let watcher = std::thread::Builder::new().spawn(move || {
            follow_server(watch, stdin, pgid);
            if !finished.load(std::sync::atomic::Ordering::SeqCst) {
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
        });
        if let Err(e) = watcher {
            // Nothing could stop the command: it does not run.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = child.wait();
            return Err(AgentError {
                code: "spawn".into(),
                message: format!("the devbox cannot start a thread for the command: {e}"),
            });
        }
    }
    // Both output pipes are followed by this thread (poll), not a thread each: one thread per
    // command besides the one following the server.
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    pump(
        [
            stdout.as_ref().map(|p| (p.as_raw_fd(), kind::STDOUT)),
            stderr.as_ref().map(|p| (p.as_raw_fd(), kind::STDERR)),
        ],
        &out,
        pgid,
        hangup,
    );
    drop((stdout, stderr));
    if let Some(server) = hangup {
        // The command may outlive its pipes (it closed them, or left a child holding them).
        wait_or_hangup(child.id() as i32, server, pgid);
    }
    let status = child.wait()?;
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    let exit = ExitStatus {
        code: status.code(),
        signal: status.signal(),
    };
    let body = serde_json::to_vec(&exit).unwrap_or_default();
    let mut s = out.lock().map_err(|_| AgentError {
        code: "io".into(),
        message: "output lock poisoned".into(),
    })?;
    write_frame(&mut *s, kind::EXIT, &body)?;
    Ok(())
}

/// Whether a `poll` entry for the server's connection says it hung up.
fn hung_up(p: &libc::pollfd) -> bool {
    p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

fn watch_hangup(server: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd: server,
        events: libc::POLLRDHUP,
        revents: 0,
    }
}

/// Send what the command writes to its pipes as frames until both are closed; when the
/// server is gone (its frames fail, or `hangup`, its connection, is closed), kill the command
/// rather than let it run unseen.
fn pump(
    pipes: [Option<(RawFd, u8)>; 2],
    out: &Mutex<UnixStream>,
    pgid: i32,
    hangup: Option<RawFd>,
) {
    let mut open: Vec<(RawFd, u8)> = pipes.into_iter().flatten().collect();
    let mut buf = vec![0u8; 64 * 1024];
    while !open.is_empty() {
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|&(fd, _)| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .chain(hangup.map(watch_hangup))
            .collect();
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        if hangup.is_some() && fds.last().is_some_and(hung_up) {
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            return;
        }
        let mut closed = Vec::new();
        for (i, p) in fds.iter().take(open.len()).enumerate() {
            if p.revents == 0 {
                continue;
            }
            let (fd, k) = open[i];
            let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if n <= 0 {
                closed.push(i);
                continue;
            }
            let sent = out
                .lock()
                .map(|mut s| write_frame(&mut *s, k, &buf[..n as usize]).is_ok())
                .unwrap_or(false);
            if !sent {
                // The server went away: stop the command rather than run unseen.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                return;
            }
        }
        for i in closed.into_iter().rev() {
            open.remove(i);
        }
    }
}

/// Wait until the command `pid` has exited (not reaping it) or the server hangs up on
/// `server`, which kills the command's process group.
fn wait_or_hangup(pid: i32, server: RawFd, pgid: i32) {
    // Without a pidfd (an old kernel, no descriptors left) the exit is looked for every 50 ms.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    let timeout = if pidfd < 0 { 50 } else { -1 };
    loop {
        let mut fds = [
            watch_hangup(server),
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if r < 0 || fds[1].revents != 0 || (pidfd < 0 && exited(pid)) {
            break;
        }
        if hung_up(&fds[0]) {
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            break;
        }
    }
    if pidfd >= 0 {
        unsafe {
            libc::close(pidfd);
        }
    }
}

/// Whether the child `pid` has exited (left to be reaped).
fn exited(pid: i32) -> bool {
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r == 0 && unsafe { info.si_pid() } != 0
}

/// Read the server's frames for a running command until the connection closes: `DATA` goes
/// to the command's standard input, `END` closes it, `SIGNAL` interrupts the process group.
fn follow_server(mut server: UnixStream, mut stdin: Option<std::process::ChildStdin>, pgid: i32) {
    if let Some(pipe) = &stdin {
        // Writes wait in `poll`, which also sees the server hang up.
        unsafe {
            let fd = pipe.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    loop {
        let Ok(Some((k, payload))) = read_frame(&mut server) else {
            return;
        };
        match k {
            kind::DATA => {
                let Some(pipe) = &stdin else { continue };
                match write_all_or_hangup(pipe.as_raw_fd(), server.as_raw_fd(), &payload) {
                    Ok(()) => {}
                    // The command closed its standard input: later input has nowhere to go.
                    Err(Stop::Broken) => stdin = None,
                    Err(Stop::Hangup) => return,
                }
            }
            kind::END => stdin = None,
            kind::SIGNAL if payload == openloop_agent_proto::SIGNAL_INTERRUPT => unsafe {
                libc::kill(-pgid, libc::SIGINT);
            },
            _ => {}
        }
    }
}

enum Stop {
    /// The command's standard input is closed.
    Broken,
    /// The server closed the connection.
    Hangup,
}

/// Write `data` to the non-blocking `pipe`, waiting while it is full, unless the server
/// hangs up meanwhile (the command must not outlive its connection because it stopped reading).
fn write_all_or_hangup(pipe: RawFd, server: RawFd, mut data: &[u8]) -> Result<(), Stop> {
    while !data.is_empty() {
        let n = unsafe { libc::write(pipe, data.as_ptr() as *const libc::c_void, data.len()) };
        if n > 0 {
            data = &data[n as usize..];
            continue;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                let mut fds = [
                    libc::pollfd {
                        fd: pipe,
                        events: libc::POLLOUT,
                        revents: 0,
                    },
                    watch_hangup(server),
                ];
                unsafe {
                    libc::poll(fds.as_mut_ptr(), 2, -1);
                }
                if hung_up(&fds[1]) {
                    return Err(Stop::Hangup);
                }
                if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                    return Err(Stop::Broken);
                }
            }
            _ => return Err(Stop::Broken),
        }
    }
    Ok(())
}

//! `openloop-devbox-agent`: started by the sandbox as the devbox's first process.
//!
//! It inherits the devbox's control socket as a file descriptor (`--control-fd N`), prints
//! `READY` on stdout, and then serves one [`Request`] per connection the server hands it
//! over that socket (`SCM_RIGHTS`), each on its own thread. There is no socket in the
//! devbox's file system for anything inside to replace or reach. It uses only the standard
//! library and libc so it starts in well under a millisecond.

mod exec;
mod files;
mod simple;
mod sudo;
mod tunnel;

use openloop_agent_proto::{fdpass, kind, read_frame, write_frame, AgentError, Request};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

pub const HOME: &str = "/home/user";

/// Whether the agent runs as root and serves every request as the devbox user
/// (`--as-user`: a devbox with `sudo`, see [`sudo`]).
static AS_USER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn as_user() -> bool {
    AS_USER.load(std::sync::atomic::Ordering::Relaxed)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Installed as `/usr/bin/sudo` in the agent's layer.
    let name = args.first().map(|a| a.rsplit('/').next().unwrap_or(a));
    if name == Some("sudo") {
        sudo::client(&args);
    }
    let (fd, as_user) = match args.as_slice() {
        [_, flag, n] if flag == "--control-fd" => (n.parse::<i32>().ok(), false),
        [_, flag, n, user] if flag == "--control-fd" && user == "--as-user" => {
            (n.parse::<i32>().ok(), true)
        }
        _ => (None, false),
    };
    let Some(fd) = fd else {
        eprintln!("usage: openloop-devbox-agent --control-fd N [--as-user]");
        std::process::exit(2);
    };
    if as_user {
        AS_USER.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = sudo::listen() {
            eprintln!("openloop-devbox-agent: cannot offer sudo: {e}");
            std::process::exit(1);
        }
    }
    let control = unsafe { OwnedFd::from_raw_fd(fd) };
    // Commands never inherit the control socket.
    unsafe {
        libc::fcntl(control.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        // Commands must not inherit a blocked SIGPIPE or similar from the sandbox set-up.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    println!("READY");
    let _ = io::stdout().flush();
    loop {
        match fdpass::recv_fd(control.as_raw_fd()) {
            Ok(Some(conn)) => {
                let stream = UnixStream::from(conn);
                // At the devbox's process limit no thread can start: this request is
                // dropped (the server sees its connection end), the agent lives on.
                let _ = std::thread::Builder::new().spawn(move || serve(stream));
            }
            // The server is gone: so is the devbox.
            Ok(None) => std::process::exit(0),
            Err(e) => {
                eprintln!("openloop-devbox-agent: control socket failed: {e}");
                std::process::exit(1);
            }
        }
    }
}

fn serve(mut stream: UnixStream) {
    if as_user() {
        // This thread's file system identity is the devbox user's (its files are the
        // user's, its checks the user's: the file capabilities go with it); a command
        // becomes the user altogether (`exec`).
        unsafe {
            libc::setfsgid(sudo::USER_ID);
            libc::setfsuid(sudo::USER_ID);
        }
    }
    let request = match read_frame(&mut stream) {
        Ok(Some((kind::REQUEST, payload))) => serde_json::from_slice::<Request>(&payload),
        _ => return,
    };
    let result = match request {
        Ok(Request::Exec {
            command,
            env,
            cwd,
            stdin,
        }) => exec::run(&mut stream, &command, env, cwd, stdin),
        Ok(Request::Connect { port }) => tunnel::connect(&mut stream, port),
        Ok(Request::ReadFile { path }) => files::read(&mut stream, &path),
        Ok(Request::WriteFile { path, create_dirs }) => {
            files::write(&mut stream, &path, create_dirs)
        }
        Ok(Request::DeleteFile { path }) => files::delete(&mut stream, &path),
        Ok(Request::Ping) => write_frame(&mut stream, kind::OK, b"{}").map_err(Into::into),
        Err(e) => Err(AgentError {
            code: "invalid".into(),
            message: format!("malformed request: {e}"),
        }),
    };
    if let Err(err) = result {
        let body = serde_json::to_vec(&err).unwrap_or_default();
        let _ = write_frame(&mut stream, kind::ERROR, &body);
    }
}

/// Resolve a devbox path: relative paths start at the user's home directory.
pub fn resolve(path: &str) -> Result<std::path::PathBuf, AgentError> {
    if path.is_empty() || path.contains('\0') {
        return Err(AgentError {
            code: "invalid".into(),
            message: "file path must be a non-empty string without NUL bytes".into(),
        });
    }
    let p = std::path::Path::new(path);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::path::Path::new(HOME).join(p)
    })
}

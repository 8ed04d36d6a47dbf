//! `openloop-devbox-agent`: started by the sandbox as the devbox's first process.
//!
//! It binds a Unix socket (path given as the only argument), prints `READY` on
//! stdout, and then serves one [`Request`] per connection on its own thread. It
//! uses only the standard library so it starts in well under a millisecond.

mod exec;
mod files;

use openloop_agent_proto::{kind, read_frame, write_frame, AgentError, Request};
use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};

pub const HOME: &str = "/home/user";

fn main() {
    let path = match std::env::args().nth(1) {
        Some(p) => p,
        None => {
            eprintln!("usage: openloop-devbox-agent SOCKET_PATH");
            std::process::exit(2);
        }
    };
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("openloop-devbox-agent: cannot bind {path}: {e}");
            std::process::exit(1);
        }
    };
    // Commands must not inherit a blocked SIGPIPE or similar from the sandbox set-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    println!("READY");
    let _ = io::stdout().flush();
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                std::thread::spawn(move || serve(stream));
            }
            Err(e) => eprintln!("openloop-devbox-agent: accept failed: {e}"),
        }
    }
}

fn serve(mut stream: UnixStream) {
    let request = match read_frame(&mut stream) {
        Ok(Some((kind::REQUEST, payload))) => serde_json::from_slice::<Request>(&payload),
        _ => return,
    };
    let result = match request {
        Ok(Request::Exec { command, env, cwd }) => exec::run(&mut stream, &command, env, cwd),
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

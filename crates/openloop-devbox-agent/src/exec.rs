//! Running one command and streaming its output as frames.

use crate::HOME;
use openloop_agent_proto::{kind, write_frame, AgentError, ExitStatus};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

pub fn run(
    stream: &mut UnixStream,
    command: &str,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
) -> Result<(), AgentError> {
    let cwd = match cwd {
        Some(c) => crate::resolve(&c)?,
        None => HOME.into(),
    };
    let mut cmd = Command::new("/bin/bash");
    cmd.arg("-c")
        .arg(command)
        .env_clear()
        .env(
            "PATH",
            "/home/user/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", HOME)
        .env("USER", "user")
        .env("LOGNAME", "user")
        .env("SHELL", "/bin/bash")
        .env("LANG", "C.UTF-8")
        .env("TERM", "xterm")
        .envs(env)
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Own process group, so the whole command tree can be killed at once.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| AgentError {
        code: "spawn".into(),
        message: format!("could not start /bin/bash in {}: {e}", cwd.display()),
    })?;
    let pgid = child.id() as i32;
    let out = Arc::new(Mutex::new(stream.try_clone()?));
    // The server ends an execution (kill, shutdown, its own exit) by closing the connection:
    // then the whole command tree is killed. Nothing else is ever read after the request.
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let mut watch = stream.try_clone()?;
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            let _ = watch.read(&mut byte);
            if !finished.load(std::sync::atomic::Ordering::SeqCst) {
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
        });
    }
    let pumps: Vec<_> = [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            kind::STDOUT,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            kind::STDERR,
        ),
    ]
    .into_iter()
    .filter_map(|(src, k)| src.map(|s| (s, k)))
    .map(|(mut src, k)| {
        let out = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let sent = out
                    .lock()
                    .map(|mut s| write_frame(&mut *s, k, &buf[..n]).is_ok())
                    .unwrap_or(false);
                if !sent {
                    // The server went away: stop the command rather than run unseen.
                    unsafe {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                    break;
                }
            }
        })
    })
    .collect();
    let status = child.wait()?;
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    for p in pumps {
        let _ = p.join();
    }
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

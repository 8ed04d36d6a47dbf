//! `sudo` in a devbox whose server runs with `--devbox-sudo`.
//!
//! Such a devbox's agent runs as root of the devbox's own user namespace (the sandbox of a
//! blueprint build: see `openloop_sandbox::build`) and serves every request of the server as
//! the devbox user (`--as-user`). A set-uid `sudo` cannot work in a devbox (no new
//! privileges, `nosuid`), so `sudo` is this binary under that name: it connects to the
//! agent's socket (in a root-owned directory), hands over its standard input, output and
//! error, and asks for its command to run as root (or `-u user`); the agent runs it and
//! answers its exit status. Any process of the devbox may do so, as Runloop's default user
//! may `sudo` without a password; the command is confined by the devbox's sandbox like
//! everything else in it. When the `sudo` process goes (killed, or its execution killed),
//! the agent kills the command's process group.

use openloop_agent_proto::{fdpass, kind, read_frame, write_frame};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const DIR: &str = "/run/openloop-sudo";
const SOCKET: &str = "/run/openloop-sudo/socket";
/// The devbox user.
pub const USER_ID: u32 = 1000;
/// sudo's `secure_path`.
const SECURE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Drop the calling (forked) process to the devbox user: no groups, its gid and uid, no
/// capabilities left. Only async-signal-safe calls (it runs between fork and exec).
pub fn become_user() -> std::io::Result<()> {
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(USER_ID) != 0
            || libc::setuid(USER_ID) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Listen for `sudo` requests (the agent, as root, at start).
pub fn listen() -> std::io::Result<()> {
    std::fs::create_dir_all(DIR)?;
    std::fs::set_permissions(DIR, std::fs::Permissions::from_mode(0o755))?;
    let _ = std::fs::remove_file(SOCKET);
    let listener = UnixListener::bind(SOCKET)?;
    std::fs::set_permissions(SOCKET, std::fs::Permissions::from_mode(0o666))?;
    std::thread::Builder::new().spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = std::thread::Builder::new().spawn(move || run(conn));
        }
    })?;
    Ok(())
}

/// One `sudo`: its three descriptors, then its request; its command's exit status back.
fn run(mut conn: UnixStream) {
    let mut fds = Vec::new();
    for _ in 0..3 {
        match fdpass::recv_fd(conn.as_raw_fd()) {
            Ok(Some(fd)) => fds.push(fd),
            _ => return,
        }
    }
    let request = match read_frame(&mut conn) {
        Ok(Some((kind::REQUEST, payload))) => serde_json::from_slice::<serde_json::Value>(&payload),
        _ => return,
    };
    let Ok(req) = request else { return };
    let argv: Vec<String> = req["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let env: BTreeMap<String, String> =
        serde_json::from_value(req["env"].clone()).unwrap_or_default();
    let cwd = req["cwd"].as_str().unwrap_or("/").to_string();
    let as_user = req["user"] == "user";
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let mut fds = fds.into_iter();
    let (Some(stdin), Some(stdout), Some(stderr)) = (fds.next(), fds.next(), fds.next()) else {
        return;
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(&env)
        .current_dir(&cwd)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if as_user {
                become_user()?;
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let message = format!("sudo: {program}: {e}");
            let _ = write_frame(&mut conn, kind::ERROR, message.as_bytes());
            return;
        }
    };
    let pgid = child.id() as i32;
    let done = Arc::new(AtomicBool::new(false));
    // The sudo process gone (its connection closed): the command goes too.
    if let Ok(mut watch) = conn.try_clone() {
        let done = done.clone();
        let _ = std::thread::Builder::new().spawn(move || {
            let mut b = [0u8; 1];
            let _ = watch.read(&mut b);
            if !done.load(Ordering::SeqCst) {
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
        });
    }
    let status = child.wait();
    done.store(true, Ordering::SeqCst);
    let code = match status {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(_) => 1,
    };
    let _ = write_frame(&mut conn, kind::OK, code.to_string().as_bytes());
}

fn usage() -> ! {
    eprintln!("usage: sudo [-n] [-E] [-H] [-u root|user] [-i | -s] [--] command [arg ...]");
    std::process::exit(1);
}

/// `sudo …` in the devbox: parse sudo's options, hand the command to the agent, exit with
/// its status.
pub fn client(args: &[String]) -> ! {
    let (mut user, mut keep_env, mut login, mut shell) = ("root".to_string(), false, false, false);
    let mut rest = args.iter().skip(1).peekable();
    while let Some(a) = rest.peek() {
        if !a.starts_with('-') || a.as_str() == "-" {
            break;
        }
        let a = rest.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--" => break,
            "-n" | "--non-interactive" | "-H" | "--set-home" | "-S" | "--stdin" => {}
            "-E" | "--preserve-env" => keep_env = true,
            "-i" | "--login" => login = true,
            "-s" | "--shell" => shell = true,
            "-k" | "-K" | "-v" | "--validate" | "--reset-timestamp" | "--remove-timestamp" => {
                if rest.peek().is_none() {
                    std::process::exit(0);
                }
            }
            "-u" => user = rest.next().cloned().unwrap_or_else(|| usage()),
            "-V" | "--version" => {
                println!("Openloop devbox sudo (through the devbox agent)");
                std::process::exit(0);
            }
            "-h" | "--help" => usage(),
            other => match other
                .strip_prefix("--user=")
                .or_else(|| other.strip_prefix("-u"))
            {
                Some(u) if !u.is_empty() => user = u.to_string(),
                _ => {
                    eprintln!("sudo: unknown option {other}");
                    usage()
                }
            },
        }
    }
    let command: Vec<String> = rest.cloned().collect();
    let target = match user.as_str() {
        "root" | "0" | "#0" => "root",
        "user" | "1000" | "#1000" => "user",
        other => {
            eprintln!("sudo: unknown user {other}");
            std::process::exit(1);
        }
    };
    let home = if target == "root" {
        "/root"
    } else {
        crate::HOME
    };
    let argv: Vec<String> = match (command.is_empty(), login, shell) {
        (true, true, _) => vec!["/bin/bash".into(), "-l".into()],
        (true, false, true) => vec!["/bin/bash".into()],
        (true, false, false) => usage(),
        (false, true, _) => vec!["/bin/bash".into(), "-lc".into(), command.join(" ")],
        (false, false, true) => vec!["/bin/bash".into(), "-c".into(), command.join(" ")],
        (false, false, false) => command.clone(),
    };
    let mut env: BTreeMap<String, String> = match keep_env {
        true => std::env::vars().collect(),
        false => ["TERM", "LANG", "LC_ALL", "COLORTERM", "DISPLAY"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect(),
    };
    if !keep_env {
        env.insert("PATH".into(), SECURE_PATH.into());
        env.insert("HOME".into(), home.into());
    }
    for (k, v) in [
        ("USER", target),
        ("LOGNAME", target),
        ("SHELL", "/bin/bash"),
        ("SUDO_USER", "user"),
        ("SUDO_UID", "1000"),
        ("SUDO_GID", "1000"),
    ] {
        env.insert(k.into(), v.into());
    }
    env.insert("SUDO_COMMAND".into(), command.join(" "));
    let cwd = match login {
        true => home.to_string(),
        false => std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into()),
    };
    let mut conn = match UnixStream::connect(SOCKET) {
        Ok(c) => c,
        Err(_) => {
            eprintln!("sudo: not available in this devbox (the server runs without --devbox-sudo)");
            std::process::exit(1);
        }
    };
    for fd in 0..3 {
        if fdpass::send_fd(conn.as_raw_fd(), fd, 0).is_err() {
            eprintln!("sudo: the devbox agent did not answer");
            std::process::exit(1);
        }
    }
    let request = serde_json::json!({"argv": argv, "env": env, "cwd": cwd, "user": target});
    if write_frame(&mut conn, kind::REQUEST, request.to_string().as_bytes()).is_err() {
        eprintln!("sudo: the devbox agent did not answer");
        std::process::exit(1);
    }
    match read_frame(&mut conn) {
        Ok(Some((kind::OK, payload))) => {
            let code = String::from_utf8_lossy(&payload)
                .parse::<i32>()
                .unwrap_or(1);
            std::process::exit(code)
        }
        Ok(Some((_, payload))) => {
            eprintln!("{}", String::from_utf8_lossy(&payload));
            std::process::exit(1)
        }
        _ => {
            eprintln!("sudo: the devbox agent did not answer");
            std::process::exit(1)
        }
    }
}

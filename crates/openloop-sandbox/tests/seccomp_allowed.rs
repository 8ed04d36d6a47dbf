//! What the seccomp filters leave alone, against the real kernel: ordinary work (fork,
//! threads, exec, files, sockets) under both profiles, and a filter binds only the process
//! that installs it. Each case runs in a forked child (`common`).

mod common;

use common::{errno, in_child, outcome, unshare, wait, Case, UNEXPECTED};
use openloop_sandbox::seccomp::{Filter, Profile};
use std::io::{Read, Seek, Write};
use std::process::Command;

#[test]
fn ordinary_work_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    let cases: Vec<Case<Box<dyn Fn() -> i32>>> = vec![
        (
            "fork",
            Box::new(|| {
                // SAFETY: the child exits at once.
                match unsafe { libc::fork() } {
                    0 => unsafe { libc::_exit(7) },
                    -1 => errno(),
                    pid if wait(pid) == 7 => 0,
                    _ => UNEXPECTED,
                }
            }),
        ),
        (
            "thread",
            Box::new(|| match std::thread::spawn(|| 5).join() {
                Ok(5) => 0,
                _ => UNEXPECTED,
            }),
        ),
        (
            "Command /bin/true",
            Box::new(|| match Command::new("/bin/true").status() {
                Ok(s) if s.success() => 0,
                Ok(_) => UNEXPECTED,
                Err(e) => e.raw_os_error().unwrap_or(UNEXPECTED),
            }),
        ),
        (
            "execve /bin/true",
            Box::new(|| {
                // SAFETY: the child only calls execve and _exit.
                match unsafe { libc::fork() } {
                    0 => unsafe {
                        let argv = [c"true".as_ptr(), std::ptr::null()];
                        let envp = [std::ptr::null()];
                        libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr());
                        libc::_exit(errno())
                    },
                    -1 => errno(),
                    pid => wait(pid),
                }
            }),
        ),
        (
            "file I/O",
            Box::new(|| {
                let io = || -> std::io::Result<bool> {
                    let mut f = std::fs::File::options()
                        .create(true)
                        .truncate(true)
                        .read(true)
                        .write(true)
                        .open(&path)?;
                    f.write_all(b"hello")?;
                    f.rewind()?;
                    let mut s = String::new();
                    f.read_to_string(&mut s)?;
                    std::fs::remove_file(&path)?;
                    Ok(s == "hello")
                };
                match io() {
                    Ok(true) => 0,
                    Ok(false) => UNEXPECTED,
                    Err(e) => e.raw_os_error().unwrap_or(UNEXPECTED),
                }
            }),
        ),
        (
            "TCP socket",
            Box::new(|| match std::net::TcpListener::bind("127.0.0.1:0") {
                Ok(_) => 0,
                Err(e) => e.raw_os_error().unwrap_or(UNEXPECTED),
            }),
        ),
        (
            "personality query",
            Box::new(|| {
                // SAFETY: 0xffffffff only reads the personality.
                let p = unsafe { libc::personality(0xffff_ffff) };
                if p == -1 {
                    errno()
                } else {
                    0
                }
            }),
        ),
        (
            "ioctl(TIOCGWINSZ)",
            Box::new(|| {
                let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
                // SAFETY: TIOCGWINSZ writes a winsize; fd 999 is not open (EBADF).
                match outcome(unsafe { libc::ioctl(999, libc::TIOCGWINSZ, &mut ws) } as _) {
                    libc::EBADF => 0,
                    other => other,
                }
            }),
        ),
    ];
    for profile in [Profile::Sandbox, Profile::WarmHost] {
        let filter = Filter::new(profile);
        for (name, call) in &cases {
            assert_eq!(in_child(Some(&filter), call), 0, "{profile:?} {name}");
        }
    }
}

#[test]
fn install_takes_effect_for_the_caller_only() {
    // The parent test process is untouched after children installed filters.
    assert_eq!(in_child(Some(&Filter::new(Profile::Sandbox)), || 0), 0);
    assert_eq!(in_child(None, || unshare(libc::CLONE_NEWUSER)), 0);
}

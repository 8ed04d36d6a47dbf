//! The seccomp filters against the real kernel: each case forks a child, installs a filter in
//! it, makes the syscall and reports through its exit code (an errno, or 0 for success). The
//! filter applies only to that child, so the test process itself stays unfiltered.
//!
//! The syscalls that should be refused are made with arguments that would be harmless (and
//! answer something other than `EPERM`) even if the filter let them through: this runs as root.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use openloop_sandbox::seccomp::{Filter, Profile};

/// Exit codes a child uses besides errno values.
const INSTALL_FAILED: i32 = 200;
const UNEXPECTED: i32 = 201;
const PANICKED: i32 = 202;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// 0 when a libc call succeeded, its errno when it returned -1.
fn outcome(rc: libc::c_long) -> i32 {
    if rc == -1 {
        errno()
    } else {
        0
    }
}

/// Wait for `pid`; its exit code, or 1000 + the signal that killed it.
fn wait(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: plain syscall on our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc == -1 && errno() == libc::EINTR {
            continue;
        }
        return UNEXPECTED;
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1000 + libc::WTERMSIG(status)
    }
}

/// Run `f` in a forked child under `filter` (none: unfiltered) and return its exit code.
fn in_child(filter: Option<&Filter>, f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only makes syscalls and allocates (glibc keeps malloc usable after
    // fork), never touches the harness's locks (no printing), and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match filter.map(Filter::install) {
            Some(Err(_)) => INSTALL_FAILED,
            _ => std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(PANICKED),
        };
        // SAFETY: ends the child without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(code) }
    }
    wait(pid)
}

/// A clone-like call: in the new child (rc 0) leave at once; in the caller reap it.
fn reap_clone(rc: libc::c_long) -> i32 {
    match rc {
        0 => unsafe { libc::_exit(0) },
        -1 => errno(),
        pid => {
            if wait(pid as libc::pid_t) == 0 {
                0
            } else {
                UNEXPECTED
            }
        }
    }
}

fn unshare(flags: libc::c_int) -> i32 {
    // SAFETY: plain syscall.
    outcome(unsafe { libc::unshare(flags) } as libc::c_long)
}

fn clone_raw(flags: libc::c_int) -> i32 {
    // SAFETY: fork-like clone (no new stack): the child shares nothing and exits at once.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    reap_clone(rc)
}

fn clone3() -> i32 {
    // struct clone_args, version 0: flags, pidfd, child_tid, parent_tid, exit_signal, stack,
    // stack_size, tls.
    let args: [u64; 8] = [0, 0, 0, 0, libc::SIGCHLD as u64, 0, 0, 0];
    // SAFETY: fork-like clone3; the child exits at once.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args.as_ptr(),
            std::mem::size_of_val(&args),
        )
    };
    reap_clone(rc)
}

fn mount_tmpfs(target: &str, flags: libc::c_ulong) -> i32 {
    let target = std::ffi::CString::new(target).unwrap_or_default();
    // SAFETY: valid C strings.
    outcome(unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            std::ptr::null(),
        )
    } as libc::c_long)
}

/// Syscalls every profile refuses, each with arguments that would fail harmlessly if allowed.
/// A named syscall attempt, run in a child: 0 or the errno.
type Case<F> = (&'static str, F);

fn refused() -> Vec<Case<fn() -> i32>> {
    // SAFETY (all): plain syscalls with invalid or inert arguments.
    vec![
        ("keyctl", || unsafe {
            // KEYCTL_GET_KEYRING_ID of the session keyring, without creating it.
            outcome(libc::syscall(libc::SYS_keyctl, 0, -3 as libc::c_long, 0))
        }),
        ("bpf", || unsafe {
            // An unknown command.
            outcome(libc::syscall(libc::SYS_bpf, 0xffff, 0, 0))
        }),
        ("perf_event_open", || unsafe {
            outcome(libc::syscall(libc::SYS_perf_event_open, 0, 0, -1, -1, 0))
        }),
        ("userfaultfd", || unsafe {
            // Unknown flags.
            outcome(libc::syscall(libc::SYS_userfaultfd, 0x4000_0000))
        }),
        ("io_uring_setup", || unsafe {
            outcome(libc::syscall(libc::SYS_io_uring_setup, 0, 0))
        }),
        ("kexec_load", || unsafe {
            // Unknown flags: EINVAL after the permission check.
            outcome(libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0x100))
        }),
        ("init_module", || unsafe {
            outcome(libc::syscall(libc::SYS_init_module, 0, 0, c"".as_ptr()))
        }),
        ("clock_settime", || unsafe {
            // CLOCK_MONOTONIC cannot be set: EINVAL.
            let ts = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            outcome(libc::clock_settime(libc::CLOCK_MONOTONIC, &ts) as libc::c_long)
        }),
        ("mount", || mount_tmpfs("/nonexistent-openloop-seccomp", 0)),
        ("umount2", || unsafe {
            outcome(libc::umount2(c"/nonexistent-openloop-seccomp".as_ptr(), 0) as libc::c_long)
        }),
        ("setns", || unsafe {
            outcome(libc::setns(-1, 0) as libc::c_long)
        }),
        ("open_tree", || unsafe {
            outcome(libc::syscall(
                libc::SYS_open_tree,
                -1,
                c"/nonexistent".as_ptr(),
                0,
            ))
        }),
        ("personality(READ_IMPLIES_EXEC)", || unsafe {
            outcome(libc::personality(0x0040_0000) as libc::c_long)
        }),
        ("ioctl(TIOCSTI)", || unsafe {
            // On a closed fd: EBADF if allowed.
            let c: libc::c_char = 0;
            outcome(libc::ioctl(999, libc::TIOCSTI, &c) as libc::c_long)
        }),
        ("socket(AF_VSOCK)", || unsafe {
            outcome(libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) as libc::c_long)
        }),
    ]
}

#[test]
fn unshare_user_is_refused_under_both_profiles() {
    // Without a filter it works, so the assertions below can fail.
    assert_eq!(in_child(None, || unshare(libc::CLONE_NEWUSER)), 0);
    for profile in [Profile::Sandbox, Profile::WarmHost] {
        let filter = Filter::new(profile);
        assert_eq!(
            in_child(Some(&filter), || unshare(libc::CLONE_NEWUSER)),
            libc::EPERM,
            "{profile:?}"
        );
    }
}

#[test]
fn clone_with_namespace_flags_is_refused_and_clone3_falls_back() {
    assert_eq!(in_child(None, || clone_raw(libc::CLONE_NEWUSER)), 0);
    assert_eq!(in_child(None, clone3), 0);
    for profile in [Profile::Sandbox, Profile::WarmHost] {
        let filter = Filter::new(profile);
        for ns in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWCGROUP,
        ] {
            assert_eq!(
                in_child(Some(&filter), || clone_raw(ns)),
                libc::EPERM,
                "{profile:?} clone {ns:#x}"
            );
        }
        assert_eq!(in_child(Some(&filter), || clone_raw(0)), 0, "{profile:?}");
        assert_eq!(in_child(Some(&filter), clone3), libc::ENOSYS, "{profile:?}");
    }
}

#[test]
fn dangerous_syscalls_are_refused() {
    // Unfiltered they fail some other way (or succeed): the EPERM comes from the filter.
    for (name, call) in refused() {
        let unfiltered = in_child(None, call);
        assert_ne!(unfiltered, libc::EPERM, "{name} without a filter");
        assert!(unfiltered < 200, "{name} without a filter: {unfiltered}");
    }
    for profile in [Profile::Sandbox, Profile::WarmHost] {
        let filter = Filter::new(profile);
        for (name, call) in refused() {
            assert_eq!(
                in_child(Some(&filter), call),
                libc::EPERM,
                "{profile:?} {name}"
            );
        }
    }
}

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
fn warm_host_may_unshare_exactly_its_namespaces() {
    let warm = Filter::new(Profile::WarmHost);
    let sandbox = Filter::new(Profile::Sandbox);
    let exact = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID;
    assert_eq!(in_child(Some(&warm), || unshare(exact)), 0);
    assert_eq!(in_child(Some(&sandbox), || unshare(exact)), libc::EPERM);
    for flags in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWUSER | libc::CLONE_NEWNS,
        exact | libc::CLONE_NEWNET,
        exact | libc::CLONE_NEWIPC,
    ] {
        assert_eq!(
            in_child(Some(&warm), || unshare(flags)),
            libc::EPERM,
            "unshare {flags:#x}"
        );
    }
    // A high word on the flags is refused rather than truncated away.
    assert_eq!(
        in_child(Some(&warm), || {
            // SAFETY: plain syscall.
            outcome(unsafe { libc::syscall(libc::SYS_unshare, (exact as u64) | 1 << 32) })
        }),
        libc::EPERM
    );
}

/// What the warm host does for each run: unshare, fork the run as pid 1 of the new pid
/// namespace, mount its own /proc and /tmp, then stack the `Sandbox` filter.
#[test]
fn warm_host_sets_up_a_run_then_stacks_the_sandbox_filter() {
    let warm = Filter::new(Profile::WarmHost);
    let sandbox = Filter::new(Profile::Sandbox);
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let code = in_child(Some(&warm), || {
        if unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID) != 0 {
            return 10;
        }
        // SAFETY: the grandchild reports through its exit code and `_exit`s.
        match unsafe { libc::fork() } {
            0 => {}
            -1 => return 11,
            pid => return wait(pid),
        }
        let run = || -> i32 {
            // SAFETY: plain syscalls.
            if unsafe { libc::getpid() } != 1 {
                return 20;
            }
            let proc_rc = unsafe {
                libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    nosuid_nodev | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
            };
            if proc_rc != 0 {
                return 21;
            }
            match std::fs::read_link("/proc/self") {
                Ok(p) if p.as_os_str() == "1" => {}
                _ => return 22,
            }
            if mount_tmpfs("/tmp", nosuid_nodev) != 0 {
                return 23;
            }
            // Anything else is still refused.
            if mount_tmpfs("/tmp", nosuid_nodev | libc::MS_REMOUNT) != libc::EPERM {
                return 24;
            }
            if mount_tmpfs("/tmp", libc::MS_BIND) != libc::EPERM {
                return 25;
            }
            // SAFETY: plain syscall.
            if outcome(unsafe { libc::umount2(c"/tmp".as_ptr(), libc::MNT_DETACH) } as _)
                != libc::EPERM
            {
                return 26;
            }
            // The run's own filter takes mounting and namespaces away entirely.
            if sandbox.install().is_err() {
                return 27;
            }
            if mount_tmpfs("/tmp", nosuid_nodev) != libc::EPERM {
                return 28;
            }
            if unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID) != libc::EPERM
            {
                return 29;
            }
            0
        };
        // SAFETY: leaves the grandchild.
        unsafe { libc::_exit(run()) }
    });
    assert_eq!(code, 0);
}

#[test]
fn install_takes_effect_for_the_caller_only() {
    // The parent test process is untouched after children installed filters.
    assert_eq!(in_child(Some(&Filter::new(Profile::Sandbox)), || 0), 0);
    assert_eq!(in_child(None, || unshare(libc::CLONE_NEWUSER)), 0);
}

/// The program in a memfd at offset 0, as bwrap reads it.
fn memfd_with(bytes: &[u8]) -> std::fs::File {
    // SAFETY: memfd_create with a valid name; the fd is owned by the returned File.
    let fd = unsafe { libc::memfd_create(c"seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.write_all(bytes).unwrap();
    file.rewind().unwrap();
    file
}

/// `bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev [--seccomp 3] -- cmd...`, the
/// program passed as fd 3. (A fresh /proc: `unshare -Ur` writes its uid map there, which the
/// read-only bind of the host's would refuse.)
fn bwrap(filter: Option<&Filter>, cmd: &[&str]) -> std::process::Output {
    let mut command = Command::new("bwrap");
    command.args([
        "--unshare-all",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]);
    let memfd = filter.map(|f| memfd_with(&f.to_bytes()));
    if let Some(memfd) = &memfd {
        command.args(["--seccomp", "3"]);
        let fd = memfd.as_raw_fd();
        // SAFETY: dup2 and fcntl are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                if fd == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    if flags == -1 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("bwrap runs")
}

#[test]
fn bwrap_loads_the_bytes() {
    let filter = Filter::new(Profile::Sandbox);
    let bytes = filter.to_bytes();
    assert_eq!(bytes.len() % 8, 0);
    assert!(bytes.len() / 8 < 4096);

    let plain = bwrap(None, &["unshare", "-Ur", "true"]);
    assert!(plain.status.success(), "without the filter: {plain:?}");

    let ok = bwrap(Some(&filter), &["true"]);
    assert!(ok.status.success(), "{ok:?}");
    let sh = bwrap(Some(&filter), &["sh", "-c", "echo hi | cat"]);
    assert!(sh.status.success(), "{sh:?}");
    assert_eq!(sh.stdout, b"hi\n");

    let refused = bwrap(Some(&filter), &["unshare", "-Ur", "true"]);
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
}

const PYTHON_LOADER: &str = r#"
import ctypes, errno, os, subprocess, sys, threading

libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[2] == "install":
    data = open(sys.argv[1], "rb").read()

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(data, len(data))
    prog = SockFprog(len(data) // 8, ctypes.addressof(buf))
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        sys.exit("PR_SET_NO_NEW_PRIVS: " + os.strerror(ctypes.get_errno()))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        sys.exit("PR_SET_SECCOMP: " + os.strerror(ctypes.get_errno()))

# Before any thread: unshare(CLONE_NEWUSER) needs a single-threaded process, and a joined
# thread may not have left the kernel's thread group yet.
rc = libc.unshare(0x10000000)  # CLONE_NEWUSER
print(rc, errno.errorcode.get(ctypes.get_errno(), "0") if rc else "ok")
subprocess.run(["/bin/true"], check=True)
t = threading.Thread(target=lambda: None)
t.start()
t.join()
"#;

#[test]
fn python_loads_the_bytes_with_ctypes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("filter.bpf");
    std::fs::write(&path, Filter::new(Profile::Sandbox).to_bytes()).unwrap();
    let python = |mode: &str| {
        let out = Command::new("python3")
            .args(["-c", PYTHON_LOADER])
            .arg(&path)
            .arg(mode)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{mode}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(python("none"), "0 ok");
    assert_eq!(python("install"), "-1 EPERM");
}

/// `getpid` through the i386 ABI (`int 0x80`, number 20): the pid, or a negative errno.
#[cfg(target_arch = "x86_64")]
fn getpid_i386() -> i32 {
    let mut rax: i64 = 20;
    // SAFETY: `int 0x80` with eax = 20 (getpid) takes no arguments and only writes eax; the
    // compat entry also preserves the other registers except r8-r11, marked clobbered.
    unsafe {
        std::arch::asm!(
            "int 0x80",
            inout("rax") rax,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    if rax > 0 {
        0
    } else {
        UNEXPECTED
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn foreign_abis_are_stopped() {
    const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
    let x32_getpid = || {
        // SAFETY: getpid through the x32 numbering.
        outcome(unsafe { libc::syscall(libc::SYS_getpid | X32_SYSCALL_BIT) })
    };
    let filter = Filter::new(Profile::Sandbox);
    // An x32 number is refused by the filter (unfiltered, a kernel without x32 says ENOSYS).
    assert_ne!(in_child(None, x32_getpid), libc::EPERM);
    assert_eq!(in_child(Some(&filter), x32_getpid), libc::EPERM);
    // The i386 ABI kills the process with SIGSYS, where the kernel offers that ABI at all
    // (without IA32 emulation `int 0x80` faults before seccomp sees it).
    let unfiltered = in_child(None, getpid_i386);
    if unfiltered == 0 {
        let killed = || {
            // SIGSYS dumps core by default: not into the source tree.
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: plain syscall.
            unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
            getpid_i386()
        };
        assert_eq!(in_child(Some(&filter), killed), 1000 + libc::SIGSYS);
    } else {
        eprintln!("no i386 syscall ABI here ({unfiltered}); skipping that half");
    }
}

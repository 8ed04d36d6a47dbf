//! The `seccomp_*` tests' harness: each case forks a child, installs a filter in it, makes
//! the syscall and reports through its exit code (an errno, or 0 for success). The filter
//! applies only to that child, so the test process itself stays unfiltered.
#![allow(dead_code)]

use openloop_sandbox::seccomp::Filter;

/// Exit codes a child uses besides errno values.
pub const INSTALL_FAILED: i32 = 200;
pub const UNEXPECTED: i32 = 201;
pub const PANICKED: i32 = 202;

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// 0 when a libc call succeeded, its errno when it returned -1.
pub fn outcome(rc: libc::c_long) -> i32 {
    if rc == -1 {
        errno()
    } else {
        0
    }
}

/// Wait for `pid`; its exit code, or 1000 + the signal that killed it.
pub fn wait(pid: libc::pid_t) -> i32 {
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
pub fn in_child(filter: Option<&Filter>, f: impl FnOnce() -> i32) -> i32 {
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
pub fn reap_clone(rc: libc::c_long) -> i32 {
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

pub fn unshare(flags: libc::c_int) -> i32 {
    // SAFETY: plain syscall.
    outcome(unsafe { libc::unshare(flags) } as libc::c_long)
}

pub fn clone_raw(flags: libc::c_int) -> i32 {
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

pub fn clone3() -> i32 {
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

pub fn mount_tmpfs(target: &str, flags: libc::c_ulong) -> i32 {
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

/// A named syscall attempt, run in a child: 0 or the errno.
pub type Case<F> = (&'static str, F);

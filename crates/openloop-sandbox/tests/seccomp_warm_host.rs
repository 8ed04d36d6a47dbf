//! The warm host's seccomp profile, against the real kernel: it may unshare exactly its
//! namespaces and set up a run (its pid 1, `/proc`, `/tmp`), then stack the `Sandbox` filter.
//! Each case runs in a forked child (`common`).

mod common;

use common::{clone_raw, in_child, mount_tmpfs, outcome, unshare, wait};
use openloop_sandbox::seccomp::{Filter, Profile};

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

#[test]
fn warm_host_may_fork_into_exactly_its_namespaces() {
    let warm = Filter::new(Profile::WarmHost);
    let sandbox = Filter::new(Profile::Sandbox);
    let exact = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID;
    assert_eq!(in_child(Some(&warm), || clone_raw(exact)), 0);
    assert_eq!(in_child(Some(&sandbox), || clone_raw(exact)), libc::EPERM);
    for flags in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWUSER | libc::CLONE_NEWNS,
        exact | libc::CLONE_NEWNET,
        exact | libc::CLONE_NEWIPC,
    ] {
        assert_eq!(
            in_child(Some(&warm), || clone_raw(flags)),
            libc::EPERM,
            "clone {flags:#x}"
        );
    }
    // A plain fork stays allowed.
    assert_eq!(in_child(Some(&warm), || clone_raw(0)), 0);
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

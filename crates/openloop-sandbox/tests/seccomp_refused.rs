//! What the seccomp filters refuse, against the real kernel: namespaces through `unshare`
//! and `clone` (`clone3` falls back), dangerous syscalls, foreign syscall ABIs. Each case runs
//! in a forked child (`common`).
//!
//! The syscalls that should be refused are made with arguments that would be harmless (and
//! answer something other than `EPERM`) even if the filter let them through: this runs as root.

mod common;

use common::{clone3, clone_raw, in_child, mount_tmpfs, outcome, unshare, Case, UNEXPECTED};
use openloop_sandbox::seccomp::{Filter, Profile};

/// Syscalls every profile refuses, each with arguments that would fail harmlessly if allowed.
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

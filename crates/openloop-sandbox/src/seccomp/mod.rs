//! Seccomp filters: the syscalls no sandboxed process may make.
//!
//! Every sandbox (devboxes, builds, a deployment's warm Python process and each run forked from
//! it) loads one of these classic-BPF programs before any untrusted code runs. Namespaces, an
//! unprivileged uid and `--cap-drop ALL` already keep most of the kernel out of reach; the filter
//! closes what those leave open, chiefly the attack surface an unprivileged process can still
//! reach on its own.
//!
//! # Policy
//!
//! Everything is allowed except the following, which fail with `EPERM` (what Docker's default
//! profile answers, so software that copes with Docker copes with this):
//!
//! - **Namespaces**: `unshare`, `setns`, and `clone` with any `CLONE_NEW*` flag. Creating a user
//!   namespace is how an unprivileged process gains a full set of capabilities over fresh
//!   namespaces, which opens large parts of the kernel (netfilter, mounting filesystems, ...) to
//!   it; most container escapes of recent years started there. Docker refuses these the same way.
//! - **Mounting**: `mount`, `umount2`, `pivot_root` and the new mount API (`fsopen`, `fsconfig`,
//!   `fsmount`, `fspick`, `move_mount`, `open_tree`, `open_tree_attr`, `mount_setattr`).
//! - **Kernel facilities that are not namespaced or are a frequent source of bugs**: the keyring
//!   (`keyctl`, `add_key`, `request_key`), `bpf`, `perf_event_open`, `userfaultfd` (a classic
//!   exploit helper), `io_uring_*` (Docker blocks it too since 25.0), `lookup_dcookie`,
//!   `fanotify_init`, `open_by_handle_at` / `name_to_handle_at` (the "shocker" escape).
//! - **Host administration**: kernel modules and `kexec`, the clock (`clock_settime`,
//!   `clock_adjtime`, `settimeofday`), `acct`, `swapon`/`swapoff`, `reboot`, `syslog`,
//!   `quotactl`/`quotactl_fd`, `vhangup`, NUMA policy (`mbind`, `set_mempolicy`,
//!   `set_mempolicy_home_node`, `migrate_pages`, `move_pages`), and obsolete calls (`uselib`,
//!   `ustat`, `sysfs`, `_sysctl`, `nfsservctl`, `iopl`, `ioperm`, and on x86_64 the numbers of
//!   `create_module`, `get_kernel_syms`, `query_module`).
//! - **Arguments**: `personality` except Docker's values (`0`, `PER_LINUX32`, `UNAME26`,
//!   `UNAME26|PER_LINUX32`, `0xffffffff` to query); `ioctl(_, TIOCSTI)` (pushing input into a
//!   terminal) and `ioctl(_, TIOCLINUX)`; `socket(AF_VSOCK, ..)` (the host's hypervisor sockets).
//! - **Architecture**: a syscall made through any ABI but the native one (e.g. `int 0x80` on
//!   x86_64) kills the process, and x32 syscalls (number with bit 30 set) fail: a filter keyed on
//!   syscall numbers only means something for the ABI it was written for.
//!
//! `clone3` is the exception to `EPERM`: it answers `ENOSYS`. Its flags live in a struct in the
//! caller's memory, which seccomp cannot read, so it cannot be filtered by flag; `ENOSYS` makes
//! glibc (`pthread_create`, `posix_spawn`, `fork`) fall back to `clone`, whose flags are a
//! register the filter can check. This is what Docker does too.
//!
//! `ptrace`, `process_vm_readv`/`writev`, `kcmp` and `chroot` stay allowed: processes of different
//! tenants are kept apart by pid namespaces and `PR_SET_DUMPABLE`, and `chroot` needs
//! `CAP_SYS_CHROOT`, which no sandbox has.
//!
//! [`Profile::WarmHost`] differs only in letting `unshare` through with exactly
//! `CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID`, `clone` with exactly those flags and `SIGCHLD`
//! (the same namespaces, entered by the child of a fork), and `mount` with mount flags exactly
//! `MS_NOSUID|MS_NODEV|MS_NOEXEC` or `MS_NOSUID|MS_NODEV` (`MS_BIND`, `MS_MOVE`, `MS_REMOUNT`, and
//! propagation changes are refused): the warm process uses them to give each run its own pid
//! namespace, `/proc` and `/tmp`, and the run then stacks the [`Profile::Sandbox`] filter before
//! any run code executes. Stacked filters all apply, so the run ends up with the stricter one.
//!
//! # Program
//!
//! The program is written by hand as a flat list: check the architecture, load the syscall
//! number, then one `jeq` per denied call (each followed by its `ret`), and for the calls whose
//! arguments matter a block guarded by a `jeq` on the number that loads the argument and always
//! returns. Only the syscall number and the architecture are read outside those blocks, so the
//! kernel's per-syscall action cache (Linux 5.11+) recognises every other syscall as always
//! allowed and skips running the program for it.

use std::io;

use libc::sock_filter;

/// Which sandbox a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Devboxes, builds, and a function run once it has set itself up: no namespace creation at all.
    Sandbox,
    /// A deployment's warm Python process. Like `Sandbox`, except it may call
    /// `unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID)` with exactly those flags (and
    /// `clone` with exactly those flags and `SIGCHLD`), and
    /// `mount(2)` only with mountflags exactly `MS_NOSUID|MS_NODEV|MS_NOEXEC` or exactly
    /// `MS_NOSUID|MS_NODEV` (it uses these to give each run its own pid namespace, /proc and /tmp
    /// before any run code executes; the run then stacks the `Sandbox` filter).
    WarmHost,
}

/// A compiled seccomp filter (classic BPF), built once and installed in any number of children.
#[derive(Clone)]
pub struct Filter {
    program: Vec<sock_filter>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .finish()
    }
}

impl Filter {
    /// Build the program for `profile`.
    pub fn new(profile: Profile) -> Filter {
        let program = build(profile);
        debug_assert!(program.len() < libc::BPF_MAXINSNS as usize);
        Filter { program }
    }

    /// The program as raw `struct sock_filter` bytes (8 bytes per instruction, native endian):
    /// what `bwrap --seccomp FD` reads, and what the Python runtime loads with prctl via ctypes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.program.len() * 8);
        for insn in &self.program {
            bytes.extend_from_slice(&insn.code.to_ne_bytes());
            bytes.push(insn.jt);
            bytes.push(insn.jf);
            bytes.extend_from_slice(&insn.k.to_ne_bytes());
        }
        bytes
    }

    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)` then `seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog)` (or prctl
    /// PR_SET_SECCOMP). MUST NOT allocate or take locks: it is called from `pre_exec` in a
    /// forked child of a multithreaded server.
    pub fn install(&self) -> io::Result<()> {
        // Neither this nor `io::Error::last_os_error` allocates: the struct lives on the stack
        // and points into the program built by `new`.
        let prog = libc::sock_fprog {
            // Always fits: the program is a few hundred instructions (see `new`).
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: plain syscalls; `prog` and the program it points to outlive them, and the
        // kernel copies the program before returning.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            let prog_ptr: *const libc::sock_fprog = &prog;
            let rc = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
                0 as libc::c_ulong,
                prog_ptr,
            );
            if rc == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOSYS) {
                return Err(err);
            }
            // Kernels before 3.17 have no seccomp(2) but take the same program through prctl.
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                prog_ptr,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

mod bpf;

use bpf::*;

// ---------------------------------------------------------------------------------------------
// The policy.

/// `AUDIT_ARCH_*` of the native ABI: `EM_*` | `__AUDIT_ARCH_64BIT` | `__AUDIT_ARCH_LE`.
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000; // AUDIT_ARCH_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the seccomp filter supports x86_64 and aarch64 only");

/// On x86_64, x32 syscalls carry the native arch and this bit in their number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `open_tree_attr` (Linux 6.15): the same number on every architecture; not in `libc` yet.
const SYS_OPEN_TREE_ATTR: libc::c_long = 467;

/// Removed syscalls whose numbers x86_64 still reserves (they answer `ENOSYS`); denied anyway so
/// a kernel that brought them back could not be reached. Not in `libc`.
#[cfg(target_arch = "x86_64")]
const X86_64_REMOVED: [libc::c_long; 3] = [
    174, // create_module
    177, // get_kernel_syms
    178, // query_module
];

/// Denied under every profile.
const DENIED: &[libc::c_long] = &[
    // Namespaces (unshare and clone are handled by argument; see `build`).
    libc::SYS_setns,
    // Mounting (mount is handled by profile; see `build`).
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    SYS_OPEN_TREE_ATTR,
    libc::SYS_mount_setattr,
    // The kernel keyring is not namespaced.
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    // Kernel attack surface.
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_lookup_dcookie,
    libc::SYS_fanotify_init,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    // The host's kernel, clock and devices.
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_settimeofday,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_syslog,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_vhangup,
    libc::SYS_nfsservctl,
    // NUMA memory policy.
    libc::SYS_mbind,
    libc::SYS_set_mempolicy,
    libc::SYS_set_mempolicy_home_node,
    libc::SYS_migrate_pages,
    libc::SYS_move_pages,
];

/// Denied under every profile, x86_64 only (the others do not exist on aarch64; `stime`, `vm86`
/// and `vm86old` exist only for i386, whose ABI the architecture check already kills).
#[cfg(target_arch = "x86_64")]
const DENIED_X86_64: &[libc::c_long] = &[
    libc::SYS_uselib,
    libc::SYS_ustat,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_iopl,
    libc::SYS_ioperm,
];

/// Every namespace flag `clone` must not carry. `CLONE_NEWTIME` (0x80) shares its bit with the
/// exit signal in `clone`'s flags; a signal of 128 or more is invalid anyway.
const CLONE_NAMESPACES: u32 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWTIME) as u32;

/// The only `unshare` the warm host may make.
const WARM_HOST_UNSHARE: u32 =
    (libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID) as u32;

/// The only `clone` with namespace flags the warm host may make: a fork straight into the
/// run's own user, mount and pid namespaces (the child is pid 1 there), exit signal `SIGCHLD`,
/// nothing else. It creates exactly what `WARM_HOST_UNSHARE` followed by a fork does, in one
/// copy of the process instead of two.
const WARM_HOST_CLONE: u32 = WARM_HOST_UNSHARE | libc::SIGCHLD as u32;

/// The only mount flags the warm host may pass (`/proc`, then `/tmp`).
const WARM_HOST_MOUNT_FLAGS: [u32; 2] = [
    (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as u32,
    (libc::MS_NOSUID | libc::MS_NODEV) as u32,
];

/// `personality` values Docker's default profile allows: the Linux personality, `PER_LINUX32`,
/// `UNAME26`, both, and `0xffffffff` (query without change).
const PERSONALITIES: [u32; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `ioctl` requests refused on any fd.
const IOCTL_DENIED: [u32; 2] = [libc::TIOCSTI as u32, libc::TIOCLINUX as u32];

/// `socket` families refused.
const SOCKET_FAMILIES_DENIED: [u32; 1] = [libc::AF_VSOCK as u32];

fn build(profile: Profile) -> Vec<sock_filter> {
    let mut p = Program(Vec::with_capacity(160));

    // Foreign ABIs (i386 `int 0x80`, arm32 compat) die: their syscall numbers mean other calls.
    p.0.push(stmt(LD_ABS, OFF_ARCH));
    p.0.push(jump(JEQ, NATIVE_ARCH, 1, 0));
    p.0.push(stmt(RET, RET_KILL));
    p.0.push(stmt(LD_ABS, OFF_NR));
    #[cfg(target_arch = "x86_64")]
    {
        p.0.push(jump(JSET, X32_SYSCALL_BIT, 0, 1));
        p.0.push(stmt(RET, RET_EPERM));
    }

    for &n in DENIED {
        p.ret_for(n, RET_EPERM);
    }
    #[cfg(target_arch = "x86_64")]
    for &n in DENIED_X86_64.iter().chain(X86_64_REMOVED.iter()) {
        p.ret_for(n, RET_EPERM);
    }

    // Flags in user memory cannot be checked: send glibc back to `clone`.
    p.ret_for(libc::SYS_clone3, RET_ENOSYS);
    // `clone(flags, ...)`: the flags are the first argument on x86_64 and aarch64 alike.
    match profile {
        Profile::Sandbox => {
            p.deny_if_any_bit(libc::SYS_clone, 0, CLONE_NAMESPACES);
            p.ret_for(libc::SYS_unshare, RET_EPERM);
            p.ret_for(libc::SYS_mount, RET_EPERM);
        }
        Profile::WarmHost => {
            p.deny_if_any_bit_unless(libc::SYS_clone, 0, CLONE_NAMESPACES, WARM_HOST_CLONE);
            // unshare(unsigned long flags)
            p.allow_only(libc::SYS_unshare, 0, Width::Full64, &[WARM_HOST_UNSHARE]);
            // mount(source, target, fstype, unsigned long flags, data)
            p.allow_only(libc::SYS_mount, 3, Width::Full64, &WARM_HOST_MOUNT_FLAGS);
        }
    }

    // personality(unsigned int)
    p.allow_only(libc::SYS_personality, 0, Width::Low32, &PERSONALITIES);
    // ioctl(unsigned int fd, unsigned int cmd, unsigned long arg)
    p.deny_if_one_of(libc::SYS_ioctl, 1, &IOCTL_DENIED);
    // socket(int family, int type, int protocol)
    p.deny_if_one_of(libc::SYS_socket, 0, &SOCKET_FAMILIES_DENIED);

    p.0.push(stmt(RET, RET_ALLOW));
    p.0
}

#[cfg(test)]
mod tests;

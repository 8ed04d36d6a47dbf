//! Inside the jail (step 3 of the module's overview): `G` opens the bind sources, assembles
//! the root from the plan and pivots into it, drops every privilege, closes the descriptors
//! the spec does not keep, installs the seccomp filter and execs the program.

use super::mounts::{apply, mkdir, mount};
use super::plan::Plan;
use super::spec::JAIL_UID;
use super::sys::{check, cstr};
use std::ffi::CString;
use std::io::{Error, Result};

impl Plan {
    /// Open every bind source as an `O_PATH` descriptor while this process still has the
    /// host uid 0 as its file-system uid (so directories such as a 0700 `/root` on the way
    /// can be searched), and name each as the set-up code will see it later: through the
    /// host's `/proc`, kept at `/oldroot/proc` until the jail is sealed. The descriptors
    /// close on exec.
    fn open_sources(&self) -> Result<Vec<CString>> {
        let mut names = Vec::with_capacity(self.sources.len());
        for src in &self.sources {
            let fd = unsafe { libc::open(src.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            check(fd, &format!("opening {src:?}"))?;
            names.push(cstr(format!("/oldroot/proc/self/fd/{fd}"))?);
        }
        Ok(names)
    }

    /// In `G`: assemble the root, drop privileges and exec. Returns only on failure.
    pub(super) fn enter(&self) -> Result<std::convert::Infallible> {
        let sources = self.open_sources()?;
        // Become uid 0 of the jail (an unprivileged host account) to assemble it.
        check(unsafe { libc::setresgid(0, 0, 0) }, "setresgid 0")?;
        check(unsafe { libc::setresuid(0, 0, 0) }, "setresuid 0")?;
        if self.loopback {
            loopback_up()?;
        }
        let h = self.hostname.as_bytes();
        check(
            unsafe { libc::sethostname(h.as_ptr() as *const libc::c_char, h.len()) },
            "sethostname",
        )?;
        mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
        // A tmpfs becomes the root for a moment; the host's root is kept at /oldroot while
        // the new root is assembled at /newroot (as bubblewrap does).
        mount(
            Some(c"tmpfs"),
            c"/tmp",
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"mode=755,size=1048576"),
        )?;
        check(unsafe { libc::chdir(c"/tmp".as_ptr()) }, "chdir /tmp")?;
        mkdir(c"newroot")?;
        mount(
            Some(c"newroot"),
            c"newroot",
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        mkdir(c"oldroot")?;
        // The empty second layer of read-only overlays (overlayfs wants two without an upper).
        mkdir(c"empty")?;
        check(
            unsafe {
                libc::syscall(libc::SYS_pivot_root, c"/tmp".as_ptr(), c"oldroot".as_ptr()) as i32
            },
            "pivot_root",
        )?;
        check(unsafe { libc::chdir(c"/".as_ptr()) }, "chdir /")?;
        for step in &self.steps {
            apply(step, &sources)?;
        }
        check(
            unsafe { libc::umount2(c"/oldroot".as_ptr(), libc::MNT_DETACH) },
            "detaching the host's root",
        )?;
        check(unsafe { libc::chdir(c"/newroot".as_ptr()) }, "chdir")?;
        check(
            unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32 },
            "pivot_root",
        )?;
        check(
            unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) },
            "detaching the set-up root",
        )?;
        check(unsafe { libc::chdir(c"/".as_ptr()) }, "chdir /")?;
        // Nothing outside the spec's writable binds and tmpfs mounts can be written.
        mount(
            None,
            c"/",
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )?;
        check(
            unsafe { libc::chdir(self.cwd.as_ptr()) },
            "chdir to the working directory",
        )?;
        self.drop_privileges()?;
        self.close_other_fds()?;
        self.filter
            .install()
            .map_err(|e| Error::new(e.kind(), format!("seccomp: {e}")))?;
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        unsafe { libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = Error::last_os_error();
        Err(Error::new(
            e.kind(),
            format!("exec {:?}: {e}", self.program),
        ))
    }

    fn drop_privileges(&self) -> Result<()> {
        // Empty the bounding set while uid 0 of the jail still may, then become uid 1000:
        // leaving uid 0 clears every capability, and none can come back (no_new_privs).
        for cap in 0..64 {
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        }
        check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
        check(
            unsafe { libc::setresgid(JAIL_UID, JAIL_UID, JAIL_UID) },
            "setresgid",
        )?;
        check(
            unsafe { libc::setresuid(JAIL_UID, JAIL_UID, JAIL_UID) },
            "setresuid",
        )?;
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        check(
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
            "no_new_privs",
        )?;
        Ok(())
    }

    fn close_other_fds(&self) -> Result<()> {
        // Every descriptor from 3 up closes on exec, except those the spec keeps.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        check(rc as i32, "close_range")?;
        for fd in &self.keep_fds {
            check(
                unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) },
                "keeping a descriptor",
            )?;
        }
        Ok(())
    }
}

/// Set `lo` up in this process's network namespace.
fn loopback_up() -> Result<()> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket")?;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    let result = (|| {
        check(
            unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) },
            "reading lo's flags",
        )?;
        unsafe {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        }
        check(
            unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) },
            "setting lo up",
        )
    })();
    unsafe { libc::close(fd) };
    result
}

//! Starting a jail (steps 1, 2 and 4 of the module's overview): the launcher's entry point,
//! the forks and the namespaces, the uid and gid maps, the outbound network, and the exit
//! status handed back up.

use super::plan::Plan;
use super::spec::{JailSpec, Network, FUNCTION_HOST_UID, JAIL_ROOT_HOST_UID, JAIL_UID};
use super::sys::check;
use std::io::{Error, Result};

/// The launcher's entry point (`openloop __jail SPEC`). Must be called before any thread is
/// started. Never returns: exits with the jailed program's status.
pub fn main(spec_json: &str) -> ! {
    let spec: JailSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => fail(&format!("unreadable jail spec: {e}")),
    };
    match launch(&spec) {
        Ok(code) => std::process::exit(code),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("openloop jail: {msg}");
    // 111: the sandbox could not be set up (distinct from any exit of the program itself).
    unsafe { libc::_exit(111) }
}

fn pipe() -> Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe",
    )?;
    Ok((fds[0], fds[1]))
}

fn read_byte(fd: i32) -> bool {
    let mut b = 0u8;
    loop {
        let n = unsafe { libc::read(fd, &mut b as *mut u8 as *mut libc::c_void, 1) };
        if n < 0 && Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return n == 1;
    }
}

fn write_byte(fd: i32) {
    let b = 1u8;
    unsafe {
        libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
    }
}

/// Wait for `pid` and turn its status into an exit code (128 + signal for a killed one).
fn wait_code(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return 111;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        111
    }
}

fn die_with_parent() {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
}

fn launch(spec: &JailSpec) -> Result<i32> {
    // Everything that allocates happens before the forks.
    let plan = Plan::new(spec)?;
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let child = unsafe { libc::fork() };
    check(child, "fork")?;
    if child == 0 {
        unsafe {
            libc::close(ready_r);
            libc::close(go_w);
        }
        die_with_parent();
        let mut flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP;
        if spec.network != Network::Host {
            flags |= libc::CLONE_NEWNET;
        }
        if let Err(e) = check(unsafe { libc::unshare(flags) }, "unshare") {
            fail(&e.to_string());
        }
        write_byte(ready_w);
        if !read_byte(go_r) {
            fail("the launcher did not map the jail's user namespace");
        }
        let grandchild = unsafe { libc::fork() };
        if grandchild < 0 {
            fail("fork inside the jail failed");
        }
        if grandchild == 0 {
            die_with_parent();
            match plan.enter() {
                Ok(never) => match never {},
                Err(e) => fail(&e.to_string()),
            }
        }
        unsafe { libc::_exit(wait_code(grandchild)) }
    }
    unsafe {
        libc::close(ready_w);
        libc::close(go_r);
    }
    if !read_byte(ready_r) {
        return Ok(wait_code(child));
    }
    let maps = [
        (
            "uid_map",
            format!("0 {JAIL_ROOT_HOST_UID} 1\n{JAIL_UID} {FUNCTION_HOST_UID} 1\n"),
        ),
        (
            "gid_map",
            format!("0 {JAIL_ROOT_HOST_UID} 1\n{JAIL_UID} {FUNCTION_HOST_UID} 1\n"),
        ),
    ];
    for (file, map) in maps {
        if let Err(e) = std::fs::write(format!("/proc/{child}/{file}"), map) {
            unsafe { libc::kill(child, libc::SIGKILL) };
            return Err(Error::new(
                e.kind(),
                format!("writing the jail's {file}: {e}"),
            ));
        }
    }
    // The outbound network is in place before anything in the jail runs; it ends with this
    // process (its exit descriptor closes).
    let _network = if spec.network == Network::Outbound {
        match crate::egress::attach(child, spec.egress.as_ref()) {
            Ok(n) => Some(n),
            Err(e) => {
                unsafe { libc::kill(child, libc::SIGKILL) };
                return Err(Error::new(e.kind(), format!("the jail's network: {e}")));
            }
        }
    } else {
        None
    };
    write_byte(go_w);
    Ok(wait_code(child))
}

//! The seccomp filters' bytes as other loaders read them: bubblewrap's `--seccomp` and
//! Python's `prctl` through ctypes.

use openloop_sandbox::seccomp::{Filter, Profile};
use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

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

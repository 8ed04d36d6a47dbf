"""How a run's process is isolated: forked straight into user, mount and pid namespaces of
its own (or unshared into them), its ids mapped, then sealed (its own ``/proc`` and ``/tmp``,
no capabilities, the sandbox's seccomp filter, not dumpable). Used by the warm process
(``_host``) in each spare it forks; nothing here runs user code."""

from __future__ import annotations

import ctypes
import os
import signal
import threading

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_CAP_VERSION_3 = 0x20080522


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _write_file(path: str, text: str) -> None:
    """One ``write`` of ``text``, through the descriptor alone: a Python file object (its
    buffer, its text layer, the codec lookup) would cost every run's process about 0.15 ms of
    CPU and the memory those objects copy on write (``openloop-bench``'s process floor)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        data = text.encode()
        if os.write(fd, data) != len(data):
            raise OSError(f"{path}: short write")
    finally:
        os.close(fd)


def _non_dumpable() -> None:
    """No process of the same user may trace this one or read its memory or environment."""
    _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


_RUN_NAMESPACES = _CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID
#: ``clone``'s number where a fork straight into the run's namespaces is known to work.
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
#: ``syscall`` through ``PyDLL``: the GIL stays held across the clone, as ``os.fork`` holds it.
_pyapi = ctypes.PyDLL(None, use_errno=True)
_pyapi.syscall.restype = ctypes.c_long


def _release_free_memory() -> bool:
    """Give the memory glibc's allocator holds free back to the system (``malloc_trim``).
    False where the C library has no such call."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def _map_own_ids(uid: int, gid: int) -> None:
    """In a new user namespace: map this process's ids (from the parent namespace) to
    themselves. The host process is not dumpable, so its /proc files are not its own; this
    process must own its /proc/self to write its maps. Its run's pid 1 is sealed non-dumpable."""
    _check(_libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
    _write_file("/proc/self/gid_map", f"{gid} {gid} 1")


def _enter_run_namespaces() -> None:
    """Own user, mount and pid namespaces (pid 1 is this process's next child)."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    _check(_libc.unshare(_RUN_NAMESPACES), "unshare")
    _map_own_ids(uid, gid)


def _single_threaded() -> bool:
    """Whether this process has one thread (C threads of extensions included): only then is
    a bare ``clone`` as safe as ``fork`` (glibc's fork also takes its own locks, such as
    malloc's, which another thread may hold)."""
    try:
        return threading.active_count() == 1 and len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _fork_into_run_namespaces() -> int:
    """``os.fork()``, except that the child starts in user, mount and pid namespaces of its
    own, as pid 1 there: one copy of this process per run instead of two (fork, unshare,
    fork again). CPython's fork hooks run as for ``os.fork`` (locks, threads, at-fork
    handlers such as ``random``'s reseeding). Only for a single-threaded process.

    Raises ``OSError`` if the kernel or the sandbox's filter refuses it."""
    assert _SYS_CLONE is not None
    _pyapi.PyOS_BeforeFork()
    pid = _pyapi.syscall(
        ctypes.c_long(_SYS_CLONE),
        ctypes.c_ulong(_RUN_NAMESPACES | signal.SIGCHLD),
        None,
        None,
        None,
        None,
    )
    if pid == 0:
        _pyapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    _pyapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone into the run's namespaces: {os.strerror(err)}")
    return int(pid)


class Seal:
    """What seals a run's pid 1 (its own /proc and /tmp, no capabilities, the sandbox's
    seccomp filter, not dumpable), prepared once in the warm process: the arguments of
    each call are built here, so a run's process only makes the calls (building them
    there would cost every run the memory those objects copy on write)."""

    def __init__(self, tmp_bytes: int, seccomp: bytes) -> None:
        self.tmp_options = f"size={max(tmp_bytes, 4096)},mode=1777".encode()
        self.cap_header = _CapHeader(_CAP_VERSION_3, 0)
        self.cap_data = (_CapData * 2)()
        self.filter = ctypes.create_string_buffer(seccomp, len(seccomp))
        self.program = _SockFprog(len(seccomp) // 8, ctypes.cast(self.filter, ctypes.c_void_p))
        self.caps = range(64)

    def apply(self) -> None:
        """In the run's pid 1, before any run code."""
        _check(
            _libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None),
            "mounting the run's /proc",
        )
        _check(
            _libc.mount(b"tmpfs", b"/tmp", b"tmpfs", _MS_NOSUID | _MS_NODEV, self.tmp_options),
            "mounting the run's /tmp",
        )
        for cap in self.caps:
            _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
        _check(_libc.capset(ctypes.byref(self.cap_header), ctypes.byref(self.cap_data)), "capset")
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(
            _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(self.program), 0, 0),
            "installing the run's seccomp filter",
        )
        _non_dumpable()

//! The jail: Openloop's own launcher for the sandboxes that run a deployment's Python code
//! (its build, the import that reads its manifest, and its warm process with every run).
//!
//! Why not bubblewrap, as for devboxes: bubblewrap covers parts of `/proc` with read-only
//! bind mounts, and the kernel refuses a new `/proc` to a nested namespace while any proc
//! mount it can see is partly covered. Each run of a deployment gets its own pid namespace
//! and its own `/proc` (so it can neither see nor signal nor trace any other run), which
//! needs a `/proc` in the jail that nothing covers. Nothing is lost: every path below the
//! jail's root is read-only unless the spec says otherwise, `/proc/sys` and friends are
//! owned by the host's root and so never writable by the jail's unprivileged user.
//!
//! How it starts (the server spawns `openloop __jail SPEC`, with an empty environment):
//! 1. `P` (host root) forks `C`, which unshares user, mount, pid, ipc, uts and cgroup
//!    namespaces (and the network namespace for [`Network::None`]).
//! 2. `P` writes `C`'s uid and gid maps: uid 0 inside is [`JAIL_ROOT_HOST_UID`] (an account
//!    that owns nothing on the host, used only while the jail is assembled) and uid 1000 is
//!    [`FUNCTION_HOST_UID`].
//! 3. `C` forks `G`, pid 1 of the new pid namespace. `G` builds the root file system on a
//!    tmpfs from the spec's binds, tmpfs mounts and files, mounts a fresh `/proc` and a
//!    minimal `/dev`, pivots into it, detaches the host's root, remounts the root read-only,
//!    drops to uid 1000 with no capabilities (bounding set emptied, `no_new_privs`), closes
//!    every inherited descriptor the spec does not keep, installs the seccomp filter, and
//!    `execve`s the program with exactly the spec's environment.
//! 4. `C` and `P` wait and exit with `G`'s status; each dies with its parent, and when `G`
//!    (pid 1) dies the kernel kills everything else in the jail.
//!
//! The module by job: `spec` what a jail is made of (the spec the server writes, the host
//! accounts its uids map to); `launch` steps 1, 2 and 4 (the entry point, the forks, the
//! namespaces, the uid and gid maps, the outbound network); `plan` the spec turned into the
//! root's steps before any fork; `enter` step 3 (`G` assembling the root, dropping its
//! privileges, exec); `mounts` each step of the root carried out; `host` the server's own
//! mounts (not a jail's); `sys` the system-call helpers they share.

mod enter;
mod host;
mod launch;
mod mounts;
mod plan;
mod spec;
mod sys;

pub use host::{private_mounts, socket_tmpfs};
pub use launch::main;
pub use spec::{
    Bind, JailFile, JailSpec, Network, SeccompProfile, Tmpfs, FUNCTION_HOST_UID, JAIL_ARG,
    JAIL_ROOT_HOST_UID, JAIL_UID, SYSTEM_DIRS,
};

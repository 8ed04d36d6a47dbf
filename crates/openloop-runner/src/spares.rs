//! Spares: the processes a warm process forks and isolates ahead of its next runs.
//!
//! A spare registers on the engine socket under its warm process's spare registration and a
//! random name of its own, as soon as it is isolated. The server then moves it into a fresh
//! run cgroup (moving a process between v1 cgroups can take milliseconds) and says so with
//! one byte; the spare connects its output streams right after. All of that is off the
//! run's path: when a run comes, the warm process hands it to its spare and replies with the
//! spare's name, and the run starts at once on the streams already connected.
//!
//! The three streams of a spare must come from one process (by `SO_PEERCRED`), the one that
//! was moved into the cgroup, as a run's own streams must. And that process must still be in
//! its warm process's own cgroup, where every spare is forked: a run's process knows the
//! spare registration's key (it is a copy of its warm process), but it sits in its run's
//! cgroup, so it cannot register as a spare to be moved out of the cgroup its run's end
//! empties.

use crate::channels::{Channel, Connection, Registration};
use crate::host::destroy_later;
use openloop_sandbox::cgroup::{Cgroup, Limits};
use openloop_sync::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// A spare as it registered: its process, its cgroup, and the streams it has connected.
struct Entry {
    pid: i32,
    cgroup: Cgroup,
    control: Connection,
    stdout: Option<Connection>,
    stderr: Option<Connection>,
}

/// A spare with all three streams, taken for a run.
pub(crate) struct Ready {
    pub pid: i32,
    /// The process is in it: it was moved there when it registered, and cannot leave on
    /// its own (its cgroup files belong to root).
    pub cgroup: Cgroup,
    pub control: Connection,
    pub stdout: Connection,
    pub stderr: Connection,
}

/// The spares of one warm process, by name.
#[derive(Default)]
pub(crate) struct Spares {
    by_name: Mutex<HashMap<String, Entry>>,
    changed: Notify,
}

impl Spares {
    /// Take in the spares that register, until the registration ends with its host.
    pub(crate) async fn serve(
        &self,
        mut registration: Registration,
        warm: Cgroup,
        prefix: String,
        limits: Limits,
    ) {
        let mut n = 0u64;
        while let Some(conn) = registration.connections.recv().await {
            if conn.peer_pid <= 0 {
                continue;
            }
            let Some(name) = conn.spare.clone() else {
                continue;
            };
            match conn.channel {
                Channel::Spare => {
                    n += 1;
                    self.admit(conn, name, &warm, format!("{prefix}spare{n}"), limits)
                        .await;
                }
                Channel::SpareStdout | Channel::SpareStderr => self.add_stream(conn, &name),
                _ => {}
            }
        }
    }

    /// A spare's first stream: into a fresh cgroup with it, then one byte to say so.
    async fn admit(
        &self,
        mut conn: Connection,
        name: String,
        warm: &Cgroup,
        cgroup_name: String,
        limits: Limits,
    ) {
        if lock(&self.by_name).contains_key(&name) {
            return;
        }
        let pid = conn.peer_pid;
        let cgroup_name = format!("{cgroup_name}-{pid}");
        let warm = warm.clone();
        let made = tokio::task::spawn_blocking(move || {
            if !warm.holds(pid) {
                tracing::warn!(
                    pid,
                    "engine socket: a process outside its warm process's cgroup tried to register as a spare"
                );
                return Err(std::io::Error::other("not a spare"));
            }
            let cgroup = Cgroup::create(&cgroup_name, limits)?;
            match cgroup.attach(pid) {
                Ok(()) => Ok(cgroup),
                Err(e) => {
                    cgroup.destroy();
                    Err(e)
                }
            }
        })
        .await;
        let Ok(Ok(cgroup)) = made else { return };
        // Spares of an earlier process with this pid ended unused: their cgroups go.
        let stale: Vec<Cgroup> = {
            let mut m = lock(&self.by_name);
            let names: Vec<String> = m
                .iter()
                .filter(|(_, e)| e.pid == pid)
                .map(|(k, _)| k.clone())
                .collect();
            names
                .iter()
                .filter_map(|k| m.remove(k))
                .map(|e| e.cgroup)
                .collect()
        };
        destroy_later(stale);
        if conn.stream.write_all(b"\x01").await.is_err() {
            destroy_later([cgroup]);
            return;
        }
        lock(&self.by_name).insert(
            name,
            Entry {
                pid,
                cgroup,
                control: conn,
                stdout: None,
                stderr: None,
            },
        );
        self.changed.notify_waiters();
    }

    /// A spare's output stream, kept if it comes from the spare's own process.
    fn add_stream(&self, conn: Connection, name: &str) {
        {
            let mut m = lock(&self.by_name);
            let Some(e) = m.get_mut(name).filter(|e| e.pid == conn.peer_pid) else {
                return;
            };
            let slot = if conn.channel == Channel::SpareStdout {
                &mut e.stdout
            } else {
                &mut e.stderr
            };
            if slot.is_none() {
                *slot = Some(conn);
            }
        }
        self.changed.notify_waiters();
    }

    /// The spare `name` once all its streams are connected (they are on their way when the
    /// warm process names it: the spare connects them before it reads its run), at most
    /// `within`. `None` when it never registered: it then connects its run's streams itself.
    pub(crate) async fn take_ready(&self, name: &str, within: Duration) -> Option<Ready> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut m = lock(&self.by_name);
                if m.get(name)
                    .is_some_and(|e| e.stdout.is_some() && e.stderr.is_some())
                {
                    let e = m.remove(name)?;
                    return Some(Ready {
                        pid: e.pid,
                        cgroup: e.cgroup,
                        control: e.control,
                        stdout: e.stdout?,
                        stderr: e.stderr?,
                    });
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// The cgroup prepared for process `pid`, for a run whose process connected its streams
    /// itself (its spare registration did not complete); the spare's own streams are closed.
    pub(crate) fn take_by_pid(&self, pid: i32) -> Option<Cgroup> {
        let entry = {
            let mut m = lock(&self.by_name);
            let name = m
                .iter()
                .find(|(_, e)| e.pid == pid)
                .map(|(k, _)| k.clone())?;
            m.remove(&name)?
        };
        if entry.cgroup.holds(pid) {
            Some(entry.cgroup)
        } else {
            destroy_later([entry.cgroup]);
            None
        }
    }

    /// Every spare's cgroup, for the warm process's end.
    pub(crate) fn drain(&self) -> Vec<Cgroup> {
        lock(&self.by_name).drain().map(|(_, e)| e.cgroup).collect()
    }
}

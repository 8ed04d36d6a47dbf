//! Spares: the processes a warm process forks and isolates ahead of its next runs, and the
//! pool runs take them from.
//!
//! A spare registers on the engine socket under its warm process's spare registration and a
//! random name of its own, as soon as it is isolated. The server then moves it into a fresh
//! run cgroup (moving a process between v1 cgroups can take milliseconds) and says so with
//! one byte; the spare connects its output streams right after, makes them its fds 1 and 2,
//! and waits for a run on its control stream. Once all three streams are in, the spare is
//! ready: a run takes the oldest ready spare ([`Spares::take`]) and sends it the run as one
//! frame on that control stream, so no other process is on the run's path; the warm process
//! learns of it afterwards ([`crate::host::WarmHost::taken`]) and forks a replacement.
//!
//! The run cgroup a spare is moved into is one that earlier runs of the same warm process
//! emptied, when one is kept ([`crate::recycle`]), else a new one.
//!
//! The three streams of a spare must come from one process (by `SO_PEERCRED`), the one that
//! was moved into the cgroup, as a run's own streams must. And that process must still be in
//! its warm process's own cgroup, where every spare is forked: a run's process knows the
//! spare registration's key (it is a copy of its warm process), but it sits in its run's
//! cgroup, so it cannot register as a spare to be moved out of the cgroup its run's end
//! empties.

use crate::channels::{refuse, Channel, Connection, Refusal, Registration};
use crate::recycle::Recycled;
use openloop_sandbox::cgroup::{Cgroup, Limits};
use openloop_sync::lock;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// A spare with all three streams, ready for a run.
pub(crate) struct Ready {
    /// The name it registered under (the warm process knows it by this name).
    pub name: String,
    pub pid: i32,
    /// The process is in it: it was moved there when it registered, and cannot leave on
    /// its own (its cgroup files belong to root).
    pub cgroup: Cgroup,
    pub control: Connection,
    pub stdout: Connection,
    pub stderr: Connection,
}

#[derive(Default)]
struct State {
    /// Registered, some streams still on their way.
    partial: HashMap<String, Entry>,
    /// All streams in, oldest first.
    ready: VecDeque<Ready>,
    /// Why the warm process could not prepare a spare, for runs waiting for one.
    failures: VecDeque<String>,
}

/// The spares of one warm process.
#[derive(Default)]
pub(crate) struct Spares {
    state: Mutex<State>,
    /// A spare became ready or a failure came; only the run whose turn it is waits on it.
    changed: Notify,
    /// Runs take spares in the order they asked.
    turn: tokio::sync::Mutex<()>,
    /// Runs in [`Spares::take`] (a failure with nobody waiting is not kept).
    waiting: AtomicUsize,
    /// Run cgroups emptied for the next spares.
    recycled: Arc<Recycled>,
}

/// Counts a run as waiting for a spare while it lives.
struct Waiting<'a>(&'a Spares);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            lock(&self.0.state).failures.clear();
        }
    }
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
                Channel::SpareStdout | Channel::SpareStderr => {
                    if let Err((stream, why)) = self.add_stream(conn, &name) {
                        refuse(stream, why).await;
                    }
                }
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
        if lock(&self.state).partial.contains_key(&name) {
            return;
        }
        let pid = conn.peer_pid;
        let cgroup_name = format!("{cgroup_name}-{pid}");
        let warm = warm.clone();
        let recycled = self.recycled.clone();
        let made = tokio::task::spawn_blocking(move || {
            if !warm.holds(pid) {
                tracing::warn!(
                    pid,
                    "engine socket: a process outside its warm process's cgroup tried to register as a spare"
                );
                return Err(None);
            }
            let cgroup = match recycled.take() {
                Some(kept) => kept,
                None => Cgroup::create(&cgroup_name, limits).map_err(Some)?,
            };
            match cgroup.attach(pid) {
                Ok(()) => Ok(cgroup),
                Err(e) => {
                    cgroup.destroy();
                    Err(Some(e))
                }
            }
        })
        .await;
        let cgroup = match made {
            Ok(Ok(cgroup)) => cgroup,
            Ok(Err(None)) => return refuse(conn.stream, Refusal::NotASpare).await,
            Ok(Err(Some(e))) => {
                tracing::warn!(pid, error = %e, "could not move a spare into its run cgroup");
                return;
            }
            Err(_) => return,
        };
        // Spares of an earlier process with this pid ended unused: their cgroups go.
        let stale: Vec<Cgroup> = {
            let mut s = lock(&self.state);
            let names: Vec<String> = s
                .partial
                .iter()
                .filter(|(_, e)| e.pid == pid)
                .map(|(k, _)| k.clone())
                .collect();
            let mut stale: Vec<Cgroup> = names
                .iter()
                .filter_map(|k| s.partial.remove(k))
                .map(|e| e.cgroup)
                .collect();
            let (gone, kept): (Vec<Ready>, Vec<Ready>) =
                s.ready.drain(..).partition(|r| r.pid == pid);
            s.ready = kept.into();
            stale.extend(gone.into_iter().map(|r| r.cgroup));
            stale
        };
        self.recycled.keep_later(stale);
        if conn.stream.write_all(b"\x01").await.is_err() {
            self.recycled.keep_later(vec![cgroup]);
            return;
        }
        lock(&self.state).partial.insert(
            name,
            Entry {
                pid,
                cgroup,
                control: conn,
                stdout: None,
                stderr: None,
            },
        );
    }

    /// A spare's output stream, kept if it comes from the spare's own process; with both,
    /// the spare is ready.
    fn add_stream(
        &self,
        conn: Connection,
        name: &str,
    ) -> Result<(), (tokio::net::UnixStream, Refusal)> {
        let mut s = lock(&self.state);
        let Some(e) = s.partial.get_mut(name).filter(|e| e.pid == conn.peer_pid) else {
            let channel = conn.channel.name();
            return Err((conn.stream, Refusal::NoSuchSpare(channel)));
        };
        let slot = if conn.channel == Channel::SpareStdout {
            &mut e.stdout
        } else {
            &mut e.stderr
        };
        if slot.is_some() {
            let channel = conn.channel.name();
            return Err((conn.stream, Refusal::NoSuchSpare(channel)));
        }
        *slot = Some(conn);
        if e.stdout.is_none() || e.stderr.is_none() {
            return Ok(());
        }
        let Some(Entry {
            pid,
            cgroup,
            control,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }) = s.partial.remove(name)
        else {
            return Ok(());
        };
        s.ready.push_back(Ready {
            name: name.to_string(),
            pid,
            cgroup,
            control,
            stdout,
            stderr,
        });
        drop(s);
        self.changed.notify_one();
        Ok(())
    }

    /// The warm process could not prepare a spare: the run waiting longest fails with
    /// `reason` (nobody waiting: nothing to tell).
    pub(crate) fn failed(&self, reason: String) {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        lock(&self.state).failures.push_back(reason);
        self.changed.notify_one();
    }

    /// The oldest ready spare, waiting for one if none is (the warm process forks them as
    /// they are taken); or why the warm process could not prepare one.
    pub(crate) async fn take(&self) -> Result<Ready, String> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(self);
        let _turn = self.turn.lock().await;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = lock(&self.state);
                if let Some(r) = s.ready.pop_front() {
                    return Ok(r);
                }
                if let Some(reason) = s.failures.pop_front() {
                    return Err(reason);
                }
            }
            notified.await;
        }
    }

    /// A spare taken for a run that did not use it (the run was canceled first): the next
    /// run takes it.
    pub(crate) fn put_back(&self, ready: Ready) {
        lock(&self.state).ready.push_front(ready);
        self.changed.notify_one();
    }

    /// Every spare's cgroup and every kept one, for the warm process's end (from then on,
    /// a run's cgroup is removed at its end, not kept).
    pub(crate) fn drain(&self) -> Vec<Cgroup> {
        let mut s = lock(&self.state);
        let mut all: Vec<Cgroup> = s.partial.drain().map(|(_, e)| e.cgroup).collect();
        all.extend(s.ready.drain(..).map(|r| r.cgroup));
        all.extend(self.recycled.close());
        all
    }

    /// Where the cgroups of this warm process's runs go at their end.
    pub(crate) fn recycled(&self) -> &Arc<Recycled> {
        &self.recycled
    }
}

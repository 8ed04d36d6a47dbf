//! Run slots: what bounds the runs executing user code, and how a run that waits on another
//! invocation lends its slots to it.
//!
//! A run holds one node-wide slot (and one of its function's, when that limit is set) while
//! it executes. When it blocks on another invocation (`invoke_sync` with its token, or waiting
//! for a child it queued) it gives both back for the wait and takes them again, the function's
//! first, before its call returns. A waiting run holds nothing, so however deep or wide a tree
//! of calls grows, the runs holding slots are runs that are not waiting: they finish or start
//! waiting, and the node never deadlocks on its own slots.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, AcquireError, OwnedSemaphorePermit, Semaphore};

/// The slots of one executing run.
pub struct Permits {
    _function: Option<OwnedSemaphorePermit>,
    _node: OwnedSemaphorePermit,
}

impl Permits {
    /// The function's own slot first, so a busy function never holds a node-wide slot.
    pub async fn take(
        node: &Arc<Semaphore>,
        function: Option<&Arc<Semaphore>>,
    ) -> Result<Permits, AcquireError> {
        let function = match function {
            Some(sem) => Some(sem.clone().acquire_owned().await?),
            None => None,
        };
        let node = node.clone().acquire_owned().await?;
        Ok(Permits {
            _function: function,
            _node: node,
        })
    }

    /// Both slots if they are free now (the function's, then the node's), else none.
    pub fn try_take(node: &Arc<Semaphore>, function: Option<&Arc<Semaphore>>) -> Option<Permits> {
        let function = match function {
            Some(sem) => Some(sem.clone().try_acquire_owned().ok()?),
            None => None,
        };
        let node = node.clone().try_acquire_owned().ok()?;
        Some(Permits {
            _function: function,
            _node: node,
        })
    }
}

struct State {
    /// Waits in progress: a run may wait on several invocations at once (threads, asyncio).
    waits: usize,
    /// The slots, while the run executes; none while it waits.
    held: Option<Permits>,
}

/// One run in flight: its call depth, its slots, and the invocations it started.
pub struct RunSlots {
    /// Calls above this run: 0 for an invocation made with an API key.
    pub depth: u32,
    /// The run that invoked this one, if any.
    pub parent: Option<String>,
    node: Arc<Semaphore>,
    function: Option<Arc<Semaphore>>,
    state: Mutex<State>,
    ended: watch::Sender<bool>,
    /// Invocations this run started that have not ended (canceled with it).
    children: Mutex<HashSet<String>>,
    /// In a cluster: its function slot is lent in the database (`cluster::limits`).
    pub cluster_lent: std::sync::atomic::AtomicBool,
}

impl RunSlots {
    pub fn new(
        depth: u32,
        parent: Option<String>,
        node: Arc<Semaphore>,
        function: Option<Arc<Semaphore>>,
        permits: Permits,
    ) -> Arc<Self> {
        Arc::new(RunSlots {
            depth,
            parent,
            node,
            function,
            state: Mutex::new(State {
                waits: 0,
                held: Some(permits),
            }),
            ended: watch::Sender::new(false),
            children: Mutex::new(HashSet::new()),
            cluster_lent: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is two plain fields, consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn children_set(&self) -> MutexGuard<'_, HashSet<String>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_child(&self, id: &str) {
        self.children_set().insert(id.to_string());
    }

    pub fn remove_child(&self, id: &str) {
        self.children_set().remove(id);
    }

    pub fn children(&self) -> Vec<String> {
        self.children_set().iter().cloned().collect()
    }

    /// Whether the run holds its slots now (false while it waits).
    pub fn holds_slots(&self) -> bool {
        self.state().held.is_some()
    }

    /// The run blocks on another invocation: its slots go back until [`Wait::resume`].
    pub fn wait(self: &Arc<Self>) -> Wait {
        let released = {
            let mut s = self.state();
            s.waits += 1;
            s.held.take()
        };
        if released.is_some() {
            tracing::debug!(depth = self.depth, "a waiting run gave its slots back");
        }
        drop(released);
        Wait {
            run: Some(self.clone()),
        }
    }

    /// One wait is over; when it was the last, take the slots back (unless the run ended).
    async fn resume(self: Arc<Self>) {
        {
            let mut s = self.state();
            s.waits = s.waits.saturating_sub(1);
            if s.waits > 0 || s.held.is_some() || *self.ended.borrow() {
                return;
            }
        }
        let mut ended = self.ended.subscribe();
        let permits = tokio::select! {
            p = Permits::take(&self.node, self.function.as_ref()) => match p {
                Ok(p) => p,
                Err(_) => return, // the server is stopping
            },
            _ = ended.wait_for(|e| *e) => return,
        };
        let mut s = self.state();
        // Another wait may have begun meanwhile (the slots go back at once), or the run ended.
        if s.waits == 0 && s.held.is_none() && !*self.ended.borrow() {
            s.held = Some(permits);
        }
    }

    /// The run has ended: its slots go back and no wait still in progress takes them again.
    pub fn end(&self) {
        self.ended.send_replace(true);
        let held = self.state().held.take();
        drop(held);
    }
}

/// A wait of a run on another invocation. [`Wait::resume`] takes the slots back; dropped
/// without it (the waiting request went away), the slots are taken back in the background.
#[must_use = "a wait gives the run's slots back only when resumed"]
pub struct Wait {
    run: Option<Arc<RunSlots>>,
}

impl Wait {
    /// The awaited invocation has finished: take the slots back before the run goes on.
    pub async fn resume(mut self) {
        if let Some(run) = self.run.take() {
            // In a task of its own, so it completes even if this request is dropped meanwhile.
            let _ = tokio::spawn(run.resume()).await;
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(run.resume());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn run(node: &Arc<Semaphore>) -> Arc<RunSlots> {
        let permits = Permits::take(node, None).await.unwrap();
        RunSlots::new(0, None, node.clone(), None, permits)
    }

    #[tokio::test]
    async fn a_waiting_run_lends_its_slot_and_takes_it_back() {
        let node = Arc::new(Semaphore::new(1));
        let parent = run(&node).await;
        assert_eq!(node.available_permits(), 0);
        let wait = parent.wait();
        assert!(!parent.holds_slots());
        // The child runs on the slot the parent gave back.
        let child = run(&node).await;
        let resumed = tokio::spawn(wait.resume());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!resumed.is_finished(), "the parent waits for a slot");
        child.end();
        drop(child);
        resumed.await.unwrap();
        assert!(parent.holds_slots());
        assert_eq!(node.available_permits(), 0);
        parent.end();
        assert_eq!(node.available_permits(), 1);
    }

    #[tokio::test]
    async fn concurrent_waits_resume_once_the_last_is_over() {
        let node = Arc::new(Semaphore::new(1));
        let parent = run(&node).await;
        let (a, b) = (parent.wait(), parent.wait());
        a.resume().await;
        assert!(!parent.holds_slots(), "one wait is still in progress");
        assert_eq!(node.available_permits(), 1);
        b.resume().await;
        assert!(parent.holds_slots());
        assert_eq!(node.available_permits(), 0);
    }

    #[tokio::test]
    async fn a_run_that_ends_while_waiting_takes_nothing_back() {
        let node = Arc::new(Semaphore::new(1));
        let parent = run(&node).await;
        let wait = parent.wait();
        let other = run(&node).await;
        let resumed = tokio::spawn(wait.resume());
        tokio::time::sleep(Duration::from_millis(20)).await;
        parent.end();
        resumed.await.unwrap();
        other.end();
        assert_eq!(node.available_permits(), 1);
        assert!(!parent.holds_slots());
        // A dropped wait takes the slot back in the background.
        let again = run(&node).await;
        drop(again.wait());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(again.holds_slots());
    }
}

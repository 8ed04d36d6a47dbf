//! Starting children that die with the server, from a thread that lives as long as it.
//!
//! `PR_SET_PDEATHSIG` (bwrap's `--die-with-parent`, the jails' `pre_exec`) fires when the
//! *thread* that forked the child exits, not when its process does. A child started from
//! tokio's blocking pool was therefore killed ten seconds after that pool thread went idle and
//! retired: a devbox died, SIGKILLed, ten seconds after it started. Every child that dies with
//! its parent is started here instead, from one thread that never exits, whatever thread asks.

use std::sync::mpsc;
use std::sync::OnceLock;

type Job = Box<dyn FnOnce() + Send>;

fn jobs() -> &'static mpsc::Sender<Job> {
    static SENDER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SENDER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("openloop-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("the spawner thread starts (the server cannot start children without it)");
        tx
    })
}

/// `cmd.spawn()`, done by the lasting spawner thread (in the caller's runtime, which reaps the
/// child). Blocks the caller for as long as the spawn takes, as `spawn` itself does.
pub fn spawn(mut cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let handle = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _runtime = handle.enter();
        let _ = done_tx.send(cmd.spawn());
    });
    jobs()
        .send(job)
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    done_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread dropped a spawn"))?
}

#[cfg(test)]
mod tests {
    /// A child that asks to die with its parent outlives the thread that asked for it.
    #[test]
    fn a_child_outlives_the_thread_that_started_it() {
        let started = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _g = rt.enter();
            let mut cmd = tokio::process::Command::new("sleep");
            cmd.arg("30");
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                    Ok(())
                });
            }
            let child = super::spawn(cmd).unwrap();
            let pid = child.id().unwrap() as i32;
            // Kept alive past this thread (the runtime is leaked with it, never dropped).
            std::mem::forget(child);
            std::mem::forget(rt);
            pid
        })
        .join()
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let state = std::fs::read_to_string(format!("/proc/{started}/stat")).unwrap_or_default();
        let alive = !state.is_empty() && !state.contains(") Z ");
        unsafe {
            libc::kill(started, libc::SIGKILL);
        }
        assert!(
            alive,
            "the child died with the thread that asked for it: {state:?}"
        );
    }
}

//! A cgroup's counts, on this host's cgroups (needs root): its processes, read from one of its
//! directories, and the OOM killer's kills, read from its memory controller's; and a cgroup
//! emptied for another use.

use openloop_sandbox::cgroup::{Cgroup, Limits, NotReusable};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

/// `dd` writes its 256 MiB buffer as it reads into it: past a 48 MiB limit (no swap for
/// the cgroup), the kernel's OOM killer ends it. It starts after a pause, in the cgroup.
fn start_hog(cg: &Cgroup) -> std::process::Child {
    let hog = Command::new("sh")
        .args([
            "-c",
            "sleep 0.3; exec dd if=/dev/zero of=/dev/null bs=256M count=1",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cg.attach(hog.id() as i32).unwrap();
    hog
}

fn killed(mut hog: std::process::Child) {
    let status = hog.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

fn oom_in(cg: &Cgroup) {
    killed(start_hog(cg));
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 48 << 20,
        pids: 64,
        cpu_shares: 1024,
    }
}

#[test]
fn a_cgroup_emptied_for_reuse_kills_what_it_held_and_counts_oom_kills_afresh() {
    let mut cg = Cgroup::create(&format!("test-reuse-{}", std::process::id()), limits()).unwrap();
    let mut left = Command::new("sleep").arg("60").spawn().unwrap();
    cg.attach(left.id() as i32).unwrap();
    oom_in(&cg);
    assert_eq!(cg.oom_kills(), 1);

    assert_eq!(cg.empty_for_reuse(4 << 20), Ok(()));
    assert_eq!(left.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(cg.process_count(), 0);
    assert_eq!(
        cg.oom_kills(),
        0,
        "the earlier use's kill is not this one's"
    );
    // The limit is still there: the next use's hog is killed and counted.
    oom_in(&cg);
    assert_eq!(cg.oom_kills(), 1);
    // A clone names the same cgroup with the same count.
    assert_eq!(cg.clone().oom_kills(), 1);
    cg.destroy();
}

#[test]
fn a_cgroup_left_holding_memory_is_not_reused() {
    // A file in a tmpfs outlives the process that wrote it, and its pages stay charged to
    // that process's cgroup.
    let mut cg = Cgroup::create(&format!("test-charged-{}", std::process::id()), limits()).unwrap();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let file = dir.path().join("left");
    let mut writer = Command::new("sh")
        .args([
            "-c",
            &format!(
                "sleep 0.3; exec dd if=/dev/zero of={} bs=1M count=16",
                file.display()
            ),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cg.attach(writer.id() as i32).unwrap();
    assert!(writer.wait().unwrap().success());
    assert!(
        matches!(cg.empty_for_reuse(4 << 20), Err(NotReusable::Charged(b)) if b >= 16 << 20),
        "16 MiB stay charged to it"
    );
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        cg.empty_for_reuse(4 << 20),
        Ok(()),
        "with the file gone, it can be reused"
    );
    cg.destroy();
}

#[test]
fn a_cgroup_is_empty_when_emptied_for_reuse_returns() {
    // What a run left keeps starting processes and holds 40 MiB; nothing waits on it here,
    // so only `empty_for_reuse` itself can have waited for every one of them to exit.
    let mut cg = Cgroup::create(&format!("test-emptied-{}", std::process::id()), limits()).unwrap();
    let mut left = Command::new("sh")
        .args([
            "-c",
            "sleep 0.2; (exec dd if=/dev/zero bs=40M count=1 | sleep 60) & \
             while :; do sleep 60 & sleep 0.01; done",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cg.attach(left.id() as i32).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(cg.process_count() > 3);
    assert_eq!(cg.empty_for_reuse(64 << 20), Ok(()));
    let left_over = cg.process_count();
    let _ = left.wait();
    cg.destroy();
    assert_eq!(
        left_over, 0,
        "processes still in the cgroup when it was handed back"
    );
}

#[test]
fn a_removed_cgroup_is_not_reused() {
    let mut cg = Cgroup::create(&format!("test-removed-{}", std::process::id()), limits()).unwrap();
    cg.clone().destroy();
    assert_eq!(cg.empty_for_reuse(4 << 20), Err(NotReusable::Unreadable));
}

#[test]
fn a_cgroup_counts_its_processes_and_its_oom_kills() {
    let cg = Cgroup::create(&format!("test-counts-{}", std::process::id()), limits()).unwrap();
    let mut sleepers: Vec<_> = (0..2)
        .map(|_| {
            let c = Command::new("sleep").arg("60").spawn().unwrap();
            cg.attach(c.id() as i32).unwrap();
            c
        })
        .collect();
    assert_eq!(cg.process_count(), 2);
    assert_eq!(cg.oom_kills(), 0);

    let hog = start_hog(&cg);
    assert_eq!(cg.process_count(), 3);
    killed(hog);
    assert_eq!(cg.oom_kills(), 1);
    assert_eq!(cg.process_count(), 2);

    cg.destroy();
    for s in &mut sleepers {
        assert_eq!(s.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}

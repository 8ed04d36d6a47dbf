//! A cgroup's counts, on this host's cgroups (needs root): its processes, read from one of its
//! directories, and the OOM killer's kills, read from its memory controller's.

use openloop_sandbox::cgroup::{Cgroup, Limits};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

#[test]
fn a_cgroup_counts_its_processes_and_its_oom_kills() {
    let cg = Cgroup::create(
        &format!("test-counts-{}", std::process::id()),
        Limits {
            memory_bytes: 48 << 20,
            pids: 64,
            cpu_shares: 1024,
        },
    )
    .unwrap();
    let mut sleepers: Vec<_> = (0..2)
        .map(|_| {
            let c = Command::new("sleep").arg("60").spawn().unwrap();
            cg.attach(c.id() as i32).unwrap();
            c
        })
        .collect();
    assert_eq!(cg.process_count(), 2);
    assert_eq!(cg.oom_kills(), 0);

    // `dd` writes its 256 MiB buffer as it reads into it: past the 48 MiB limit (no swap for
    // the cgroup), the kernel's OOM killer ends it. It starts after a pause, in the cgroup.
    let mut hog = Command::new("sh")
        .args([
            "-c",
            "sleep 0.3; exec dd if=/dev/zero of=/dev/null bs=256M count=1",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cg.attach(hog.id() as i32).unwrap();
    assert_eq!(cg.process_count(), 3);
    let status = hog.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(cg.oom_kills(), 1);
    assert_eq!(cg.process_count(), 2);

    cg.destroy();
    for s in &mut sleepers {
        assert_eq!(s.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}

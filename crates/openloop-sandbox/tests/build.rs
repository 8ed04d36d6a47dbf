//! Blueprint build sandboxes: root of their own user namespace over idmapped layers, and
//! the captured layer's owners. Needs root, bubblewrap and the base image.

use openloop_sandbox::cgroup::Limits;
use openloop_sandbox::{image, Devbox, DevboxSpec, SandboxConfig};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

fn agent_bin() -> PathBuf {
    let target = option_env!("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug/openloop-devbox-agent")
}

async fn config(tmp: &tempfile::TempDir) -> SandboxConfig {
    let image_dir =
        std::env::var("OPENLOOP_IMAGE_DIR").unwrap_or_else(|_| "/var/cache/openloop/images".into());
    let mirror = std::env::var("OPENLOOP_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let image = image::ensure_base_image(&PathBuf::from(image_dir), &mirror)
        .await
        .unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let agent_layer = tmp.path().join("agent-layer");
    openloop_sandbox::devbox::prepare_agent_layer(&agent_bin(), &agent_layer).unwrap();
    SandboxConfig {
        devbox_dir: tmp.path().join("devboxes"),
        image,
        agent_layer,
        pool: None,
    }
}

fn spec(id: &str, lower: Option<PathBuf>, build: bool) -> DevboxSpec {
    DevboxSpec {
        id: id.into(),
        env: BTreeMap::new(),
        limits: Limits {
            memory_bytes: 512 << 20,
            pids: 128,
            cpu_shares: 1024,
        },
        disk_bytes: 1 << 30,
        network: false,
        egress: None,
        lower,
        root: build,
        sudo: false,
    }
}

async fn sh(d: &Devbox, cmd: &str) -> (i32, String) {
    let out = d
        .exec(cmd, BTreeMap::new(), Some("/".into()), 1 << 20, None)
        .await
        .unwrap();
    (
        out.exit.shell_code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn a_build_is_root_of_its_own_namespace_and_its_layer_is_the_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp).await;
    let b = Devbox::start(&config, spec("bldtest1", None, true))
        .await
        .expect("build sandbox starts");
    let (code, out) = sh(
        &b,
        "set -e; id -u; stat -c %u /usr/bin /home/user; mkdir /app; echo root > /app/r; \
         touch /usr/local/bin/tool; echo mine > /home/user/u; chown 1000:1000 /home/user/u; \
         chmod u+s /usr/local/bin/tool; rm /etc/motd; cat /proc/self/uid_map",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("0\n0\n1000\n"), "{out}");
    // Nothing of the host is root's here: host root is not even mapped.
    assert!(!out.contains("         0          0"), "{out}");
    let layer = tmp.path().join("layer");
    let size = b.capture_build(None, layer.clone()).await.unwrap();
    b.shutdown().await;
    assert!(size > 0);
    let owner = |p: &str| std::fs::symlink_metadata(layer.join(p)).unwrap();
    assert_eq!(owner("app/r").uid(), 0);
    assert_eq!(owner("usr/local/bin/tool").uid(), 0);
    assert_eq!(
        owner("usr/local/bin/tool").mode() & 0o4000,
        0o4000,
        "set-uid kept"
    );
    assert_eq!(owner("home/user/u").uid(), 100_000);
    assert!(openloop_sandbox::snapshot::is_whiteout(&owner("etc/motd")));

    // A devbox over the layer sees the files, root's as not its own.
    let d = Devbox::start(&config, spec("bldtest2", Some(layer), false))
        .await
        .unwrap();
    let (code, out) = sh(
        &d,
        "cat /app/r /home/user/u; test -e /etc/motd || echo gone; id -u; \
         touch /app/x 2>/dev/null || echo refused; echo ok >> /home/user/u && echo appended",
    )
    .await;
    d.shutdown().await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "root\nmine\ngone\n1000\nrefused\nappended\n");
}

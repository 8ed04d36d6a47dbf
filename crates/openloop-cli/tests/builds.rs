//! Deployments: failed builds say why; git sources deploy at a ref; redeploys switch over.

mod common;

use common::{copy_dir, fixture, Db, Server};
use serde_json::json;
use std::path::Path;
use std::process::Command;

/// A change that breaks a copy of the fixture.
type Edit = Box<dyn FnOnce(&Path)>;

fn broken_variant(dir: &Path, edit: impl FnOnce(&Path)) -> std::path::PathBuf {
    let repo = dir.join("broken_agent");
    copy_dir(&fixture("test_agent"), &repo);
    edit(&repo);
    repo
}

#[tokio::test]
async fn failed_builds_show_the_log_and_the_reason() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "missing annotation",
            Box::new(|r: &Path| {
                std::fs::write(r.join("agent/functions.py"), "import runloop\n@runloop.function\ndef helper(city, days: int) -> str:\n    return city\n").unwrap()
            }),
            "function 'helper': parameter 'city' has no type annotation",
        ),
        (
            "missing return type",
            Box::new(|r: &Path| {
                std::fs::write(
                    r.join("agent/functions.py"),
                    "import runloop\n@runloop.function\ndef helper(city: str):\n    return city\n",
                )
                .unwrap()
            }),
            "function 'helper': the return type is not annotated",
        ),
        (
            "malformed runloop.toml",
            Box::new(|r: &Path| {
                std::fs::write(r.join("runloop.toml"), "[module\npath = ").unwrap()
            }),
            "runloop.toml: not valid TOML",
        ),
        (
            "missing runloop.toml",
            Box::new(|r: &Path| std::fs::remove_file(r.join("runloop.toml")).unwrap()),
            "cannot read runloop.toml",
        ),
        (
            "module not found",
            Box::new(|r: &Path| {
                std::fs::write(
                    r.join("runloop.toml"),
                    "[module]\npath = \"./agent\"\nname = \"missing\"\n",
                )
                .unwrap()
            }),
            "module 'missing' not found",
        ),
        (
            "import error",
            Box::new(|r: &Path| {
                std::fs::write(
                    r.join("agent/functions.py"),
                    "import runloop\nraise RuntimeError('kaboom at import')\n",
                )
                .unwrap()
            }),
            "kaboom at import",
        ),
        (
            "unknown requirement",
            Box::new(|r: &Path| {
                std::fs::write(
                    r.join("requirements.txt"),
                    "this-package-does-not-exist-openloop==9.9.9\n",
                )
                .unwrap()
            }),
            "installing requirements.txt failed",
        ),
    ];
    for (what, edit, reason) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let repo = broken_variant(tmp.path(), edit);
        let (ok, out, err) = server.deploy_cli(&repo, &[]);
        assert!(!ok, "{what}: the deploy must fail");
        assert!(
            err.contains(reason),
            "{what}: stderr lacks {reason:?}:\n{err}"
        );
        assert!(
            out.contains("build failed"),
            "{what}: the build log is shown:\n{out}"
        );
    }
    let deps = server
        .get_json("/v1/deployments?project=broken_agent")
        .await;
    let all = deps["deployments"].as_array().unwrap();
    assert_eq!(all.len(), 7);
    assert!(all
        .iter()
        .all(|d| d["status"] == "failed" && d["failure_reason"].is_string()));
    let id = all[0]["id"].as_str().unwrap();
    let logs = server.get_json(&format!("/v1/deployments/{id}/logs")).await;
    assert!(!logs["logs"].as_array().unwrap().is_empty());
    // A project whose builds all failed has nothing to invoke.
    let (code, _) = server
        .invoke_sync("broken_agent", "echo", json!({"text": "x"}))
        .await;
    assert_eq!(code, 404);
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn git_sources_deploy_at_a_ref_and_redeploys_switch_over() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    copy_dir(&fixture("test_agent"), &work);
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "v1"]);
    git(&work, &["tag", "v1"]);
    let f = work.join("agent/functions.py");
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("text * times", "(text * times).upper()");
    std::fs::write(&f, text).unwrap();
    git(&work, &["commit", "-q", "-am", "v2"]);
    let bare = tmp.path().join("agent_repo.git");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );

    // A file:// URL at a tag: the project is named after the repository.
    let url = format!("file://{}", bare.display());
    let (ok, out, err) = server.deploy_cli(Path::new(&url), &["--ref", "v1"]);
    assert!(ok, "{out}\n{err}");
    let (_, inv) = server
        .invoke_sync("agent_repo", "echo", json!({"text": "ab"}))
        .await;
    assert_eq!(inv["result"]["text"], "ab");

    // A bare repository path over the API, default branch, with a name: the new code serves.
    let r = server
        .post("/v1/deployments")
        .json(&json!({"source": bare.to_str().unwrap(), "name": "agent_repo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let dep: serde_json::Value = r.json().await.unwrap();
    let id = dep["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let d = server.get_json(&format!("/v1/deployments/{id}")).await;
        if d["status"] == "deployed" {
            break;
        }
        assert_ne!(d["status"], "failed", "{d}");
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = server
        .get_json(&format!("/v1/deployments/{id}/logs"))
        .await
        .to_string();
    assert!(
        log.contains("reusing the cached Python environment"),
        "unchanged requirements reuse the environment: {log}"
    );
    // The environment was compiled to bytecode when it was built: a warm start (read-only
    // environment) must not compile pydantic and the SDK from source again.
    let venvs = server.data.path().join("venvs");
    let env = std::fs::read_dir(&venvs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a cached environment");
    let site = std::fs::read_dir(env.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().path().join("site-packages"))
        .find(|p| p.is_dir())
        .expect("site-packages");
    for module in ["runloop", "pydantic"] {
        let cache = site.join(module).join("__pycache__");
        let compiled = std::fs::read_dir(&cache)
            .map(|d| d.count())
            .unwrap_or_default();
        assert!(compiled > 0, "no bytecode in {}", cache.display());
    }
    let (_, inv) = server
        .invoke_sync("agent_repo", "echo", json!({"text": "ab"}))
        .await;
    assert_eq!(inv["result"]["text"], "AB");
    assert_eq!(inv["deployment_id"], id);

    // A ref that does not exist fails clearly.
    let (ok, _, err) = server.deploy_cli(Path::new(&url), &["--ref", "no-such-ref"]);
    assert!(!ok);
    assert!(err.contains("git checkout failed"), "{err}");
}

/// `--python` may name an interpreter installed outside the system directories (pyenv, a
/// build under /opt): its installation is bound, read-only, into the sandboxes that build and
/// run the deployment. One whose installation holds the data directory is refused at start.
#[tokio::test]
async fn an_interpreter_outside_the_system_directories_builds_and_runs() {
    // Not under /tmp: every sandbox has a /tmp of its own (the server refuses such a path).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // A real interpreter binary (a copy, not a link into /usr) under a directory of our own.
    let install = dir.path().join("python-install");
    let made = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--copies", "--without-pip"])
        .arg(&install)
        .status()
        .unwrap();
    assert!(made.success(), "python3 -m venv --copies");
    let python = install.join("bin/python3");
    assert!(!std::fs::symlink_metadata(&python).unwrap().is_symlink());
    let python_arg = python.to_str().unwrap();

    let server = Server::start_with(Db::Sqlite, &[("OPENLOOP_PYTHON", python_arg)])
        .await
        .unwrap();
    server.deploy_ok(&fixture("test_agent"));
    let (_, inv) = server
        .invoke_sync("test_agent", "echo", json!({"text": "elsewhere"}))
        .await;
    assert_eq!(inv["status"], "success", "{inv}");
    assert_eq!(inv["result"]["text"], "elsewhere", "{inv}");
    drop(server);

    // `serve` with this interpreter and data directory must refuse to start; its error.
    let refusal = |python: &Path, data: &Path| {
        let out = Command::new(common::bin())
            .args(["serve", "--port", "0", "--python"])
            .arg(python)
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "serve --python {python:?} --data-dir {data:?} started"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A data directory inside the interpreter's installation.
    let err = refusal(&python, &install.join("data"));
    assert!(err.contains("holds the data directory"), "{err}");
    // An interpreter under /tmp.
    let in_tmp = tempfile::tempdir_in("/tmp").unwrap();
    let err = refusal(&in_tmp.path().join("bin/python3"), &dir.path().join("data"));
    assert!(err.contains("under /tmp"), "{err}");
}

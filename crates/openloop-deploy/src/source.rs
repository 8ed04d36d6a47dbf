//! Getting a repository's files into the deployment's directory.

use crate::{DeployError, LogSink};
use std::path::Path;
use tokio::process::Command;

/// Whether `source` names a git repository to clone rather than a directory to copy.
pub fn is_git_source(source: &str) -> bool {
    source.contains("://") || source.starts_with("git@") || source.ends_with(".git") || {
        let p = Path::new(source);
        // A local bare repository.
        p.join("HEAD").is_file() && p.join("objects").is_dir()
    }
}

/// The default project name: the repository's directory or git name.
pub fn project_name(source: &str) -> String {
    let trimmed = source.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    let name = last.strip_suffix(".git").unwrap_or(last);
    if name.is_empty() || name == "." {
        std::env::current_dir()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "project".into())
    } else {
        name.to_string()
    }
}

/// Put the repository at `dest` (which must not exist).
pub async fn fetch(
    source: &str,
    git_ref: Option<&str>,
    dest: &Path,
    log: &LogSink,
) -> Result<(), DeployError> {
    let local = Path::new(source);
    if !is_git_source(source) && git_ref.is_none() {
        if !local.is_dir() {
            return Err(DeployError::Source(format!(
                "{source} is neither a directory on the server nor a git URL"
            )));
        }
        let _ = log.send(format!("copying {source}"));
        let (src, dst) = (local.to_path_buf(), dest.to_path_buf());
        return tokio::task::spawn_blocking(move || copy_tree(&src, &dst))
            .await
            .map_err(|e| DeployError::Source(e.to_string()))?
            .map_err(|e| DeployError::Source(format!("copying {source}: {e}")));
    }
    let _ = log.send(format!("git clone {source}"));
    run_git(
        &[
            "clone",
            "--quiet",
            "--no-hardlinks",
            source,
            &dest.to_string_lossy(),
        ],
        None,
        log,
    )
    .await?;
    if let Some(r) = git_ref {
        let _ = log.send(format!("git checkout {r}"));
        run_git(&["checkout", "--quiet", "--detach", r], Some(dest), log).await?;
    }
    Ok(())
}

/// The commit at the head of `branch` in the repository at `url`, read with
/// `git ls-remote` (nothing is cloned); `None` when the repository has no such branch.
///
/// git never prompts (`GIT_TERMINAL_PROMPT=0`, ssh in batch mode unless the operator set
/// `GIT_SSH_COMMAND`), and is killed when `timeout` passes.
pub async fn ls_remote(
    url: &str,
    branch: &str,
    timeout: std::time::Duration,
) -> Result<Option<String>, DeployError> {
    let wanted = format!("refs/heads/{branch}");
    let mut cmd = Command::new("git");
    // `--` ends the options: a URL can never be taken for one.
    cmd.args(["ls-remote", "--", url, &wanted])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| {
            DeployError::Source(format!(
                "git ls-remote {url} did not answer within {} s",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| DeployError::Source(format!("could not run git: {e}")))?;
    if !out.status.success() {
        return Err(DeployError::Source(format!(
            "git ls-remote {url} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_ls_remote(
        &String::from_utf8_lossy(&out.stdout),
        &wanted,
    ))
}

/// The commit of exactly `wanted` in `git ls-remote` output (its patterns also match refs
/// that merely end with them, such as `refs/heads/x/refs/heads/main`).
fn parse_ls_remote(output: &str, wanted: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (sha, name) = line.split_once('\t')?;
        (name.trim_end() == wanted && !sha.is_empty() && sha.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| sha.to_ascii_lowercase())
    })
}

async fn run_git(args: &[&str], cwd: Option<&Path>, log: &LogSink) -> Result<(), DeployError> {
    let mut cmd = Command::new("git");
    cmd.args(args).env("GIT_TERMINAL_PROMPT", "0");
    if let Some(c) = cwd {
        cmd.current_dir(c);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| DeployError::Source(format!("could not run git: {e}")))?;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let _ = log.send(line.to_string());
    }
    if !out.status.success() {
        return Err(DeployError::Source(format!(
            "git {} failed: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Copy a directory tree, skipping VCS metadata, virtual environments and caches.
/// Symbolic links are copied as links, never followed out of the tree.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if [".git", ".venv", "__pycache__", ".openloop", "node_modules"]
            .iter()
            .any(|n| name == *n)
        {
            continue;
        }
        let ty = entry.file_type()?;
        let to = dst.join(&name);
        if ty.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_remote_output() {
        let out = "1111111111111111111111111111111111111111\trefs/heads/feature/refs/heads/main\n\
                   2222222222222222222222222222222222222222\trefs/heads/main\n";
        assert_eq!(
            parse_ls_remote(out, "refs/heads/main").as_deref(),
            Some("2222222222222222222222222222222222222222")
        );
        assert_eq!(parse_ls_remote(out, "refs/heads/other"), None);
        assert_eq!(parse_ls_remote("", "refs/heads/main"), None);
    }

    /// A local bare repository: its branch head, a missing branch, a missing repository, and
    /// a URL that looks like an option.
    #[tokio::test]
    async fn ls_remote_reads_a_branch_head() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str], cwd: &Path| {
            let ok = std::process::Command::new("git")
                .args(["-c", "user.email=t@t", "-c", "user.name=t"])
                .args(args)
                .current_dir(cwd)
                .output()
                .unwrap();
            assert!(ok.status.success(), "git {args:?}: {ok:?}");
            String::from_utf8_lossy(&ok.stdout).trim().to_string()
        };
        git(
            &["init", "--quiet", "--bare", "-b", "main", "o.git"],
            dir.path(),
        );
        git(&["init", "--quiet", "-b", "main", "w"], dir.path());
        let work = dir.path().join("w");
        git(&["commit", "--quiet", "--allow-empty", "-m", "one"], &work);
        let origin = dir.path().join("o.git");
        git(
            &["push", "--quiet", origin.to_str().unwrap(), "main"],
            &work,
        );
        let head = git(&["rev-parse", "HEAD"], &work);
        let t = std::time::Duration::from_secs(20);
        let url = origin.to_str().unwrap();
        assert_eq!(ls_remote(url, "main", t).await.unwrap(), Some(head));
        assert_eq!(ls_remote(url, "other", t).await.unwrap(), None);
        let missing = dir.path().join("missing.git");
        assert!(ls_remote(missing.to_str().unwrap(), "main", t)
            .await
            .is_err());
        let marker = dir.path().join("ran");
        let hostile = format!("--upload-pack=touch {}", marker.display());
        assert!(ls_remote(&hostile, "main", t).await.is_err());
        assert!(!marker.exists());
    }

    #[test]
    fn names_and_kinds() {
        assert_eq!(
            project_name("examples/example_python_agent"),
            "example_python_agent"
        );
        assert_eq!(
            project_name("examples/example_python_agent/"),
            "example_python_agent"
        );
        assert_eq!(
            project_name("https://github.com/runloopai/example_python_agent.git"),
            "example_python_agent"
        );
        assert_eq!(project_name("git@github.com:me/agent.git"), "agent");
        assert!(is_git_source("file:///tmp/x.git"));
        assert!(is_git_source("https://h/x"));
        assert!(!is_git_source("examples/example_python_agent"));
    }
}

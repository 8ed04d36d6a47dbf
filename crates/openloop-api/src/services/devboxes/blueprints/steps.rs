//! Running a build plan's steps in its build sandbox: the absolute file mounts, each
//! Dockerfile step in order (`RUN` as root, or as the devbox user after `USER user`, its
//! output into the log line by line as it comes), then the setup commands as root.

use super::build::{Failure, Log};
use super::dockerfile::{self, Step};
use super::*;
use openloop_sandbox::agent::OutputChunk;

/// Output of one step kept in memory past what is streamed to the log (bytes per stream).
const STEP_OUTPUT: usize = 64 * 1024;

/// What the steps so far have set.
#[derive(Clone)]
pub(super) struct State {
    env: BTreeMap<String, String>,
    args: BTreeMap<String, String>,
    workdir: String,
    root: bool,
}

impl Devboxes {
    /// The absolute file mounts, then each step, then the setup commands.
    pub(super) async fn run_plan(
        &self,
        sandbox: &Devbox,
        plan: &Plan,
        secret_env: BTreeMap<String, String>,
        log: &mut Log<'_>,
    ) -> Result<(), Failure> {
        let parent_image = plan
            .parent
            .as_ref()
            .and_then(|p| serde_json::from_str::<dockerfile::ImageConfig>(&p.image).ok())
            .unwrap_or_default();
        let mut state = State {
            env: parent_image.env,
            args: BTreeMap::new(),
            workdir: parent_image.workdir.unwrap_or_else(|| "/".into()),
            root: true,
        };
        for (path, contents) in &plan.mounts {
            log.info(&format!("file mount {path}")).await;
            sandbox
                .write_file(path, contents.as_bytes())
                .await
                .map_err(|e| Failure::build(format!("file mount {path}: {e}")))?;
        }
        // The setup commands come last, as root.
        let setup: Vec<Step> = match plan.setup.is_empty() {
            true => Vec::new(),
            false => std::iter::once(Step::User("root".into()))
                .chain(plan.setup.iter().map(|c| Step::Run(c.clone())))
                .collect(),
        };
        for step in plan.dockerfile.steps.iter().chain(&setup) {
            match step {
                Step::Run(cmd) => {
                    log.info(&format!("RUN {cmd}")).await;
                    self.run_step(sandbox, cmd, &state, &secret_env, log)
                        .await?;
                }
                Step::Env(pairs) => {
                    for (k, v) in pairs {
                        log.info(&format!("ENV {k}={v}")).await;
                        state.env.insert(k.clone(), v.clone());
                    }
                }
                Step::Arg(k, default) => {
                    match plan.build_args.get(k).or(default.as_ref()) {
                        Some(v) => state.args.insert(k.clone(), v.clone()),
                        None => state.args.remove(k),
                    };
                }
                Step::Workdir(dir) => {
                    state.workdir = join_path(&state.workdir, dir);
                    log.info(&format!("WORKDIR {}", state.workdir)).await;
                    let as_root = State {
                        root: true,
                        ..state.clone()
                    };
                    let cmd = format!("mkdir -p -- {}", shell_quote(&state.workdir));
                    self.run_quiet(sandbox, &cmd, &as_root).await?;
                }
                Step::User(who) => {
                    log.info(&format!("USER {who}")).await;
                    state.root = dockerfile::is_root_user(who).map_err(Failure::build)?;
                }
                Step::Copy {
                    sources,
                    dest,
                    chown,
                } => {
                    self.copy_step(sandbox, plan, sources, dest, chown.as_deref(), &state, log)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// `COPY`: context files written as root, owned by `chown` if given.
    #[allow(clippy::too_many_arguments)]
    async fn copy_step(
        &self,
        sandbox: &Devbox,
        plan: &Plan,
        sources: &[String],
        dest: &str,
        chown: Option<&str>,
        state: &State,
        log: &mut Log<'_>,
    ) -> Result<(), Failure> {
        let dest_path = join_path(&state.workdir, dest);
        let into_dir = dest.ends_with('/') || sources.len() > 1;
        let mut written = Vec::new();
        for src in sources {
            let prefix = format!("{src}/");
            for (key, contents) in &plan.context {
                let target = if key == src && !into_dir {
                    dest_path.clone()
                } else if key == src {
                    join_path(&dest_path, key.rsplit('/').next().unwrap_or(key))
                } else if src.is_empty() {
                    join_path(&dest_path, key)
                } else if let Some(rest) = key.strip_prefix(&prefix) {
                    join_path(&dest_path, rest)
                } else {
                    continue;
                };
                sandbox
                    .write_file(&target, contents.as_bytes())
                    .await
                    .map_err(|e| Failure::build(format!("COPY {key} to {target}: {e}")))?;
                written.push(target);
            }
        }
        log.info(&format!(
            "COPY {} -> {dest_path} ({} file(s))",
            sources.join(" "),
            written.len()
        ))
        .await;
        if let Some(who) = chown {
            let ids = match dockerfile::is_root_user(who).map_err(Failure::build)? {
                true => "0:0",
                false => "1000:1000",
            };
            let quoted: Vec<String> = written.iter().map(|p| shell_quote(p)).collect();
            let as_root = State {
                root: true,
                ..state.clone()
            };
            let cmd = format!("chown {ids} -- {}", quoted.join(" "));
            self.run_quiet(sandbox, &cmd, &as_root).await?;
        }
        Ok(())
    }

    /// The environment and command line of a step run as the state's user.
    fn step_command(
        cmd: &str,
        state: &State,
        secret_env: &BTreeMap<String, String>,
    ) -> (String, BTreeMap<String, String>) {
        let mut env = BTreeMap::new();
        let (home, user) = match state.root {
            true => ("/root", "root"),
            false => ("/home/user", "user"),
        };
        for (k, v) in [("HOME", home), ("USER", user), ("LOGNAME", user)] {
            env.insert(k.to_string(), v.to_string());
        }
        env.extend(state.args.clone());
        env.extend(state.env.clone());
        env.extend(secret_env.clone());
        let line = match state.root {
            true => cmd.to_string(),
            // The build's root may become the devbox user, mapped in its namespace.
            false => format!(
                "exec setpriv --reuid=1000 --regid=1000 --clear-groups -- /bin/bash -c {}",
                shell_quote(cmd)
            ),
        };
        (line, env)
    }

    /// Run one `RUN` (or setup command), its output into the log line by line as it comes.
    async fn run_step(
        &self,
        sandbox: &Devbox,
        cmd: &str,
        state: &State,
        secret_env: &BTreeMap<String, String>,
        log: &mut Log<'_>,
    ) -> Result<(), Failure> {
        let (line, env) = Self::step_command(cmd, state, secret_env);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let exec = sandbox.exec(
            &line,
            env,
            Some(state.workdir.clone()),
            STEP_OUTPUT,
            Some(tx),
        );
        tokio::pin!(exec);
        let mut pending: Vec<u8> = Vec::new();
        let out = loop {
            tokio::select! {
                out = &mut exec => break out,
                Some(chunk) = rx.recv() => {
                    let (OutputChunk::Stdout(b) | OutputChunk::Stderr(b)) = chunk;
                    pending.extend_from_slice(&b);
                    if let Some(end) = pending.iter().rposition(|&c| c == b'\n') {
                        let done: Vec<u8> = pending.drain(..=end).collect();
                        log.info(&String::from_utf8_lossy(&done)).await;
                    }
                }
            }
        };
        while let Ok(chunk) = rx.try_recv() {
            let (OutputChunk::Stdout(b) | OutputChunk::Stderr(b)) = chunk;
            pending.extend_from_slice(&b);
        }
        if !pending.is_empty() {
            log.info(&String::from_utf8_lossy(&pending)).await;
        }
        let out = out.map_err(|e| Failure::build(format!("RUN {cmd}: {e}")))?;
        match out.exit.shell_code() {
            0 => Ok(()),
            code => Err(Failure::build(format!("RUN {cmd} exited with {code}"))),
        }
    }

    /// A command of the build's own (no log unless it fails).
    async fn run_quiet(&self, sandbox: &Devbox, cmd: &str, state: &State) -> Result<(), Failure> {
        let (line, env) = Self::step_command(cmd, state, &BTreeMap::new());
        let out = sandbox
            .exec(&line, env, Some("/".into()), STEP_OUTPUT, None)
            .await
            .map_err(|e| Failure::build(format!("{cmd}: {e}")))?;
        match out.exit.shell_code() {
            0 => Ok(()),
            code => Err(Failure::build(format!(
                "{cmd} exited with {code}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }
}

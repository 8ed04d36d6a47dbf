//! Starting commands in a devbox and finding its executions (the executions themselves are
//! in [`super::executions`]).

use super::*;

impl Devboxes {
    /// Start a command; returns its execution (already registered).
    pub async fn execute(
        &self,
        id: &str,
        principal: &Principal,
        command: String,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
        command_id: Option<String>,
    ) -> ApiResult<Arc<Execution>> {
        self.execute_with_stdin(id, principal, command, env, cwd, command_id, false)
            .await
    }

    /// [`execute`](Self::execute); with `attach_stdin` the command reads a pipe fed by
    /// `send_std_in` (see [`stdin`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn execute_with_stdin(
        &self,
        id: &str,
        principal: &Principal,
        command: String,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
        command_id: Option<String>,
        attach_stdin: bool,
    ) -> ApiResult<Arc<Execution>> {
        if let Some(cid) = &command_id {
            let known = lock(&self.by_command_id)
                .get(&(id.to_string(), cid.clone()))
                .cloned();
            if let Some(eid) = known {
                self.authorized(id, principal).await?;
                return self.execution(id, &eid, principal).await;
            }
        }
        let live = self.running_live(id, principal).await?;
        let exec = Execution::start(
            openloop_store::new_id("exe"),
            id.to_string(),
            live.devbox.clone(),
            command,
            env,
            cwd,
            live.output.clone(),
            attach_stdin,
        );
        lock(&self.executions).insert(exec.id.clone(), exec.clone());
        if let Some(cid) = command_id {
            lock(&self.by_command_id).insert((id.to_string(), cid), exec.id.clone());
        }
        Ok(exec)
    }

    /// The executions of a devbox still held (they go with the devbox), oldest first.
    pub fn executions_of(&self, devbox_id: &str) -> Vec<Arc<Execution>> {
        let mut all: Vec<Arc<Execution>> = lock(&self.executions)
            .values()
            .filter(|e| e.devbox_id == devbox_id)
            .cloned()
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub async fn execution(
        &self,
        devbox_id: &str,
        execution_id: &str,
        principal: &Principal,
    ) -> ApiResult<Arc<Execution>> {
        self.authorized(devbox_id, principal).await?;
        lock(&self.executions)
            .get(execution_id)
            .cloned()
            .filter(|e| e.devbox_id == devbox_id)
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "execution '{execution_id}' of devbox '{devbox_id}' not found"
                ))
            })
    }
}

//! Devbox quotas: how many live devboxes one run and one API key may hold. A suspended
//! devbox of a key holds no memory and no process, only its disk: it does not count until it
//! is resumed. (A run's suspended devbox still counts: it ends with its run anyway.)

use super::*;

/// Who a live devbox counts against, for the devbox quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Owner {
    Run(String),
    Key(String),
}
impl Owner {
    pub(super) fn of(principal: &Principal) -> Owner {
        match principal {
            Principal::Invocation { invocation_id } => Owner::Run(invocation_id.clone()),
            Principal::Key { key_id } => Owner::Key(key_id.clone()),
        }
    }
}
/// A devbox's place in its owner's quota; given back on drop unless kept (a live devbox
/// gives its place back when it stops).
pub(super) struct Reservation<'a> {
    devboxes: &'a Devboxes,
    id: String,
    kept: bool,
}
impl Reservation<'_> {
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}
impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.devboxes.release(&self.id);
        }
    }
}

impl Devboxes {
    /// Count a new devbox against its creator's quota, or refuse it with the quota's name.
    pub(super) fn reserve(&self, id: &str, principal: &Principal) -> ApiResult<Reservation<'_>> {
        self.reserve_for(id, Owner::of(principal))
    }

    /// Count devbox `id` against `owner`'s quota (a devbox being resumed: a suspended devbox
    /// holds only its disk, so it gave its place back when it was suspended).
    pub(super) fn reserve_for(&self, id: &str, owner: Owner) -> ApiResult<Reservation<'_>> {
        let (limit, message) = match &owner {
            Owner::Run(_) => (
                self.config.devbox_max_per_run,
                format!(
                    "devbox quota exceeded: this run already has {} live devboxes, the most one run may have; shut one down first, or raise the limit with `openloop serve --devbox-max-per-run` (OPENLOOP_DEVBOX_MAX_PER_RUN)",
                    self.config.devbox_max_per_run
                ),
            ),
            Owner::Key(_) => (
                self.config.devbox_max_per_key,
                format!(
                    "devbox quota exceeded: this API key already has {} live devboxes, the most one key may have; shut one down first, or raise the limit with `openloop serve --devbox-max-per-key` (OPENLOOP_DEVBOX_MAX_PER_KEY)",
                    self.config.devbox_max_per_key
                ),
            ),
        };
        let mut owners = lock(&self.owners);
        if owners.values().filter(|o| **o == owner).count() >= limit {
            return Err(ApiError::QuotaExceeded(message));
        }
        owners.insert(id.to_string(), owner);
        Ok(Reservation {
            devboxes: self,
            id: id.to_string(),
            kept: false,
        })
    }
    pub(super) fn release(&self, id: &str) {
        lock(&self.owners).remove(id);
    }
}

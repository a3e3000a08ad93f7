//! blobsteer's Envoy stats: one counter per action, per backend for the actions that have one,
//! and the existence checks' counters.
//!
//! Envoy shows them as `wasmcustom.blobsteer.<action>`,
//! `wasmcustom.blobsteer.backend.<name>.<action>` and `wasmcustom.blobsteer.check.<event>` in
//! `/stats`.

use crate::host::Host;
use blobsteer_core::existence::CheckOutcome;
use blobsteer_core::health::Transition;
use blobsteer_core::manifest::Untouched;
use blobsteer_core::store::StoreEvent;
use blobsteer_core::{Action, Config};
use std::collections::HashMap;

/// What happened to an existence check, besides its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckEvent {
    /// A `HEAD` went to the mirror.
    Sent,
    /// A request waited for a check another request of this worker had sent.
    Coalesced,
    /// The cache knew the blob is on the mirror.
    CachePresent,
    /// The cache knew, recently, that the mirror lacks the blob.
    CacheAbsent,
    /// The backend is down (`blobsteer_core::health`): no check, its clients went on.
    SkippedDown,
    /// The check could not be sent (e.g. the cluster is not defined in Envoy).
    NotSent,
    /// A backend of a fallback chain, not known yet, was passed over by a stream released from
    /// another stream's callback (only the stream the host calls back can send a check).
    PassedOver,
    /// The mirror answered (or did not), as classified.
    Answer(CheckOutcome),
}

impl CheckEvent {
    fn name(self) -> &'static str {
        match self {
            CheckEvent::Sent => "sent",
            CheckEvent::Coalesced => "coalesced",
            CheckEvent::CachePresent => "cache_present",
            CheckEvent::CacheAbsent => "cache_absent",
            CheckEvent::SkippedDown => "skipped_down",
            CheckEvent::NotSent => "not_sent",
            CheckEvent::PassedOver => "passed_over",
            CheckEvent::Answer(outcome) => outcome.as_str(),
        }
    }

    fn all() -> impl Iterator<Item = CheckEvent> {
        [
            CheckEvent::Sent,
            CheckEvent::Coalesced,
            CheckEvent::CachePresent,
            CheckEvent::CacheAbsent,
            CheckEvent::SkippedDown,
            CheckEvent::NotSent,
            CheckEvent::PassedOver,
        ]
        .into_iter()
        .chain(CheckOutcome::ALL.into_iter().map(CheckEvent::Answer))
    }
}

/// Counter ids, defined once per VM when the configuration is accepted. Actions are indexed by
/// their discriminant: counting is an array read and one host call per counter.
pub struct Metrics {
    actions: [Option<u32>; Action::ALL.len()],
    /// For each backend, in configuration order, the ids of its per-backend actions.
    per_backend: Vec<[Option<u32>; Action::ALL.len()]>,
    checks: HashMap<CheckEvent, u32>,
    /// `blobsteer.manifest.untouched.<reason>`; `None` is an upstream answer other than 200.
    untouched: HashMap<Option<Untouched>, u32>,
    /// `blobsteer.store.<event>`, defined only with a store configured.
    store: HashMap<StoreEvent, u32>,
    /// `blobsteer.backend.<name>.down` and `.up`, for the backends that are checked.
    health: HashMap<(String, bool), u32>,
}

impl Metrics {
    /// Defines every counter. A counter the host refuses is simply not counted.
    pub fn define(host: &impl Host, config: &Config) -> Metrics {
        let mut actions = [None; Action::ALL.len()];
        for action in Action::ALL {
            if let Some(slot) = actions.get_mut(action as usize) {
                *slot = define(host, format!("blobsteer.{}", action.as_str()));
            }
        }
        let per_backend = config
            .backends()
            .iter()
            .map(|backend| {
                let mut ids = [None; Action::ALL.len()];
                for action in Action::PER_BACKEND {
                    if let Some(slot) = ids.get_mut(action as usize) {
                        let name =
                            format!("blobsteer.backend.{}.{}", backend.name, action.as_str());
                        *slot = define(host, name);
                    }
                }
                ids
            })
            .collect();
        let checks = CheckEvent::all()
            .filter_map(|e| define(host, format!("blobsteer.check.{}", e.name())).map(|id| (e, id)))
            .collect();
        let untouched = Untouched::ALL
            .iter()
            .map(|&reason| (Some(reason), reason.as_str()))
            .chain([(None, "upstream_status")])
            .filter_map(|(reason, name)| {
                define(host, format!("blobsteer.manifest.untouched.{name}")).map(|id| (reason, id))
            })
            .collect();
        let store = StoreEvent::ALL
            .into_iter()
            .filter(|_| config.manifests.store.is_some())
            .filter_map(|e| {
                define(host, format!("blobsteer.store.{}", e.as_str())).map(|id| (e, id))
            })
            .collect();
        let health = config
            .backends()
            .iter()
            .filter(|b| b.cluster.is_some())
            .flat_map(|b| [(b.name.clone(), false), (b.name.clone(), true)])
            .filter_map(|(name, up)| {
                let stat = format!("blobsteer.backend.{name}.{}", if up { "up" } else { "down" });
                define(host, stat).map(|id| ((name, up), id))
            })
            .collect();
        Metrics { actions, per_backend, checks, untouched, store, health }
    }

    /// Counts a backend going down or coming up.
    pub fn count_health(&self, host: &impl Host, backend: &str, change: Transition) {
        let up = change == Transition::WentUp;
        if let Some(&id) = self.health.get(&(backend.to_string(), up)) {
            increment(host, id);
        }
    }

    /// Counts one action, and its backend's counter when there is one.
    pub fn count(&self, host: &impl Host, action: Action, backend: Option<usize>) {
        let index = action as usize;
        let per_backend =
            backend.and_then(|b| self.per_backend.get(b)).and_then(|ids| ids.get(index)).copied();
        let ids = [self.actions.get(index).copied().flatten(), per_backend.flatten()];
        for id in ids.into_iter().flatten() {
            increment(host, id);
        }
    }

    /// Counts a manifest sent as the upstream sent it, and why.
    pub fn count_untouched(
        &self,
        host: &impl Host,
        reason: Option<Untouched>,
        backend: Option<usize>,
    ) {
        self.count(host, Action::ManifestUntouched, backend);
        if let Some(&id) = self.untouched.get(&reason) {
            increment(host, id);
        }
    }

    /// Counts an event of the fleet's store.
    pub fn count_store(&self, host: &impl Host, event: StoreEvent) {
        if let Some(&id) = self.store.get(&event) {
            increment(host, id);
        }
    }

    /// Counts an existence-check event.
    pub fn count_check(&self, host: &impl Host, event: CheckEvent) {
        if let Some(&id) = self.checks.get(&event) {
            increment(host, id);
        }
    }
}

fn define(host: &impl Host, name: String) -> Option<u32> {
    match host.define_counter(&name) {
        Ok(id) => Some(id),
        Err(refused) => {
            log::warn!("cannot define stat {name}: {refused:?}");
            None
        }
    }
}

fn increment(host: &impl Host, id: u32) {
    if let Err(refused) = host.increment(id) {
        log::debug!("cannot increment stat {id}: {refused:?}");
    }
}

//! blobsteer's Envoy stats: one counter per action, per backend for the actions that have one,
//! and the existence checks' counters.
//!
//! Envoy shows them as `wasmcustom.blobsteer.<action>`,
//! `wasmcustom.blobsteer.backend.<name>.<action>` and `wasmcustom.blobsteer.check.<event>` in
//! `/stats`.

use blobsteer_core::existence::CheckOutcome;
use blobsteer_core::manifest::Untouched;
use blobsteer_core::{Action, Config};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
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
    /// The check could not be sent (e.g. the cluster is not defined in Envoy).
    NotSent,
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
            CheckEvent::NotSent => "not_sent",
            CheckEvent::Answer(outcome) => outcome.as_str(),
        }
    }

    fn all() -> impl Iterator<Item = CheckEvent> {
        [
            CheckEvent::Sent,
            CheckEvent::Coalesced,
            CheckEvent::CachePresent,
            CheckEvent::CacheAbsent,
            CheckEvent::NotSent,
        ]
        .into_iter()
        .chain(CheckOutcome::ALL.into_iter().map(CheckEvent::Answer))
    }
}

/// Counter ids, defined once per VM when the configuration is accepted.
pub struct Metrics {
    actions: HashMap<Action, u32>,
    /// For each backend, in configuration order, the ids of [`Action::PER_BACKEND`].
    per_backend: Vec<HashMap<Action, u32>>,
    checks: HashMap<CheckEvent, u32>,
    /// `blobsteer.manifest.untouched.<reason>`; `None` is an upstream answer other than 200.
    untouched: HashMap<Option<Untouched>, u32>,
}

impl Metrics {
    /// Defines every counter. A counter the host refuses is simply not counted.
    pub fn define(config: &Config) -> Metrics {
        let actions = Action::ALL
            .iter()
            .filter_map(|&a| define(format!("blobsteer.{}", a.as_str())).map(|id| (a, id)))
            .collect();
        let per_backend = config
            .backends()
            .iter()
            .map(|backend| {
                Action::PER_BACKEND
                    .iter()
                    .filter_map(|&a| {
                        define(format!("blobsteer.backend.{}.{}", backend.name, a.as_str()))
                            .map(|id| (a, id))
                    })
                    .collect()
            })
            .collect();
        let checks = CheckEvent::all()
            .filter_map(|e| define(format!("blobsteer.check.{}", e.name())).map(|id| (e, id)))
            .collect();
        let untouched = Untouched::ALL
            .iter()
            .map(|&reason| (Some(reason), reason.as_str()))
            .chain([(None, "upstream_status")])
            .filter_map(|(reason, name)| {
                define(format!("blobsteer.manifest.untouched.{name}")).map(|id| (reason, id))
            })
            .collect();
        Metrics { actions, per_backend, checks, untouched }
    }

    /// Counts one action, and its backend's counter when there is one.
    pub fn count(&self, action: Action, backend: Option<usize>) {
        let per_backend =
            backend.and_then(|b| self.per_backend.get(b)).and_then(|ids| ids.get(&action));
        for &id in self.actions.get(&action).into_iter().chain(per_backend) {
            increment(id);
        }
    }

    /// Counts a manifest sent as the upstream sent it, and why.
    pub fn count_untouched(&self, reason: Option<Untouched>, backend: Option<usize>) {
        self.count(Action::ManifestUntouched, backend);
        if let Some(&id) = self.untouched.get(&reason) {
            increment(id);
        }
    }

    /// Counts an existence-check event.
    pub fn count_check(&self, event: CheckEvent) {
        if let Some(&id) = self.checks.get(&event) {
            increment(id);
        }
    }
}

fn define(name: String) -> Option<u32> {
    match hostcalls::define_metric(MetricType::Counter, &name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("cannot define stat {name}: {status:?}");
            None
        }
    }
}

fn increment(id: u32) {
    if let Err(status) = hostcalls::increment_metric(id, 1) {
        log::debug!("cannot increment stat {id}: {status:?}");
    }
}

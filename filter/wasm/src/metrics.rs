//! blobsteer's Envoy stats: one counter per action, and per backend for the actions that have one.
//!
//! Envoy shows them as `wasmcustom.blobsteer.<action>` and
//! `wasmcustom.blobsteer.backend.<name>.<action>` in `/stats`.

use blobsteer_core::{Action, Config};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Counter ids, defined once per VM when the configuration is accepted.
pub struct Metrics {
    actions: Vec<(Action, u32)>,
    /// For each backend, in configuration order, the ids of [`Action::PER_BACKEND`].
    per_backend: Vec<Vec<(Action, u32)>>,
}

impl Metrics {
    /// Defines every counter. A counter the host refuses is simply not counted.
    pub fn define(config: &Config) -> Metrics {
        let define = |name: String, action: Action| match hostcalls::define_metric(
            MetricType::Counter,
            &name,
        ) {
            Ok(id) => Some((action, id)),
            Err(status) => {
                log::warn!("cannot define stat {name}: {status:?}");
                None
            }
        };
        let actions = Action::ALL
            .iter()
            .filter_map(|&action| define(format!("blobsteer.{}", action.as_str()), action))
            .collect();
        let per_backend = config
            .backends()
            .iter()
            .map(|backend| {
                Action::PER_BACKEND
                    .iter()
                    .filter_map(|&action| {
                        define(
                            format!("blobsteer.backend.{}.{}", backend.name, action.as_str()),
                            action,
                        )
                    })
                    .collect()
            })
            .collect();
        Metrics { actions, per_backend }
    }

    /// Counts one action, and its backend's counter when there is one.
    pub fn count(&self, action: Action, backend: Option<usize>) {
        let backend_ids = backend.and_then(|b| self.per_backend.get(b));
        let ids = self.actions.iter().chain(backend_ids.into_iter().flatten());
        for &(_, id) in ids.filter(|(a, _)| *a == action) {
            if let Err(status) = hostcalls::increment_metric(id, 1) {
                log::debug!("cannot increment stat {id}: {status:?}");
            }
        }
    }
}

//! What every stream of a VM shares: the host, the configuration, the counters, the existence
//! checks in flight and the manifest rewrites kept. Built once per VM when the configuration is
//! accepted; each piece of state here has one owner module that changes it.

use crate::check_registry::CheckRegistry;
use crate::host::{Headers, Host};
use crate::metrics::Metrics;
use blobsteer_core::decision::describe;
use blobsteer_core::manifest::cache::RewriteCache;
use blobsteer_core::store::Lease;
use blobsteer_core::{Action, ClientMatch, Config};
use std::cell::{Cell, RefCell};

/// The filter state name (`wasm.` is Envoy's prefix) of the client's own request line.
pub const CLIENT_REQUEST: &str = "blobsteer_client_request";

/// The state shared by the streams of a VM.
pub struct Vm<H> {
    /// The host every call goes to.
    pub host: H,
    /// The accepted configuration.
    pub config: Config,
    /// Counter ids.
    pub metrics: Metrics,
    /// Existence checks in flight and the streams waiting for them (changed by `check`).
    pub checks: RefCell<CheckRegistry>,
    /// Manifest rewrites this VM made, for the next client of the same backend (owned by
    /// `manifest`).
    pub rewrites: RefCell<RewriteCache>,
    /// Index children being fetched by this VM's streams, bounded by
    /// `manifests.max_child_fetches` (owned by `manifest`).
    pub child_fetches: Cell<u32>,
    /// The lease this VM puts records of the fleet's store under (owned by `store`).
    pub lease: Cell<Option<Lease>>,
}

impl<H: Host> Vm<H> {
    /// The VM's state for an accepted configuration; defines the counters.
    pub fn new(host: H, config: Config) -> Self {
        let metrics = Metrics::define(&host, &config);
        let rewrites = RefCell::new(RewriteCache::new(config.manifests.cache_slots));
        Vm {
            host,
            config,
            metrics,
            checks: RefCell::default(),
            rewrites,
            child_fetches: Cell::new(0),
            lease: Cell::new(None),
        }
    }

    /// Counts an action (and its backend's counter).
    pub fn count(&self, action: Action, backend: Option<usize>) {
        self.metrics.count(&self.host, action, backend);
    }

    /// The decision header's value, only when an operator asked for it.
    pub fn describe(&self, action: Action, client: Option<&ClientMatch>) -> Option<String> {
        self.config.decision_header.as_ref().map(|_| describe(&self.config, action, client))
    }

    /// Adds the decision header to the current stream's response.
    pub fn add_decision_header(&self, value: &str) {
        if let Some(name) = self.config.decision_header.as_deref() {
            self.set_response_header(name, Some(value));
        }
    }

    /// Sets (or removes) a response header of the current stream, logging (not failing) if the
    /// host refuses.
    pub fn set_response_header(&self, name: &str, value: Option<&str>) {
        if let Err(refused) = self.host.set_header(Headers::Response, name, value) {
            log::warn!("cannot set response header {name}: {refused:?}");
        }
    }

    /// Sets a request header of the current stream; false (logged) if the host refuses.
    pub fn set_request_header(&self, name: &str, value: &str) -> bool {
        match self.host.set_header(Headers::Request, name, Some(value)) {
            Ok(()) => true,
            Err(refused) => {
                log::warn!("cannot set request header {name}: {refused:?}");
                false
            }
        }
    }

    /// Answers the current stream with a redirect; false (logged) if the host refused.
    pub fn redirect(&self, status: u16, location: &str, description: Option<&str>) -> bool {
        let mut headers = vec![("location", location)];
        if let (Some(name), Some(value)) = (self.config.decision_header.as_deref(), description) {
            headers.push((name, value));
        }
        match self.host.send_response(status, &headers) {
            Ok(()) => true,
            Err(refused) => {
                log::warn!("cannot send redirect: {refused:?}");
                false
            }
        }
    }

    /// Keeps the client's own method and path where the access log finds them
    /// (`%FILTER_STATE(wasm.blobsteer_client_request:PLAIN)%`), for a request the filter sends
    /// upstream changed (its method, or a produced digest's path).
    pub fn record_client_request(&self, method: &str, path: &str) {
        let value = format!("{method} {path}");
        if let Err(refused) = self.host.set_property(CLIENT_REQUEST, value.as_bytes()) {
            log::debug!("cannot record the client's request: {refused:?}");
        }
    }

    /// The response's `:status`.
    pub fn response_status(&self) -> Option<u16> {
        let value = self.host.header(Headers::Response, ":status")?;
        std::str::from_utf8(&value).ok()?.parse().ok()
    }
}

//! The per-stream context: reads the request, applies the core's decision, and, for backends
//! with an existence check, holds the request until the mirror has said whether it has the blob.

use crate::manifests::{ChildFetch, ManifestJob};
use crate::metrics::{CheckEvent, Metrics};
use blobsteer_core::existence::{CheckOutcome, CheckRequest, Known};
use blobsteer_core::manifest::cache::RewriteCache;
use blobsteer_core::{
    Action, ClientMatch, Config, Request, RequestStep, ResponsePlan, ResponseStep,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action as HostAction, MapType};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// What every stream of a VM shares.
pub struct Filter {
    pub(crate) config: Config,
    pub(crate) metrics: Metrics,
    /// Checks in flight in this VM, by cache entry id: the streams waiting for the answer, the
    /// one that sent the check first. A second request for the same blob waits instead of
    /// sending its own `HEAD`.
    checks: RefCell<HashMap<String, Vec<Waiter>>>,
    /// The answer each resolved waiter got, read back in its response phase.
    answers: RefCell<HashMap<u32, Known>>,
    /// Clusters a check could not be sent to, already reported in the log (once per VM).
    unusable_clusters: RefCell<HashSet<String>>,
    /// Manifest rewrites this VM made, for the next client of the same backend.
    pub(crate) rewrites: RefCell<RewriteCache>,
}

/// A stream held until a check answers, with what it will do if the blob is there.
struct Waiter {
    context_id: u32,
    step: RequestStep,
    client: ClientMatch,
}

impl Filter {
    /// The state shared by the streams of a VM.
    pub fn new(config: Config, metrics: Metrics) -> Self {
        let rewrites = RefCell::new(RewriteCache::new(config.manifests.cache_slots));
        Filter {
            config,
            metrics,
            checks: RefCell::default(),
            answers: RefCell::default(),
            unusable_clusters: RefCell::default(),
            rewrites,
        }
    }

    /// The decision header's value, only when an operator asked for it.
    pub(crate) fn describe(&self, action: Action, client: Option<&ClientMatch>) -> Option<String> {
        self.config.decision_header.as_ref().map(|_| self.config.describe(action, client))
    }

    /// Answers the current stream with a redirect; false if the host refused.
    fn respond(&self, status: u16, location: &str, description: Option<&str>) -> bool {
        let mut headers = vec![("location", location)];
        if let (Some(name), Some(value)) = (self.config.decision_header.as_deref(), description) {
            headers.push((name, value));
        }
        match hostcalls::send_http_response(u32::from(status), headers, None) {
            Ok(()) => true,
            Err(status) => {
                log::warn!("cannot send redirect: {status:?}");
                false
            }
        }
    }

    /// Carries out a steering step on the current stream (the blob is known to be there).
    /// Returns what the stream does next, and the plan for its response if it goes upstream.
    fn steer(&self, step: RequestStep, client: ClientMatch) -> (HostAction, Option<ResponsePlan>) {
        let backend = client.backend();
        match step {
            RequestStep::Respond(redirect) => {
                let description = self.describe(Action::Redirected, Some(&client));
                if self.respond(redirect.status, &redirect.location, description.as_deref()) {
                    self.metrics.count(Action::Redirected, backend);
                    return (HostAction::Pause, None);
                }
                (HostAction::Continue, None)
            }
            RequestStep::Forward(plan) => {
                if plan.send_as_head {
                    let head = hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        ":method",
                        Some("HEAD"),
                    );
                    if let Err(status) = head {
                        log::warn!("cannot send the request as HEAD: {status:?}");
                        return (HostAction::Continue, None);
                    }
                }
                (HostAction::Continue, Some(plan))
            }
            RequestStep::Pass(action) => {
                self.metrics.count(action, backend);
                (HostAction::Continue, None)
            }
            // Manifest steps are not blob steering; the stream handles them itself.
            RequestStep::RewriteManifest(_) | RequestStep::LookupRewritten(_) => {
                (HostAction::Continue, None)
            }
        }
    }

    /// Lets a waiting stream go on with the check's answer: steered if the blob is there,
    /// upstream untouched otherwise. Acts on another stream through the host's effective context;
    /// a stream that is gone is skipped.
    fn resolve(&self, waiter: Waiter, known: Known) {
        if hostcalls::set_effective_context(waiter.context_id).is_err() {
            return;
        }
        self.answers.borrow_mut().insert(waiter.context_id, known);
        let next = match known {
            Known::Present => self.steer(waiter.step, waiter.client).0,
            Known::Absent => {
                self.metrics.count(Action::PassedMirrorMissing, waiter.client.backend());
                HostAction::Continue
            }
        };
        if next == HostAction::Continue {
            if let Err(status) = hostcalls::resume_http_request() {
                log::warn!("cannot resume a request after its check: {status:?}");
            }
        }
    }
}

/// A stream the filter acts on.
pub struct HttpFilter {
    context_id: u32,
    pub(crate) filter: Rc<Filter>,
    pub(crate) pending: Pending,
    /// The check this stream sent, while it has not answered.
    sent_check: Option<CheckRequest>,
}

/// What the response phase still has to do.
pub(crate) enum Pending {
    Nothing,
    /// Add the decision header with this value.
    Describe(String),
    /// A forwarded blob request: judge the upstream's answer.
    Blob {
        plan: ResponsePlan,
        client: ClientMatch,
    },
    /// Held for a check; what happened is in `Filter::answers` once resolved.
    Checking {
        step: RequestStep,
        client: ClientMatch,
    },
    /// A manifest request whose answer may be rewritten.
    Manifest(ManifestJob),
    /// A manifest being read, headers held.
    Buffering(ManifestJob),
    /// An index whose children are being fetched, headers and body held.
    Children(Box<ChildFetch>),
    /// The client asked HEAD, the upstream was asked GET: the body must not reach the client.
    DropBody,
}

/// Streams of a VM without a configuration (never reached: Envoy refuses such a filter).
pub struct PassThrough;

impl Context for PassThrough {}
impl HttpContext for PassThrough {}

impl HttpFilter {
    /// A stream of the filter.
    pub fn new(context_id: u32, filter: Rc<Filter>) -> Self {
        HttpFilter { context_id, filter, pending: Pending::Nothing, sent_check: None }
    }

    fn on_request(&mut self) -> HostAction {
        let headers = match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(status) => {
                log::warn!("cannot read request headers: {status:?}");
                return HostAction::Continue;
            }
        };
        let mut method: &[u8] = b"";
        let mut path: &[u8] = b"";
        let mut forwarded_for: Vec<Cow<'_, str>> = Vec::new();
        for (name, value) in &headers {
            match name.as_str() {
                ":method" => method = value,
                ":path" => path = value,
                // Bytes that are not UTF-8 become U+FFFD, which no address parser accepts.
                "x-forwarded-for" => forwarded_for.push(String::from_utf8_lossy(value)),
                _ => {}
            }
        }
        let forwarded_for: Vec<&str> = forwarded_for.iter().map(|line| line.as_ref()).collect();
        let config = &self.filter.config;
        let source_address = if forwarded_for.is_empty() && config.client_ip.source_address_fallback
        {
            source_address()
        } else {
            None
        };
        let request = Request {
            method: std::str::from_utf8(method).unwrap_or_default(),
            path: std::str::from_utf8(path).unwrap_or_default(),
            forwarded_for: &forwarded_for,
            source_address: source_address.as_deref(),
        };
        let decision = config.decide_request(&request);
        match (decision.step, decision.client, decision.check) {
            (RequestStep::RewriteManifest(plan), client, _) => {
                self.start_manifest(plan, client, &headers)
            }
            (RequestStep::LookupRewritten(lookup), _, _) => self.lookup_rewritten(lookup, &headers),
            (RequestStep::Pass(action), client, _) => {
                self.filter.metrics.count(action, client.as_ref().and_then(ClientMatch::backend));
                if let Some(text) = self.filter.describe(action, client.as_ref()) {
                    self.pending = Pending::Describe(text);
                }
                HostAction::Continue
            }
            (step, Some(client), Some(check)) => self.check_first(step, client, check),
            (step, Some(client), None) => self.steer(step, client),
            // A steering step always comes with its client; without one, leave the request be.
            (_, None, _) => HostAction::Continue,
        }
    }

    /// Steers the stream now and remembers what its response phase must do.
    fn steer(&mut self, step: RequestStep, client: ClientMatch) -> HostAction {
        let (next, plan) = self.filter.steer(step, client);
        if let Some(plan) = plan {
            self.pending = Pending::Blob { plan, client };
        }
        next
    }

    /// Steers only to a mirror known to hold the blob: from the cache, or after a check (sent
    /// by this stream, or already in flight for another one of this VM).
    fn check_first(
        &mut self,
        step: RequestStep,
        client: ClientMatch,
        check: CheckRequest,
    ) -> HostAction {
        let filter = Rc::clone(&self.filter);
        let cached = hostcalls::get_shared_data(&check.cache_key).ok().and_then(|(value, _)| value);
        match check.read(cached.as_deref(), now_s()) {
            Some(Known::Present) => {
                filter.metrics.count_check(CheckEvent::CachePresent);
                return self.steer(step, client);
            }
            Some(Known::Absent) => {
                filter.metrics.count_check(CheckEvent::CacheAbsent);
                return self.pass_mirror_missing(client);
            }
            None => {}
        }
        let waiter = Waiter { context_id: self.context_id, step: step.clone(), client };
        if let Some(waiters) = filter.checks.borrow_mut().get_mut(&check.entry_id) {
            waiters.push(waiter);
            filter.metrics.count_check(CheckEvent::Coalesced);
            self.pending = Pending::Checking { step, client };
            return HostAction::Pause;
        }
        let headers = vec![
            (":method", "HEAD"),
            (":path", check.path.as_str()),
            (":authority", check.authority.as_str()),
            (":scheme", check.scheme),
        ];
        let timeout = Duration::from_millis(u64::from(filter.config.existence_check.timeout_ms));
        match hostcalls::dispatch_http_call(&check.cluster, headers, None, vec![], timeout) {
            Ok(_token) => {
                filter.metrics.count_check(CheckEvent::Sent);
                filter.checks.borrow_mut().insert(check.entry_id.clone(), vec![waiter]);
                self.sent_check = Some(check);
                self.pending = Pending::Checking { step, client };
                HostAction::Pause
            }
            Err(status) => {
                if filter.unusable_clusters.borrow_mut().insert(check.cluster.clone()) {
                    log::error!(
                        "cannot send existence checks to cluster {:?} ({status:?}): is it defined? \
                         Clients of that backend go upstream until it is",
                        check.cluster
                    );
                }
                filter.metrics.count_check(CheckEvent::NotSent);
                self.pass_mirror_missing(client)
            }
        }
    }

    fn pass_mirror_missing(&mut self, client: ClientMatch) -> HostAction {
        self.filter.metrics.count(Action::PassedMirrorMissing, client.backend());
        if let Some(text) = self.filter.describe(Action::PassedMirrorMissing, Some(&client)) {
            self.pending = Pending::Describe(text);
        }
        HostAction::Continue
    }

    /// The mirror answered this stream's check: cache the answer, then release every stream of
    /// this VM that waited for it (this one first).
    fn on_check_answer(&mut self) {
        let Some(check) = self.sent_check.take() else {
            return;
        };
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|value| std::str::from_utf8(&value).ok()?.parse().ok());
        let outcome = CheckOutcome::from_status(status);
        let filter = Rc::clone(&self.filter);
        filter.metrics.count_check(CheckEvent::Answer(outcome));
        let entry = check.entry(outcome.known(), &filter.config.existence_check, now_s());
        if let Err(status) = hostcalls::set_shared_data(&check.cache_key, Some(&entry), None) {
            log::warn!("cannot cache an existence check: {status:?}");
        }
        let waiters = filter.checks.borrow_mut().remove(&check.entry_id).unwrap_or_default();
        for waiter in waiters {
            filter.resolve(waiter, outcome.known());
        }
    }

    fn on_response(&mut self) -> HostAction {
        match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => HostAction::Continue,
            Pending::Describe(text) => {
                self.add_decision_header(&text);
                HostAction::Continue
            }
            Pending::Blob { plan, client } => self.judge_response(plan, client),
            Pending::Manifest(job) => self.manifest_headers(job),
            pending @ (Pending::Buffering(_) | Pending::Children(_) | Pending::DropBody) => {
                self.pending = pending;
                HostAction::Continue
            }
            Pending::Checking { step, client } => {
                let known = self.filter.answers.borrow_mut().remove(&self.context_id);
                match (known, step) {
                    (Some(Known::Present), RequestStep::Forward(plan)) => {
                        self.judge_response(plan, client)
                    }
                    // The redirect was sent when the check answered; this is it going out.
                    (Some(Known::Present), _) => HostAction::Continue,
                    _ => {
                        if let Some(text) =
                            self.filter.describe(Action::PassedMirrorMissing, Some(&client))
                        {
                            self.add_decision_header(&text);
                        }
                        HostAction::Continue
                    }
                }
            }
        }
    }

    /// The upstream answered a forwarded blob request: redirect, rewrite `Location`, or pass.
    fn judge_response(&mut self, plan: ResponsePlan, client: ClientMatch) -> HostAction {
        let status = response_status().unwrap_or(0);
        let decision = plan.decide(status);
        let filter = Rc::clone(&self.filter);
        let description = filter.describe(decision.action, Some(&client));
        match &decision.step {
            ResponseStep::Respond(redirect) => {
                if filter.respond(redirect.status, &redirect.location, description.as_deref()) {
                    filter.metrics.count(decision.action, Some(plan.backend));
                    return HostAction::Pause;
                }
                // Could not replace it: keep the upstream's answer, made whole for a GET.
                if plan.send_as_head {
                    set_response_header("content-length", "0");
                }
                filter.metrics.count(Action::PassedUpstreamAnswer, Some(plan.backend));
                return HostAction::Continue;
            }
            ResponseStep::RewriteLocation(location) => set_response_header("location", location),
            ResponseStep::Pass => {}
        }
        if decision.zero_content_length {
            set_response_header("content-length", "0");
        }
        filter.metrics.count(decision.action, Some(plan.backend));
        if let Some(text) = description {
            self.add_decision_header(&text);
        }
        HostAction::Continue
    }

    fn add_decision_header(&self, value: &str) {
        if let Some(name) = self.filter.config.decision_header.as_deref() {
            set_response_header(name, value);
        }
    }
}

impl Context for HttpFilter {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body: usize,
        _trailers: usize,
    ) {
        if !self.child_arrived(token, body) {
            self.on_check_answer();
        }
    }

    /// A stream that ends while its check is in flight takes the check with it (Envoy cancels
    /// it): the streams that waited for it go upstream now rather than wait forever.
    fn on_done(&mut self) -> bool {
        self.filter.answers.borrow_mut().remove(&self.context_id);
        if let Some(check) = self.sent_check.take() {
            let waiters =
                self.filter.checks.borrow_mut().remove(&check.entry_id).unwrap_or_default();
            for waiter in waiters.into_iter().filter(|w| w.context_id != self.context_id) {
                self.filter.resolve(waiter, Known::Absent);
            }
        }
        true
    }
}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> HostAction {
        self.on_request()
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> HostAction {
        self.on_response()
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        self.manifest_body(body_size, end_of_stream)
    }
}

/// Seconds since the epoch, from the host's clock.
pub(crate) fn now_s() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|now| now.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_secs())
}

/// The downstream connection's address (`ip:port`), for the `source_address_fallback` setting.
fn source_address() -> Option<String> {
    match hostcalls::get_property(vec!["source", "address"]) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok(),
        Ok(None) => None,
        Err(status) => {
            log::debug!("no source.address: {status:?}");
            None
        }
    }
}

/// The response's `:status`.
pub(crate) fn response_status() -> Option<u16> {
    let value = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok()??;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Sets a response header, logging (not failing) if the host refuses.
pub(crate) fn set_response_header(name: &str, value: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value)) {
        log::warn!("cannot set response header {name}: {status:?}");
    }
}

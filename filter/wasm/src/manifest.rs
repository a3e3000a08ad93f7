//! Manifest rewriting in the stream: hold the upstream's manifest, let the core rewrite it
//! (after fetching an index's children from the same upstream), and apply the core's reply to
//! the held response. Every decision is the core's (`blobsteer_core::rewriting`); this module
//! reads what the core asks for, dispatches, and applies.

use crate::callout::{Answer, Callouts, Purpose};
use crate::check;
use crate::host::{Headers, Host};
use crate::vm::Vm;
use blobsteer_core::manifest::{Child, Mapping, Untouched, SECRET_KEY};
use blobsteer_core::rewriting::{
    self, BodyStep, HeadVerdict, Leave, ManifestJob, Reply, UpstreamHead,
};
use blobsteer_core::{Action, ClientMatch, DigestLookup, ManifestPlan};
use proxy_wasm::types::Action as HostAction;
use std::collections::HashMap;
use std::time::Duration;

/// Where a manifest response is.
#[derive(Debug)]
pub enum Phase {
    /// Sent upstream; its headers decide.
    Requested(ManifestJob),
    /// Headers held, the body being buffered.
    Buffering(ManifestJob),
    /// Headers and body held while an index's children are fetched.
    Children(Box<ChildFetch>),
    /// The client asked `HEAD`, the upstream was asked `GET`: the body must not reach the
    /// client.
    DropBody,
}

/// An index whose children are being fetched (each child's callout is recorded with its
/// digest).
#[derive(Debug)]
pub struct ChildFetch {
    job: ManifestJob,
    index: Vec<u8>,
    body_size: usize,
    outstanding: usize,
    fetched: HashMap<String, Child>,
}

/// A tag request of a client with a backend: the upstream's answer will be rewritten.
/// `header` gives the request's headers, as read once by the stream.
pub fn start<H: Host>(
    vm: &Vm<H>,
    plan: ManifestPlan,
    client: Option<ClientMatch>,
    header: impl Fn(&str) -> Option<String>,
) -> (HostAction, Option<Phase>) {
    if plan.send_as_get && !vm.set_request_header(":method", "GET") {
        return (HostAction::Continue, None);
    }
    (HostAction::Continue, Some(Phase::Requested(ManifestJob::new(plan, client, header))))
}

/// A manifest asked for by digest: if the filter produced it, ask the upstream for the original
/// and serve its rewrite again; `None` if it did not (a pinned pull, left alone).
pub fn lookup<H: Host>(
    vm: &Vm<H>,
    lookup: DigestLookup,
    header: impl Fn(&str) -> Option<String>,
) -> Option<(HostAction, Option<Phase>)> {
    let keys = rewriting::lookup_keys(&vm.config, &lookup, &secret(vm));
    let remembered = keys.map(|key| vm.host.shared(&key));
    let remembered = [remembered[0].as_deref(), remembered[1].as_deref()];
    let reissue = rewriting::reissue(&vm.config, lookup, remembered)?;
    if !vm.set_request_header(":path", &reissue.original_path) {
        return Some((HostAction::Continue, None));
    }
    Some(start(vm, reissue.plan, None, header))
}

impl Phase {
    /// The upstream's response headers.
    pub fn on_response_headers<H: Host>(self, vm: &Vm<H>) -> (HostAction, Option<Phase>) {
        let Phase::Requested(mut job) = self else {
            return (HostAction::Continue, Some(self));
        };
        // One host call for the whole map: each call costs more than a header's bytes do.
        let headers = vm.host.headers(Headers::Response);
        let head =
            UpstreamHead::from_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        match job.judge_head(&vm.config, head) {
            HeadVerdict::Hold => (HostAction::Pause, Some(Phase::Buffering(job))),
            HeadVerdict::Leave(leave) => (HostAction::Continue, let_go(vm, &job, leave, None)),
        }
    }

    /// A body callback: buffered until whole, then rewritten (or its children fetched).
    pub fn on_response_body<H: Host>(
        self,
        vm: &Vm<H>,
        callouts: &mut Callouts,
        body_size: usize,
        end_of_stream: bool,
    ) -> (HostAction, Option<Phase>) {
        match self {
            Phase::DropBody => {
                replace_body(vm, body_size, b"");
                (HostAction::Continue, Some(Phase::DropBody))
            }
            Phase::Buffering(job) => {
                if let Some(leave) = job.judge_body_size(&vm.config, body_size) {
                    return (HostAction::Continue, let_go(vm, &job, leave, Some(body_size)));
                }
                if !end_of_stream {
                    return (HostAction::Pause, Some(Phase::Buffering(job)));
                }
                let body = vm.host.response_body(body_size).unwrap_or_default();
                let known = |c: &_| check::cached(vm, c);
                let step = job.on_body(&vm.config, &body, &mut vm.rewrites.borrow_mut(), &known);
                match step {
                    BodyStep::Reply(reply) => {
                        apply(vm, &job, &reply, body_size);
                        (HostAction::Continue, None)
                    }
                    BodyStep::FetchChildren(children) => {
                        fetch_children(vm, callouts, job, body, body_size, children)
                    }
                }
            }
            other => (HostAction::Continue, Some(other)),
        }
    }

    /// A child's answer arrived (or failed); once all are in, the index is completed and the
    /// response resumed.
    pub fn on_child<H: Host>(self, vm: &Vm<H>, digest: String, answer: Answer) -> Option<Phase> {
        let Phase::Children(mut fetch) = self else {
            return Some(self);
        };
        fetch.outstanding = fetch.outstanding.saturating_sub(1);
        let fits = ManifestJob::child_fits(&vm.config, answer.body_size());
        if answer.status() == Some(200) && fits {
            let bytes = answer.body(&vm.host).unwrap_or_default();
            let content_type =
                answer.header(&vm.host, "content-type").and_then(|v| String::from_utf8(v).ok());
            fetch.fetched.insert(digest, Child { bytes, content_type });
        }
        if fetch.outstanding > 0 {
            return Some(Phase::Children(fetch));
        }
        let ChildFetch { job, index, body_size, fetched, .. } = *fetch;
        let known = |c: &_| check::cached(vm, c);
        let reply =
            job.complete(&vm.config, &index, &fetched, &mut vm.rewrites.borrow_mut(), &known);
        apply(vm, &job, &reply, body_size);
        if let Err(refused) = vm.host.resume_response() {
            log::warn!("cannot resume the response after an index's children: {refused:?}");
        }
        None
    }
}

/// Dispatches every child of an index to the route's cluster and holds the response. The
/// VM's budget of child fetches is taken for all of them first: an index it cannot take goes
/// out untouched without any fetch. If a dispatch is refused, the index goes out untouched and
/// the fetches already sent are left to answer into nothing (their budget returns as they do).
fn fetch_children<H: Host>(
    vm: &Vm<H>,
    callouts: &mut Callouts,
    job: ManifestJob,
    index: Vec<u8>,
    body_size: usize,
    children: Vec<String>,
) -> (HostAction, Option<Phase>) {
    let give_up = |reason| {
        apply(vm, &job, &job.give_up(reason), body_size);
        (HostAction::Continue, None)
    };
    // The route's cluster, asked only now: an image manifest never needs it.
    let Some(cluster) = route_cluster(vm) else {
        return give_up(Untouched::ChildUnavailable);
    };
    let wanted = u32::try_from(children.len()).unwrap_or(u32::MAX);
    let in_flight = vm.child_fetches.get();
    if in_flight.saturating_add(wanted) > vm.config.manifests.max_child_fetches {
        return give_up(Untouched::FetchesBusy);
    }
    vm.child_fetches.set(in_flight + wanted);
    let timeout = Duration::from_millis(u64::from(vm.config.manifests.child_timeout_ms));
    let outstanding = children.len();
    for (sent, child) in children.into_iter().enumerate() {
        let request = job.child_request(&child);
        let headers: Vec<(&str, &str)> =
            request.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        match vm.host.dispatch(&cluster, &headers, timeout) {
            Ok(token) => callouts.record(token, Purpose::Child(child)),
            Err(refused) => {
                log::warn!("cannot fetch index child {child} from {cluster}: {refused:?}");
                release_fetches(vm, outstanding - sent);
                return give_up(Untouched::ChildUnavailable);
            }
        }
    }
    let fetch = ChildFetch { job, index, body_size, outstanding, fetched: HashMap::new() };
    (HostAction::Pause, Some(Phase::Children(Box::new(fetch))))
}

/// Returns `count` child fetches to the VM's budget: they answered, failed, or their stream
/// ended (Envoy cancels a stream's callouts with it).
pub fn release_fetches<H: Host>(vm: &Vm<H>, count: usize) {
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    vm.child_fetches.set(vm.child_fetches.get().saturating_sub(count));
}

/// An answer the core leaves alone: counted with its reason; the body dropped for a `HEAD`
/// client (now, if it is already buffered, else as it comes).
fn let_go<H: Host>(
    vm: &Vm<H>,
    job: &ManifestJob,
    leave: Leave,
    buffered: Option<usize>,
) -> Option<Phase> {
    vm.metrics.count_untouched(&vm.host, leave.reason, Some(job.plan.backend));
    if let Some(text) = vm.describe(Action::ManifestUntouched, job.client.as_ref()) {
        vm.add_decision_header(&text);
    }
    if !leave.drop_body {
        return None;
    }
    if let Some(size) = buffered {
        replace_body(vm, size, b"");
    }
    Some(Phase::DropBody)
}

/// Sends the core's reply on the held response: remembers the digests it produced, edits the
/// headers and body, counts, and names the decision.
fn apply<H: Host>(vm: &Vm<H>, job: &ManifestJob, reply: &Reply, body_size: usize) {
    let backend = Some(job.plan.backend);
    match reply.counted() {
        (_, Some(reason)) => vm.metrics.count_untouched(&vm.host, Some(reason), backend),
        (action, None) => vm.count(action, backend),
    }
    if let Reply::Rewritten { remember, .. } = reply {
        let (secret, now) = (secret(vm), vm.host.now_s());
        for mapping in remember {
            let places =
                Mapping::places(&mapping.digest, vm.config.manifests.mapping_slots, &secret);
            let held = places.clone().map(|key| vm.host.shared(&key));
            let at = Mapping::choose(&mapping.digest, [held[0].as_deref(), held[1].as_deref()]);
            let key = places.get(at).map_or("", String::as_str);
            if let Err(refused) = vm.host.set_shared(key, &mapping.encode(now)) {
                log::warn!("cannot remember a rewritten digest ({key}): {refused:?}");
            }
        }
    }
    let edit = job.edit(reply);
    if let Some(status) = edit.status {
        vm.set_response_header(":status", Some(&status.to_string()));
    }
    for (name, value) in &edit.set {
        vm.set_response_header(name, Some(value));
    }
    for name in edit.remove {
        vm.set_response_header(name, None);
    }
    if let Some(body) = edit.body {
        replace_body(vm, body_size, body);
    }
    let description = reply.described().and_then(|a| vm.describe(a, job.client.as_ref()));
    if let Some(text) = description {
        vm.add_decision_header(&text);
    }
}

/// The Envoy's secret that places produced digests (shared by its workers): made at first use,
/// then read back, so the workers that race to make it end up with the one written last.
fn secret<H: Host>(vm: &Vm<H>) -> Vec<u8> {
    if let Some(secret) = vm.host.shared(SECRET_KEY).filter(|s| !s.is_empty()) {
        return secret;
    }
    let made = format!("{:016x}{:016x}", vm.host.random(), vm.host.random()).into_bytes();
    if let Err(refused) = vm.host.set_shared(SECRET_KEY, &made) {
        log::warn!("cannot keep the secret that places produced digests: {refused:?}");
    }
    vm.host.shared(SECRET_KEY).filter(|s| !s.is_empty()).unwrap_or(made)
}

/// The upstream cluster of the route (`xds.cluster_name`).
fn route_cluster<H: Host>(vm: &Vm<H>) -> Option<String> {
    let value = vm.host.property(&["xds", "cluster_name"])?;
    String::from_utf8(value).ok().filter(|name| !name.is_empty())
}

/// Replaces the buffered response body (`size` bytes) with `value`.
fn replace_body<H: Host>(vm: &Vm<H>, size: usize, value: &[u8]) {
    if let Err(refused) = vm.host.set_response_body(size, value) {
        log::warn!("cannot replace the response body: {refused:?}");
    }
}

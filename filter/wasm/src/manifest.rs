//! Manifest rewriting in the stream: hold the upstream's manifest, let the core rewrite it
//! (after fetching an index's children from the same upstream), and apply the core's reply to
//! the held response. Every decision is the core's (`blobsteer_core::rewriting`); this module
//! reads what the core asks for, dispatches, and applies.

use crate::callout::{Answer, Callouts, Purpose};
use crate::check;
use crate::host::{Headers, Host};
use crate::memory::Memory;
use crate::store;
use crate::vm::Vm;
use blobsteer_core::manifest::{Child, Mapping, Untouched};
use blobsteer_core::rewriting::{
    self, BodyStep, HeadVerdict, Leave, ManifestJob, Reply, UpstreamHead,
};
use blobsteer_core::store::{Created, StoreEvent, StoreSettings};
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
    /// A rewrite held until the fleet's store has the records of its digests.
    Storing(Box<Storing>),
    /// A digest this Envoy does not know, asked of the fleet's store (the request is held).
    Looking(DigestLookup),
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

/// A rewrite whose digests the fleet's store must hold before any client sees them.
#[derive(Debug)]
pub struct Storing {
    job: ManifestJob,
    reply: Reply,
    body_size: usize,
    /// The records not yet known to be in the store.
    records: Vec<Mapping>,
    /// Creations sent (a second one writes what another replica's race left missing).
    creations: u8,
    /// Records found old are being written again.
    renewing: bool,
}

/// What a request by digest leads to.
#[derive(Debug)]
pub enum Looked {
    /// A digest this Envoy produced (or learned): its original is asked for.
    Found((HostAction, Option<Phase>)),
    /// Not known here: the fleet's store is asked, the request held.
    Asking(Phase),
    /// A digest nobody produced: untouched.
    Unknown,
}

/// What a manifest phase becomes after a store's answer.
#[derive(Debug)]
pub enum AfterStore {
    /// Still waiting, or now in this phase.
    Phase(Box<Phase>),
    /// Nothing left to do.
    Done,
    /// A digest the store does not know: the request went upstream untouched.
    Unknown,
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

/// A manifest asked for by digest: if the filter produced it (this Envoy remembers it, or the
/// fleet's store has it), ask the upstream for the original and serve its rewrite again.
pub fn lookup<H: Host>(
    vm: &Vm<H>,
    callouts: &mut Callouts,
    lookup: DigestLookup,
    header: impl Fn(&str) -> Option<String>,
) -> Looked {
    let memory = Memory::open(vm);
    let remembered = memory.recall(&lookup.digest);
    let remembered = [remembered[0].as_deref(), remembered[1].as_deref()];
    let store = vm.config.manifests.store.as_ref();
    if let Some(settings) = store {
        renew_if_stale(&memory, settings, callouts, &lookup.digest, remembered);
    }
    if let Some(found) = reissue(vm, lookup.clone(), remembered, header) {
        return Looked::Found(found);
    }
    let Some(settings) = store else {
        return Looked::Unknown;
    };
    let call = settings.read(&lookup.repository, &lookup.digest);
    if store::send(vm, settings, callouts, &call, Purpose::StoreRead) {
        Looked::Asking(Phase::Looking(lookup))
    } else {
        Looked::Unknown
    }
}

/// The request for the original of a digest remembered in `remembered`, if it is one.
fn reissue<H: Host>(
    vm: &Vm<H>,
    lookup: DigestLookup,
    remembered: [Option<&[u8]>; 2],
    header: impl Fn(&str) -> Option<String>,
) -> Option<(HostAction, Option<Phase>)> {
    let reissue = rewriting::reissue(&vm.config, lookup, remembered)?;
    if !vm.set_request_header(":path", &reissue.original_path) {
        return Some((HostAction::Continue, None));
    }
    Some(start(vm, reissue.plan, None, header))
}

/// A remembered record older than a quarter of the store's TTL is written to the store again
/// (under the VM's lease; without a fresh one, a lease is asked for the next use), so a digest
/// in use never expires. Nothing waits for it.
fn renew_if_stale<H: Host>(
    memory: &Memory<'_, H>,
    settings: &StoreSettings,
    callouts: &mut Callouts,
    digest: &str,
    remembered: [Option<&[u8]>; 2],
) {
    let vm = memory.vm();
    let now = vm.host.now_s();
    let Some((mapping, at)) = remembered.iter().find_map(|v| Mapping::decode_at(*v, digest)) else {
        return;
    };
    if !settings.is_stale(at, now) {
        return;
    }
    match store::fresh_lease(vm, settings) {
        Some(lease) => {
            let call = settings.renew(&[&mapping], &lease, now);
            if store::send(vm, settings, callouts, &call, Purpose::StoreRenew) {
                memory.remember(digest, &mapping.encode(now));
            }
        }
        None => {
            store::send(vm, settings, callouts, &settings.grant(), Purpose::StoreLease);
        }
    }
}

/// The reply is known: sent now, or, for a new rewrite that the fleet's store must hold first,
/// held until it does. `None` once it is applied.
fn finish<H: Host>(
    vm: &Vm<H>,
    callouts: &mut Callouts,
    job: ManifestJob,
    reply: Reply,
    body_size: usize,
) -> Option<Phase> {
    let (Some(settings), Reply::Rewritten { remember, action: Action::ManifestRewritten, .. }) =
        (vm.config.manifests.store.as_ref(), &reply)
    else {
        apply(vm, &job, &reply, body_size);
        return None;
    };
    // Records this Envoy wrote (or read) within a quarter of the TTL are known to be there.
    let now = vm.host.now_s();
    let memory = Memory::open(vm);
    let records: Vec<Mapping> = remember
        .iter()
        .filter(|record| {
            let held = memory.recall(&record.digest);
            let known = held.iter().find_map(|v| Mapping::decode_at(v.as_deref(), &record.digest));
            !known.is_some_and(|(m, at)| m == **record && !settings.is_stale(at, now))
        })
        .cloned()
        .collect();
    if records.is_empty() {
        apply(vm, &job, &reply, body_size);
        return None;
    }
    let storing = Storing { job, reply, body_size, records, creations: 0, renewing: false };
    storing.send_next(vm, settings, callouts)
}

impl Storing {
    /// Sends the next call: a lease if the VM has no fresh one, else the creation (or renewal)
    /// of the records. Gives up if the host refuses it.
    fn send_next<H: Host>(
        mut self,
        vm: &Vm<H>,
        settings: &StoreSettings,
        callouts: &mut Callouts,
    ) -> Option<Phase> {
        let now = vm.host.now_s();
        let sent = match store::fresh_lease(vm, settings) {
            Some(lease) if self.renewing => {
                let records: Vec<&Mapping> = self.records.iter().collect();
                let call = settings.renew(&records, &lease, now);
                store::send(vm, settings, callouts, &call, Purpose::StoreWrite)
            }
            Some(lease) => {
                self.creations += 1;
                let call = settings.create(&self.records, &lease, now);
                store::send(vm, settings, callouts, &call, Purpose::StoreWrite)
            }
            None => store::send(vm, settings, callouts, &settings.grant(), Purpose::StoreLease),
        };
        if sent {
            return Some(Phase::Storing(Box::new(self)));
        }
        self.give_up(vm);
        None
    }

    /// The store's answer to this rewrite's last call.
    fn answered<H: Host>(
        mut self,
        vm: &Vm<H>,
        settings: &StoreSettings,
        callouts: &mut Callouts,
        purpose: &Purpose,
        answer: Answer,
    ) -> Option<Phase> {
        if *purpose == Purpose::StoreLease {
            if store::take_lease(vm, answer).is_none() {
                self.give_up(vm);
                return None;
            }
            return self.send_next(vm, settings, callouts);
        }
        let Ok(body) = store::body(vm, answer) else {
            if self.renewing {
                self.send(vm);
            } else {
                self.give_up(vm);
            }
            return None;
        };
        if self.renewing {
            vm.metrics.count_store(&vm.host, StoreEvent::Renewed);
            self.send(vm);
            return None;
        }
        match settings.read_created(&body, &self.records, vm.host.now_s()) {
            Ok(Created::Stored { stale }) => {
                vm.metrics.count_store(&vm.host, StoreEvent::Written);
                if stale.is_empty() {
                    self.send(vm);
                    return None;
                }
                self.records = stale.iter().filter_map(|&i| self.records.get(i).cloned()).collect();
                self.renewing = true;
                self.send_next(vm, settings, callouts)
            }
            Ok(Created::Missing(missing)) if self.creations < 2 => {
                self.records =
                    missing.iter().filter_map(|&i| self.records.get(i).cloned()).collect();
                self.send_next(vm, settings, callouts)
            }
            Ok(Created::Conflict) => {
                vm.metrics.count_store(&vm.host, StoreEvent::Conflict);
                self.give_up(vm);
                None
            }
            Ok(Created::Missing(_)) | Err(_) => {
                vm.metrics.count_store(&vm.host, StoreEvent::Failed);
                self.give_up(vm);
                None
            }
        }
    }

    /// The store holds every record: the rewrite goes out.
    fn send<H: Host>(self, vm: &Vm<H>) {
        apply(vm, &self.job, &self.reply, self.body_size);
        resume(vm);
    }

    /// The store cannot be trusted with the digest: the original goes out.
    fn give_up<H: Host>(self, vm: &Vm<H>) {
        apply(vm, &self.job, &self.job.give_up(Untouched::StoreUnavailable), self.body_size);
        resume(vm);
    }
}

/// Lets the held response go on.
fn resume<H: Host>(vm: &Vm<H>) {
    if let Err(refused) = vm.host.resume_response() {
        log::warn!("cannot resume the response after the store answered: {refused:?}");
    }
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
                    BodyStep::Reply(reply) => match finish(vm, callouts, job, reply, body_size) {
                        Some(held) => (HostAction::Pause, Some(held)),
                        None => (HostAction::Continue, None),
                    },
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
    pub fn on_child<H: Host>(
        self,
        vm: &Vm<H>,
        callouts: &mut Callouts,
        digest: String,
        answer: Answer,
    ) -> Option<Phase> {
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
        if let Some(held) = finish(vm, callouts, job, reply, body_size) {
            return Some(held);
        }
        if let Err(refused) = vm.host.resume_response() {
            log::warn!("cannot resume the response after an index's children: {refused:?}");
        }
        None
    }

    /// The fleet's store answered one of this phase's calls.
    pub fn on_store<H: Host>(
        self,
        vm: &Vm<H>,
        callouts: &mut Callouts,
        purpose: &Purpose,
        answer: Answer,
    ) -> AfterStore {
        let Some(settings) = vm.config.manifests.store.as_ref() else {
            return AfterStore::Phase(Box::new(self));
        };
        match self {
            Phase::Storing(storing) => {
                match storing.answered(vm, settings, callouts, purpose, answer) {
                    Some(phase) => AfterStore::Phase(Box::new(phase)),
                    None => AfterStore::Done,
                }
            }
            Phase::Looking(lookup) if *purpose == Purpose::StoreRead => {
                looked_up(vm, settings, callouts, lookup, answer)
            }
            other => {
                // A lease asked for a later renewal (`renew_if_stale`): kept for the VM.
                if *purpose == Purpose::StoreLease {
                    store::take_lease(vm, answer);
                }
                AfterStore::Phase(Box::new(other))
            }
        }
    }
}

/// The store's answer to a digest this Envoy did not know: a record is remembered here and its
/// original asked for; anything else leaves the request untouched. The request goes on.
fn looked_up<H: Host>(
    vm: &Vm<H>,
    settings: &StoreSettings,
    callouts: &mut Callouts,
    lookup: DigestLookup,
    answer: Answer,
) -> AfterStore {
    let found = store::body(vm, answer)
        .ok()
        .map(|body| settings.read_record(&body, &lookup.repository, &lookup.digest));
    let next = match found {
        Some(Ok(Some((value, _)))) => {
            vm.metrics.count_store(&vm.host, StoreEvent::Hit);
            let memory = Memory::open(vm);
            memory.remember(&lookup.digest, &value);
            renew_if_stale(&memory, settings, callouts, &lookup.digest, [Some(&value), None]);
            let headers = vm.host.headers(Headers::Request);
            let header = |name: &str| {
                let value = headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())?;
                String::from_utf8(value).ok()
            };
            match reissue(vm, lookup, [Some(&value), None], header) {
                Some((_, Some(phase))) => AfterStore::Phase(Box::new(phase)),
                Some((_, None)) => AfterStore::Done,
                None => AfterStore::Unknown,
            }
        }
        Some(Ok(None)) => {
            vm.metrics.count_store(&vm.host, StoreEvent::Miss);
            AfterStore::Unknown
        }
        Some(Err(_)) => {
            vm.metrics.count_store(&vm.host, StoreEvent::Failed);
            AfterStore::Unknown
        }
        None => AfterStore::Unknown,
    };
    if let Err(refused) = vm.host.resume_request() {
        log::warn!("cannot resume a request after the store answered: {refused:?}");
    }
    next
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
        match vm.host.dispatch(&cluster, &headers, None, timeout) {
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
        let (memory, now) = (Memory::open(vm), vm.host.now_s());
        for mapping in remember {
            memory.remember(&mapping.digest, &mapping.encode(now));
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

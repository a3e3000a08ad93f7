//! One HTTP stream: reads the request, asks the core, and hands the stream to the phase that
//! owns what happens next (blob steering, an existence check, manifest rewriting). Host events
//! come in through the methods here; callout answers are routed by token.

use crate::blob::{self, Answered, Forwarded};
use crate::callout::{Answer, Awaited, Callouts, Purpose};
use crate::check::{self, Asker, Held, Outcome};
use crate::check_registry::{Steer, Then};
use crate::host::{Delivered, Headers, Host};
use crate::manifest::{self, AfterStore, Looked};
use crate::store;
use crate::vm::Vm;
use blobsteer_core::decision::{decide_route, route};
use blobsteer_core::existence::CheckRequest;
use blobsteer_core::store::StoreEvent;
use blobsteer_core::{Action, ClientMatch, Decision, Request, RequestStep};
use proxy_wasm::types::Action as HostAction;
use std::borrow::Cow;
use std::rc::Rc;

/// What the response phase of a stream still has to do.
#[derive(Debug, Default)]
enum Phase {
    /// Nothing.
    #[default]
    Idle,
    /// Add the decision header with this value.
    Describe(String),
    /// A blob request sent upstream: judge its answer.
    Blob(Forwarded),
    /// Held for (or released by) an existence check.
    Check(Held),
    /// A manifest response that may be rewritten.
    Manifest(manifest::Phase),
}

/// A stream the filter acts on.
pub struct Stream<H> {
    context_id: u32,
    vm: Rc<Vm<H>>,
    phase: Phase,
    callouts: Callouts,
}

impl<H: Host> Stream<H> {
    /// A stream of the VM.
    pub fn new(context_id: u32, vm: Rc<Vm<H>>) -> Self {
        Stream { context_id, vm, phase: Phase::Idle, callouts: Callouts::default() }
    }

    /// The request headers are in: decide. The headers are read in one host call: each call
    /// crosses into the host and back (about as much as a whole map's bytes cost), and a blob
    /// request needs three of them. Envoy joins repeated `x-forwarded-for` lines of this
    /// inline header into one value.
    pub fn on_request_headers(&mut self, end_of_stream: bool) -> HostAction {
        let vm = Rc::clone(&self.vm);
        let headers = vm.host.headers(Headers::Request);
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let text = |name: &str| header(name).and_then(|v| std::str::from_utf8(v).ok());
        let path = text(":path").unwrap_or_default();
        let route = route(&vm.config, path);
        // Bytes that are not UTF-8 become U+FFFD, which no address parser accepts.
        let forwarded_for: Vec<Cow<'_, str>> = headers
            .iter()
            .filter(|(name, _)| route.needs_client() && name == "x-forwarded-for")
            .map(|(_, line)| String::from_utf8_lossy(line))
            .collect();
        let source = match (forwarded_for.is_empty(), vm.config.client_ip.source_address_fallback) {
            (true, true) if route.needs_client() => vm.host.property(&["source", "address"]),
            _ => None,
        };
        let lines: Vec<&str> = forwarded_for.iter().map(AsRef::as_ref).collect();
        let request = Request {
            method: text(":method").unwrap_or_default(),
            path,
            forwarded_for: &lines,
            source_address: source.as_deref().and_then(|s| std::str::from_utf8(s).ok()),
            user_agent: route.is_manifest().then(|| text("user-agent")).flatten(),
            has_body: !end_of_stream,
        };
        let Decision { step, client, check, fallbacks } = decide_route(&vm.config, route, &request);
        if step.changes_request() {
            vm.record_client_request(request.method, request.path);
        }
        // What a manifest job keeps of the request (the headers it forwards to children).
        let owned = |name: &str| text(name).map(str::to_string);
        match (step, client, check) {
            (RequestStep::RewriteManifest(plan), client, _) => {
                self.manifest(manifest::start(&vm, plan, client, owned))
            }
            (RequestStep::LookupRewritten(lookup), _, _) => {
                match manifest::lookup(&vm, &mut self.callouts, lookup, owned) {
                    Looked::Found(step) => self.manifest(step),
                    Looked::Asking(phase) => {
                        self.phase = Phase::Manifest(phase);
                        HostAction::Pause
                    }
                    Looked::Unknown => self.pass(Action::PassedPinnedManifest, None),
                }
            }
            (RequestStep::Pass(action), client, _) => self.pass(action, client.as_ref()),
            (RequestStep::LeaveManifest(reason), _, _) => {
                vm.metrics.count_untouched(&vm.host, Some(reason), None);
                if let Some(text) = vm.describe(Action::ManifestUntouched, None) {
                    self.phase = Phase::Describe(text);
                }
                HostAction::Continue
            }
            (
                RequestStep::Respond(redirect),
                Some(
                    client @ (ClientMatch::Backend { backend, .. }
                    | ClientMatch::Default { backend, .. }),
                ),
                Some(check),
            ) => {
                let steer = Steer::Redirect { redirect, backend };
                self.check(Then { steer, chain: fallbacks }, client, check)
            }
            (step, Some(client), _) => {
                let (next, forwarded) = blob::steer(&vm, step, client, fallbacks);
                if let Some(forwarded) = forwarded {
                    self.phase = Phase::Blob(forwarded);
                }
                next
            }
            // A steering step always comes with its client; without one, leave the request be.
            (_, None, _) => HostAction::Continue,
        }
    }

    /// A request body callback. A held request must stay held whatever comes after its
    /// headers: continuing here would send it upstream before its check answers. (The core
    /// passes every request that has a body, so this is a guard, not a path.)
    pub fn on_request_body(&mut self) -> HostAction {
        match self.phase {
            Phase::Check(_) => HostAction::Pause,
            _ => HostAction::Continue,
        }
    }

    /// The upstream's (or a local reply's) response headers.
    pub fn on_response_headers(&mut self) -> HostAction {
        let vm = Rc::clone(&self.vm);
        match std::mem::take(&mut self.phase) {
            Phase::Idle => HostAction::Continue,
            Phase::Describe(text) => {
                vm.add_decision_header(&text);
                HostAction::Continue
            }
            Phase::Blob(forwarded) => match forwarded.on_response(&vm) {
                Answered::Done(next) => next,
                Answered::Check { check, then, client } => self.check(then, client, *check),
            },
            Phase::Check(held) => held.on_response(&vm, self.context_id),
            Phase::Manifest(phase) => self.manifest(phase.on_response_headers(&vm)),
        }
    }

    /// A response body callback.
    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        let vm = Rc::clone(&self.vm);
        match std::mem::take(&mut self.phase) {
            Phase::Manifest(phase) => {
                let step =
                    phase.on_response_body(&vm, &mut self.callouts, body_size, end_of_stream);
                self.manifest(step)
            }
            Phase::Check(held) => {
                let next = held.on_response_body(&vm, self.context_id);
                self.phase = Phase::Check(held);
                next
            }
            other => {
                self.phase = other;
                HostAction::Continue
            }
        }
    }

    /// A callout of this stream answered (or failed): routed by its token alone.
    pub fn on_call_answer(&mut self, token: u32, delivered: Delivered) {
        let Some(Awaited { purpose, resend }) = self.callouts.take(token) else {
            log::debug!("answer to a callout that is not awaited (token {token}): ignored");
            return;
        };
        let vm = Rc::clone(&self.vm);
        let answer = Answer::read(&vm.host, delivered);
        // A store call's first attempt that another member may answer: the phase waits on.
        if let Some(call) = resend.filter(|_| StoreEvent::is_retried(answer.status())) {
            if store::resend(&vm, &mut self.callouts, &call, purpose.clone()) {
                return;
            }
        }
        match (purpose, std::mem::take(&mut self.phase)) {
            (Purpose::Check, Phase::Check(mut held)) => {
                held.answered(&vm, self.context_id, &mut self.callouts, answer);
                self.phase = Phase::Check(held);
            }
            (Purpose::Child(digest), phase) => {
                manifest::release_fetches(&vm, 1);
                match phase {
                    Phase::Manifest(phase) => {
                        if let Some(next) = phase.on_child(&vm, &mut self.callouts, digest, answer)
                        {
                            self.phase = Phase::Manifest(next);
                        }
                    }
                    other => self.phase = other,
                }
            }
            (Purpose::StoreRenew, phase) => {
                store::renewed(&vm, answer);
                self.phase = phase;
            }
            (purpose @ (Purpose::StoreLease | Purpose::StoreWrite | Purpose::StoreRead), phase) => {
                self.phase = match phase {
                    Phase::Manifest(phase) => {
                        match phase.on_store(&vm, &mut self.callouts, &purpose, answer) {
                            AfterStore::Phase(next) => Phase::Manifest(*next),
                            AfterStore::Done => Phase::Idle,
                            AfterStore::Unknown => {
                                self.pass(Action::PassedPinnedManifest, None);
                                std::mem::take(&mut self.phase)
                            }
                        }
                    }
                    // A lease asked for a later renewal, by a stream in another phase.
                    other => {
                        if purpose == Purpose::StoreLease {
                            store::take_lease(&vm, answer);
                        }
                        other
                    }
                };
            }
            (_, phase) => self.phase = phase,
        }
    }

    /// The stream is done: whatever it held for others is released.
    pub fn on_done(&mut self) {
        check::forget(&self.vm, self.context_id);
        let children = self.callouts.count(|p| matches!(p, Purpose::Child(_)));
        manifest::release_fetches(&self.vm, children);
        if let Phase::Check(held) = std::mem::take(&mut self.phase) {
            held.ended(&self.vm, self.context_id);
        }
    }

    /// Leaves the request alone, counted, with the decision header to come.
    fn pass(&mut self, action: Action, client: Option<&ClientMatch>) -> HostAction {
        self.vm.count(action, client.and_then(ClientMatch::backend));
        if let Some(text) = self.vm.describe(action, client) {
            self.phase = Phase::Describe(text);
        }
        HostAction::Continue
    }

    /// Holds the stream for `check`, or carries out `then` at once if its answer is cached.
    fn check(&mut self, then: Then, client: ClientMatch, check: CheckRequest) -> HostAction {
        let vm = Rc::clone(&self.vm);
        let asker = Asker { context_id: self.context_id, callouts: Some(&mut self.callouts) };
        let (next, outcome) = check::start(&vm, asker, then, client, check);
        self.phase = match outcome {
            Outcome::Done | Outcome::Passed(None) => Phase::Idle,
            Outcome::Held(held) => Phase::Check(held),
            Outcome::Passed(Some(text)) => Phase::Describe(text),
        };
        next
    }

    fn manifest(&mut self, (next, phase): (HostAction, Option<manifest::Phase>)) -> HostAction {
        self.phase = phase.map_or(Phase::Idle, Phase::Manifest);
        next
    }
}

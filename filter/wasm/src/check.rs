//! Existence checks in the stream: a client is steered to a mirror only once the mirror is
//! known to hold the blob, from the shared cache or after a `HEAD` to the mirror. In blob mode
//! `redirect` the stream is held in its request phase; in `verify_upstream`, in its response
//! phase, once the upstream said yes (so the mirror hears nothing of the requests the upstream
//! refuses, and a refusal looks the same whatever the mirror holds).
//!
//! A backend that lacks the blob, or is down, hands the stream to the next backend of its
//! fallback chain: used at once without a cluster, else checked in turn (from the cache, or
//! with a `HEAD` of its own), so a stream is held for at most one check timeout per backend of
//! its chain. After the chain, the registry.
//!
//! One check per blob and backend is in flight per VM: a second request for the same blob waits
//! for the first one's answer. The stream that sent the check receives the answer (callouts
//! come back to their sender), caches it, and releases every waiter, itself first, by making
//! each one the effective context in turn. Only the sender can send the next check of a chain
//! (a callout answers the stream the host is calling back); the other waiters join it, and one
//! whose next check is not in flight passes over backends not known yet. A sender that ends
//! before the answer releases its waiters at once, as if the mirror lacked the blob.

use crate::blob;
use crate::callout::{Answer, Callouts, Purpose};
use crate::check_registry::{Next, Steer, Then, Waiter};
use crate::host::Host;
use crate::metrics::CheckEvent;
use crate::vm::Vm;
use blobsteer_core::existence::{CheckOutcome, CheckRequest, Known};
use blobsteer_core::health::{Admit, Health};
use blobsteer_core::{Action, ClientMatch};
use proxy_wasm::types::Action as HostAction;
use std::time::Duration;

/// A stream held for a check (or released by one, in its request phase).
#[derive(Debug)]
pub struct Held {
    client: ClientMatch,
    /// Held in the response phase (`verify_upstream`), else in the request phase.
    in_response: bool,
    /// The check this stream sent, until it answers (`None`: it waits for another's).
    sent: Option<CheckRequest>,
}

/// What a stream becomes once it asked for a check.
#[derive(Debug)]
pub enum Outcome {
    /// Carried out at once (from the cache, or down its chain): nothing is left for later.
    Done,
    /// Held for the answer.
    Held(Held),
    /// In the request phase, no backend of the chain holds the blob or can be asked: upstream
    /// untouched, with the decision header's value if one is configured.
    Passed(Option<String>),
}

/// The stream a check is asked for, as the host calls it back: only then can it send one.
pub struct Asker<'c> {
    /// The stream.
    pub context_id: u32,
    /// Its callouts, when it is the stream the host is calling back (`None`: it is released
    /// from another stream's callback, and can only join a check in flight).
    pub callouts: Option<&'c mut Callouts>,
}

/// What the existence cache says about the blob of `check`.
pub fn cached<H: Host>(vm: &Vm<H>, check: &CheckRequest) -> Option<Known> {
    check.read(vm.host.shared(&check.cache_key).as_deref(), vm.host.now_s())
}

/// Does `then` once the backend of `check` is known to hold the blob: from the cache, or after
/// a check (sent by this stream, or already in flight for another one of this VM); or moves on
/// down the chain once it is known not to.
pub fn start<H: Host>(
    vm: &Vm<H>,
    asker: Asker<'_>,
    then: Then,
    client: ClientMatch,
    check: CheckRequest,
) -> (HostAction, Outcome) {
    // A backend that is down is skipped, and one request at a time probes it.
    let settings = &vm.config.existence_check;
    let mut probe = false;
    if settings.down_after_failures > 0 {
        let key = Health::key(&check.backend);
        match Health::read(vm.host.shared(&key).as_deref()).admit(settings, vm.host.now_s()) {
            Admit::Skip => {
                vm.metrics.count_check(&vm.host, CheckEvent::SkippedDown);
                return settle(vm, asker, then, client, Known::Absent);
            }
            // A stream that cannot send leaves the probe to another.
            Admit::Probe(_) if asker.callouts.is_none() => {
                vm.metrics.count_check(&vm.host, CheckEvent::PassedOver);
                return settle(vm, asker, then, client, Known::Absent);
            }
            Admit::Probe(probing) => {
                if let Err(refused) = vm.host.set_shared(&key, &probing.encode()) {
                    log::warn!("cannot record a probe of {}: {refused:?}", check.backend);
                }
                probe = true;
            }
            Admit::Check => {}
        }
    }
    if let Some(known) = cached(vm, &check).filter(|_| !probe) {
        let event = match known {
            Known::Present => CheckEvent::CachePresent,
            Known::Absent => CheckEvent::CacheAbsent,
        };
        vm.metrics.count_check(&vm.host, event);
        return settle(vm, asker, then, client, known);
    }
    let in_response = then.in_response();
    if let Some(waiters) = vm.checks.borrow_mut().waiters_of(&check.entry_id) {
        waiters.push(Waiter { context_id: asker.context_id, then, client });
        vm.metrics.count_check(&vm.host, CheckEvent::Coalesced);
        return (HostAction::Pause, Outcome::Held(Held { client, in_response, sent: None }));
    }
    let Some(callouts) = asker.callouts else {
        vm.metrics.count_check(&vm.host, CheckEvent::PassedOver);
        let asker = Asker { context_id: asker.context_id, callouts: None };
        return settle(vm, asker, then, client, Known::Absent);
    };
    let headers = [
        (":method", "HEAD"),
        (":path", check.path.as_str()),
        (":authority", check.authority.as_str()),
        (":scheme", check.scheme),
    ];
    let timeout = Duration::from_millis(u64::from(vm.config.existence_check.timeout_ms));
    match vm.host.dispatch(&check.cluster, &headers, None, timeout) {
        Ok(token) => {
            vm.metrics.count_check(&vm.host, CheckEvent::Sent);
            callouts.record(token, Purpose::Check);
            let sender = Waiter { context_id: asker.context_id, then, client };
            vm.checks.borrow_mut().begin(&check.entry_id, sender);
            (HostAction::Pause, Outcome::Held(Held { client, in_response, sent: Some(check) }))
        }
        Err(refused) => {
            if vm.checks.borrow_mut().first_failure(&check.cluster) {
                log::error!(
                    "cannot send existence checks to cluster {:?} ({refused:?}): is it defined? \
                     Clients of that backend go down their chain, or upstream, until it is",
                    check.cluster
                );
            }
            vm.metrics.count_check(&vm.host, CheckEvent::NotSent);
            let asker = Asker { context_id: asker.context_id, callouts: Some(callouts) };
            settle(vm, asker, then, client, Known::Absent)
        }
    }
}

/// Carries out `then` on the current stream with what is known now of the backend checked:
/// steer there if it holds the blob, else move on down the chain (which may hold the stream
/// again, for the next backend's check).
fn settle<H: Host>(
    vm: &Vm<H>,
    asker: Asker<'_>,
    then: Then,
    client: ClientMatch,
    known: Known,
) -> (HostAction, Outcome) {
    if known == Known::Present {
        return (steer(vm, &then.steer, &client), Outcome::Done);
    }
    let mut then = then;
    match then.advance(&vm.config) {
        Next::Check(check) => start(vm, asker, then, client, check),
        Next::Unchecked => (steer(vm, &then.steer, &client), Outcome::Done),
        Next::End => match then.steer {
            Steer::Redirect { .. } => {
                vm.count(Action::PassedMirrorMissing, client.backend());
                let text = vm.describe(Action::PassedMirrorMissing, Some(&client));
                (HostAction::Continue, Outcome::Passed(text))
            }
            Steer::Judge(judged) => (blob::apply(vm, &judged.absent, &client), Outcome::Done),
        },
    }
}

/// Steers the current stream to the backend checked, known to hold the blob.
fn steer<H: Host>(vm: &Vm<H>, steer: &Steer, client: &ClientMatch) -> HostAction {
    match steer {
        Steer::Redirect { redirect, backend } => {
            blob::send_redirect(vm, redirect, Some(*backend), client)
        }
        Steer::Judge(judged) => blob::apply(vm, &judged.present, client),
    }
}

impl Held {
    /// The mirror answered this stream's check: cache the answer, then release every stream of
    /// this VM that waited for it (this one first, which may send the next check of its chain).
    pub fn answered<H: Host>(
        &mut self,
        vm: &Vm<H>,
        context_id: u32,
        callouts: &mut Callouts,
        answer: Answer,
    ) {
        let Some(check) = self.sent.take() else {
            return;
        };
        let outcome = CheckOutcome::from_status(answer.status());
        vm.metrics.count_check(&vm.host, CheckEvent::Answer(outcome));
        let settings = &vm.config.existence_check;
        let entry = check.entry(outcome.known(), settings, vm.host.now_s());
        if let Err(refused) = vm.host.set_shared(&check.cache_key, &entry) {
            log::warn!("cannot cache an existence check: {refused:?}");
        }
        if settings.down_after_failures > 0 {
            let key = Health::key(&check.backend);
            let health = Health::read(vm.host.shared(&key).as_deref());
            let (next, change) = health.after(outcome, settings, vm.host.now_s());
            if let Err(refused) = vm.host.set_shared(&key, &next.encode()) {
                log::warn!("cannot record the health of {}: {refused:?}", check.backend);
            }
            if let Some(change) = change {
                vm.metrics.count_health(&vm.host, &check.backend, change);
            }
        }
        let caller = Caller::Answered { context_id, callouts };
        if let Some(held) = release(vm, &check.entry_id, caller, outcome.known()) {
            *self = held;
        }
        restore(vm, context_id);
    }

    /// The response of a stream held in its request phase: the redirect going out, or the
    /// request that went upstream, which gets the decision header.
    pub fn on_response<H: Host>(self, vm: &Vm<H>, context_id: u32) -> HostAction {
        let known = vm.checks.borrow_mut().told(context_id);
        match known {
            Some(Known::Present) => HostAction::Continue,
            _ if self.in_response => HostAction::Continue,
            _ => {
                if let Some(text) = vm.describe(Action::PassedMirrorMissing, Some(&self.client)) {
                    vm.add_decision_header(&text);
                }
                HostAction::Continue
            }
        }
    }

    /// A response body callback of a stream held in its response phase: it stays held until
    /// the check answers (continuing here would let the headers go before the answer).
    pub fn on_response_body<H: Host>(&self, vm: &Vm<H>, context_id: u32) -> HostAction {
        if self.in_response && !vm.checks.borrow().was_told(context_id) {
            return HostAction::Pause;
        }
        HostAction::Continue
    }

    /// A stream that ends while its check is in flight takes the check with it (Envoy cancels
    /// it): the streams that waited for it go on now, as if the backend lacked the blob, rather
    /// than wait forever.
    pub fn ended<H: Host>(mut self, vm: &Vm<H>, context_id: u32) {
        if let Some(check) = self.sent.take() {
            release(vm, &check.entry_id, Caller::Ended { context_id }, Known::Absent);
        }
    }
}

/// Forgets what a stream was told (it ended, whatever its phase).
pub fn forget<H: Host>(vm: &Vm<H>, context_id: u32) {
    vm.checks.borrow_mut().told(context_id);
}

/// The stream whose callback releases the waiters of a check.
enum Caller<'c> {
    /// It sent the check, which answered: it is a waiter, and may send the next check.
    Answered {
        /// The stream.
        context_id: u32,
        /// Its callouts.
        callouts: &'c mut Callouts,
    },
    /// It sent the check and ends: it is not released, and nothing can be sent.
    Ended {
        /// The stream.
        context_id: u32,
    },
}

/// Lets the waiters of a check go on with its answer, each acted on as the host's effective
/// context (one that is gone is skipped). Returns the caller's new hold, if it sent the next
/// check of its chain or joined one.
fn release<H: Host>(
    vm: &Vm<H>,
    entry_id: &str,
    mut caller: Caller<'_>,
    known: Known,
) -> Option<Held> {
    let waiters = vm.checks.borrow_mut().finish(entry_id);
    let mut caller_held = None;
    for waiter in waiters {
        let (is_caller, callouts) = match &mut caller {
            Caller::Answered { context_id, callouts } if *context_id == waiter.context_id => {
                (true, Some(&mut **callouts))
            }
            Caller::Ended { context_id } if *context_id == waiter.context_id => continue,
            _ => (false, None),
        };
        if vm.host.set_effective_context(waiter.context_id).is_err() {
            continue;
        }
        let in_response = waiter.then.in_response();
        let asker = Asker { context_id: waiter.context_id, callouts };
        let (next, outcome) = settle(vm, asker, waiter.then, waiter.client, known);
        // What the stream's response phase reads: whether it was steered.
        let told = match outcome {
            Outcome::Held(held) => {
                if is_caller {
                    caller_held = Some(held);
                }
                continue;
            }
            Outcome::Done => Known::Present,
            Outcome::Passed(_) => Known::Absent,
        };
        vm.checks.borrow_mut().tell(waiter.context_id, told);
        if next != HostAction::Continue {
            continue;
        }
        let resumed =
            if in_response { vm.host.resume_response() } else { vm.host.resume_request() };
        if let Err(refused) = resumed {
            log::warn!("cannot resume a stream after its check: {refused:?}");
        }
    }
    caller_held
}

/// Makes the stream being called back the effective context again, after acting on others.
fn restore<H: Host>(vm: &Vm<H>, context_id: u32) {
    if let Err(refused) = vm.host.set_effective_context(context_id) {
        log::debug!("cannot return to stream {context_id}: {refused:?}");
    }
}

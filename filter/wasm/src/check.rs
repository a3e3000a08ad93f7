//! Existence checks in the stream: a client is steered to a mirror only once the mirror is
//! known to hold the blob, from the shared cache or after a `HEAD` to the mirror. In blob mode
//! `redirect` the stream is held in its request phase; in `verify_upstream`, in its response
//! phase, once the upstream said yes (so the mirror hears nothing of the requests the upstream
//! refuses, and a refusal looks the same whatever the mirror holds).
//!
//! One check per blob and backend is in flight per VM: a second request for the same blob waits
//! for the first one's answer. The stream that sent the check receives the answer (callouts
//! come back to their sender), caches it, and releases every waiter, itself first, by making
//! each one the effective context in turn. A sender that ends before the answer releases its
//! waiters at once, as if the mirror lacked the blob.

use crate::blob;
use crate::callout::{Answer, Callouts, Purpose};
use crate::check_registry::{Then, Waiter};
use crate::host::Host;
use crate::metrics::CheckEvent;
use crate::vm::Vm;
use blobsteer_core::existence::{CheckOutcome, CheckRequest, Known};
use blobsteer_core::health::{Admit, Health};
use blobsteer_core::{Action, ClientMatch, Fallback};
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
    /// Carried out at once, from the cache: nothing is left for later.
    Done,
    /// Held for the answer.
    Held(Held),
    /// In the request phase, the mirror lacks the blob or cannot be asked: upstream untouched,
    /// with the decision header's value if one is configured.
    Passed(Option<String>),
}

/// What the existence cache says about the blob of `check`.
pub fn cached<H: Host>(vm: &Vm<H>, check: &CheckRequest) -> Option<Known> {
    check.read(vm.host.shared(&check.cache_key).as_deref(), vm.host.now_s())
}

/// Does `then` once the mirror is known to hold the blob of `check`: from the cache, or after
/// a check (sent by this stream, or already in flight for another one of this VM).
pub fn start<H: Host>(
    vm: &Vm<H>,
    context_id: u32,
    callouts: &mut Callouts,
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
                return settle(vm, then, client, Known::Absent);
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
        return settle(vm, then, client, known);
    }
    let in_response = then.in_response();
    let waiter = Waiter { context_id, then, client };
    let Err(waiter) = vm.checks.borrow_mut().join(&check.entry_id, waiter) else {
        vm.metrics.count_check(&vm.host, CheckEvent::Coalesced);
        return (HostAction::Pause, Outcome::Held(Held { client, in_response, sent: None }));
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
            vm.checks.borrow_mut().begin(&check.entry_id, waiter);
            (HostAction::Pause, Outcome::Held(Held { client, in_response, sent: Some(check) }))
        }
        Err(refused) => {
            if vm.checks.borrow_mut().first_failure(&check.cluster) {
                log::error!(
                    "cannot send existence checks to cluster {:?} ({refused:?}): is it defined? \
                     Clients of that backend go upstream until it is",
                    check.cluster
                );
            }
            vm.metrics.count_check(&vm.host, CheckEvent::NotSent);
            settle(vm, waiter.then, client, Known::Absent)
        }
    }
}

/// Carries out `then` on the current stream with what is known now.
fn settle<H: Host>(
    vm: &Vm<H>,
    then: Then,
    client: ClientMatch,
    known: Known,
) -> (HostAction, Outcome) {
    let next = carry_out(vm, &then, &client, known);
    let outcome = match (then, known, next) {
        (Then::Redirect { .. }, Known::Absent, HostAction::Continue) => {
            Outcome::Passed(vm.describe(Action::PassedMirrorMissing, Some(&client)))
        }
        _ => Outcome::Done,
    };
    (next, outcome)
}

/// The first backend of a fallback chain without a cluster (assumed to hold every blob) or known
/// from the cache to hold this one. One not known yet is not asked: its own clients' checks
/// teach the cache.
fn usable_fallback<'f, H: Host>(vm: &Vm<H>, fallbacks: &'f [Fallback]) -> Option<&'f Fallback> {
    fallbacks
        .iter()
        .find(|f| f.check.as_ref().map_or(true, |c| cached(vm, c) == Some(Known::Present)))
}

/// Carries out what a held stream does once `known`, on the host's current stream.
fn carry_out<H: Host>(vm: &Vm<H>, then: &Then, client: &ClientMatch, known: Known) -> HostAction {
    match (then, known) {
        (Then::Redirect { redirect, .. }, Known::Present) => {
            blob::send_redirect(vm, redirect, client)
        }
        (Then::Redirect { fallbacks, .. }, Known::Absent) => {
            if let Some(fallback) = usable_fallback(vm, fallbacks) {
                if blob::send_fallback(vm, fallback, client) == HostAction::Pause {
                    return HostAction::Pause;
                }
            }
            vm.count(Action::PassedMirrorMissing, client.backend());
            HostAction::Continue
        }
        (Then::Judge(judged), Known::Present) => blob::apply(vm, &judged.present, client),
        (Then::Judge(judged), Known::Absent) => blob::apply(vm, &judged.absent, client),
    }
}

impl Held {
    /// The mirror answered this stream's check: cache the answer, then release every stream of
    /// this VM that waited for it (this one first).
    pub fn answered<H: Host>(&mut self, vm: &Vm<H>, context_id: u32, answer: Answer) {
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
        release(vm, &check.entry_id, |_| true, outcome.known());
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
    /// it): the streams that waited for it go upstream now rather than wait forever.
    pub fn ended<H: Host>(mut self, vm: &Vm<H>, context_id: u32) {
        if let Some(check) = self.sent.take() {
            release(vm, &check.entry_id, |w| w.context_id != context_id, Known::Absent);
        }
    }
}

/// Forgets what a stream was told (it ended, whatever its phase).
pub fn forget<H: Host>(vm: &Vm<H>, context_id: u32) {
    vm.checks.borrow_mut().told(context_id);
}

/// Lets the waiters of a check go on with its answer. Each is acted on as the host's effective context; one that is gone is
/// skipped.
fn release<H: Host>(vm: &Vm<H>, entry_id: &str, which: impl Fn(&Waiter) -> bool, known: Known) {
    let waiters = vm.checks.borrow_mut().finish(entry_id);
    for waiter in waiters.into_iter().filter(|w| which(w)) {
        if vm.host.set_effective_context(waiter.context_id).is_err() {
            continue;
        }
        // What the stream's response phase reads: a stream sent to a fallback was steered.
        let told = match (&waiter.then, known) {
            (Then::Redirect { fallbacks, .. }, Known::Absent)
                if usable_fallback(vm, fallbacks).is_some() =>
            {
                Known::Present
            }
            _ => known,
        };
        vm.checks.borrow_mut().tell(waiter.context_id, told);
        if carry_out(vm, &waiter.then, &waiter.client, known) != HostAction::Continue {
            continue;
        }
        let resumed = if waiter.then.in_response() {
            vm.host.resume_response()
        } else {
            vm.host.resume_request()
        };
        if let Err(refused) = resumed {
            log::warn!("cannot resume a stream after its check: {refused:?}");
        }
    }
}

/// Makes the stream being called back the effective context again, after acting on others.
fn restore<H: Host>(vm: &Vm<H>, context_id: u32) {
    if let Err(refused) = vm.host.set_effective_context(context_id) {
        log::debug!("cannot return to stream {context_id}: {refused:?}");
    }
}

//! Existence checks in the stream: a request for a backend with a `cluster` is steered only to a
//! mirror known to hold the blob, from the shared cache or after a `HEAD` to the mirror.
//!
//! One check per blob and backend is in flight per VM: a second request for the same blob waits
//! for the first one's answer. The stream that sent the check receives the answer (callouts
//! come back to their sender), caches it, and releases every waiter, itself first, by making
//! each one the effective context in turn. A waiter reads what it was told in its response
//! phase. A sender that ends before the answer releases its waiters upstream at once.

use crate::blob::{self, Forwarded};
use crate::callout::{Answer, Callouts, Purpose};
use crate::check_registry::Waiter;
use crate::host::Host;
use crate::metrics::CheckEvent;
use crate::vm::Vm;
use blobsteer_core::existence::{CheckOutcome, CheckRequest, Known};
use blobsteer_core::{Action, ClientMatch, RequestStep};
use proxy_wasm::types::Action as HostAction;
use std::time::Duration;

/// A stream held for a check: what it does once the answer is known.
#[derive(Debug)]
pub struct Held {
    step: RequestStep,
    client: ClientMatch,
    /// The check this stream sent, until it answers (`None`: it waits for another's).
    sent: Option<CheckRequest>,
}

/// What a stream becomes once it asked for a check.
#[derive(Debug)]
pub enum Outcome {
    /// The cache knew the blob is there: steered now (and judged upstream, if forwarded).
    Steered(Option<Forwarded>),
    /// Held for the answer.
    Held(Held),
    /// The mirror lacks the blob, or cannot be asked: upstream untouched, with the decision
    /// header's value if one is configured.
    Passed(Option<String>),
}

/// What the existence cache says about the blob of `check`.
pub fn cached<H: Host>(vm: &Vm<H>, check: &CheckRequest) -> Option<Known> {
    check.read(vm.host.shared(&check.cache_key).as_deref(), vm.host.now_s())
}

/// Steers only to a mirror known to hold the blob: from the cache, or after a check (sent by
/// this stream, or already in flight for another one of this VM).
pub fn start<H: Host>(
    vm: &Vm<H>,
    context_id: u32,
    callouts: &mut Callouts,
    step: RequestStep,
    client: ClientMatch,
    check: CheckRequest,
) -> (HostAction, Outcome) {
    match cached(vm, &check) {
        Some(Known::Present) => {
            vm.metrics.count_check(&vm.host, CheckEvent::CachePresent);
            let (next, forwarded) = blob::steer(vm, step, client);
            return (next, Outcome::Steered(forwarded));
        }
        Some(Known::Absent) => {
            vm.metrics.count_check(&vm.host, CheckEvent::CacheAbsent);
            return (HostAction::Continue, passed_mirror_missing(vm, client));
        }
        None => {}
    }
    let waiter = Waiter { context_id, step: step.clone(), client };
    let Err(waiter) = vm.checks.borrow_mut().join(&check.entry_id, waiter) else {
        vm.metrics.count_check(&vm.host, CheckEvent::Coalesced);
        return (HostAction::Pause, Outcome::Held(Held { step, client, sent: None }));
    };
    let headers = [
        (":method", "HEAD"),
        (":path", check.path.as_str()),
        (":authority", check.authority.as_str()),
        (":scheme", check.scheme),
    ];
    let timeout = Duration::from_millis(u64::from(vm.config.existence_check.timeout_ms));
    match vm.host.dispatch(&check.cluster, &headers, timeout) {
        Ok(token) => {
            vm.metrics.count_check(&vm.host, CheckEvent::Sent);
            callouts.record(token, Purpose::Check);
            vm.checks.borrow_mut().begin(&check.entry_id, waiter);
            (HostAction::Pause, Outcome::Held(Held { step, client, sent: Some(check) }))
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
            (HostAction::Continue, passed_mirror_missing(vm, client))
        }
    }
}

fn passed_mirror_missing<H: Host>(vm: &Vm<H>, client: ClientMatch) -> Outcome {
    vm.count(Action::PassedMirrorMissing, client.backend());
    Outcome::Passed(vm.describe(Action::PassedMirrorMissing, Some(&client)))
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
        let entry = check.entry(outcome.known(), &vm.config.existence_check, vm.host.now_s());
        if let Err(refused) = vm.host.set_shared(&check.cache_key, &entry) {
            log::warn!("cannot cache an existence check: {refused:?}");
        }
        release(vm, &check.entry_id, |_| true, outcome.known());
        restore(vm, context_id);
    }

    /// The response of a held stream: judged if it was forwarded to a mirror that has the
    /// blob; otherwise it is the redirect going out, or the request that went upstream.
    pub fn on_response<H: Host>(self, vm: &Vm<H>, context_id: u32) -> HostAction {
        let known = vm.checks.borrow_mut().told(context_id);
        match (known, self.step) {
            (Some(Known::Present), RequestStep::Forward(plan)) => {
                Forwarded::new(plan, self.client).on_response(vm)
            }
            (Some(Known::Present), _) => HostAction::Continue,
            _ => {
                if let Some(text) = vm.describe(Action::PassedMirrorMissing, Some(&self.client)) {
                    vm.add_decision_header(&text);
                }
                HostAction::Continue
            }
        }
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

/// Lets the waiters of a check go on with its answer: steered if the blob is there, upstream
/// untouched otherwise. Each is acted on as the host's effective context; one that is gone is
/// skipped.
fn release<H: Host>(vm: &Vm<H>, entry_id: &str, which: impl Fn(&Waiter) -> bool, known: Known) {
    let waiters = vm.checks.borrow_mut().finish(entry_id);
    for waiter in waiters.into_iter().filter(|w| which(w)) {
        if vm.host.set_effective_context(waiter.context_id).is_err() {
            continue;
        }
        vm.checks.borrow_mut().tell(waiter.context_id, known);
        let next = match known {
            Known::Present => blob::steer(vm, waiter.step, waiter.client).0,
            Known::Absent => {
                vm.count(Action::PassedMirrorMissing, waiter.client.backend());
                HostAction::Continue
            }
        };
        if next == HostAction::Continue {
            if let Err(refused) = vm.host.resume_request() {
                log::warn!("cannot resume a request after its check: {refused:?}");
            }
        }
    }
}

/// Makes the stream being called back the effective context again, after acting on others.
fn restore<H: Host>(vm: &Vm<H>, context_id: u32) {
    if let Err(refused) = vm.host.set_effective_context(context_id) {
        log::debug!("cannot return to stream {context_id}: {refused:?}");
    }
}

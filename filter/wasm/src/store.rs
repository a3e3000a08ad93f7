//! Calls to the fleet's store (etcd's JSON gateway, `manifests.store`) from a stream: sent
//! through the store's Envoy cluster and recorded by token; answers read only when they are a
//! 200 of a bounded size. What to send and what an answer means is the core's
//! (`blobsteer_core::store`); `manifest` decides what to do with it.

use crate::callout::{Answer, Callouts, Purpose};
use crate::host::Host;
use crate::vm::Vm;
use blobsteer_core::store::{
    read_lease, Lease, StoreCall, StoreEvent, StoreSettings, MAX_ANSWER_BYTES,
};
use std::time::Duration;

/// Sends `call`, recorded with `purpose` (and, to send it once more if it answers 503, the call
/// itself); false (counted, logged once per VM) if the host refuses it, as when the cluster is
/// not defined.
pub fn send<H: Host>(
    vm: &Vm<H>,
    settings: &StoreSettings,
    callouts: &mut Callouts,
    call: &StoreCall,
    purpose: Purpose,
) -> bool {
    match dispatch(vm, settings, call) {
        Some(token) => {
            callouts.record_resendable(token, purpose, call.clone());
            true
        }
        None => false,
    }
}

/// Sends a call once more after an answer that [`StoreEvent::is_retried`] (the second and last
/// attempt), counted; false if there is no store or the host refuses it.
pub fn resend<H: Host>(
    vm: &Vm<H>,
    callouts: &mut Callouts,
    call: &StoreCall,
    purpose: Purpose,
) -> bool {
    let Some(settings) = vm.config.manifests.store.as_ref() else {
        return false;
    };
    let Some(token) = dispatch(vm, settings, call) else {
        return false;
    };
    vm.metrics.count_store(&vm.host, StoreEvent::Retried);
    callouts.record(token, purpose);
    true
}

/// Dispatches `call` through the store's cluster: its token, or `None` (counted, logged once
/// per VM) if the host refuses.
fn dispatch<H: Host>(vm: &Vm<H>, settings: &StoreSettings, call: &StoreCall) -> Option<u32> {
    let headers = [
        (":method", "POST"),
        (":path", call.path),
        (":authority", settings.cluster.as_str()),
        (":scheme", "http"),
        ("content-type", "application/json"),
    ];
    let timeout = Duration::from_millis(u64::from(settings.timeout_ms));
    match vm.host.dispatch(&settings.cluster, &headers, Some(call.body.as_bytes()), timeout) {
        Ok(token) => Some(token),
        Err(refused) => {
            if vm.checks.borrow_mut().first_failure(&settings.cluster) {
                log::error!(
                    "cannot call the store through cluster {:?} ({refused:?}): is it defined? \
                     Until it is, manifests are sent untouched and unknown digests go upstream",
                    settings.cluster
                );
            }
            vm.metrics.count_store(&vm.host, StoreEvent::Failed);
            None
        }
    }
}

/// The body of a store answer if it is a 200 of at most [`MAX_ANSWER_BYTES`]; otherwise the
/// failure, counted.
pub fn body<H: Host>(vm: &Vm<H>, answer: Answer) -> Result<Vec<u8>, StoreEvent> {
    let failure = match StoreEvent::failure(answer.status()) {
        Some(failure) => failure,
        None if answer.body_size() > MAX_ANSWER_BYTES => StoreEvent::Failed,
        None => match answer.body(&vm.host) {
            Some(body) => return Ok(body),
            None => StoreEvent::Failed,
        },
    };
    vm.metrics.count_store(&vm.host, failure);
    Err(failure)
}

/// A renewal answered (nothing waited for it).
pub fn renewed<H: Host>(vm: &Vm<H>, answer: Answer) {
    if body(vm, answer).is_ok() {
        vm.metrics.count_store(&vm.host, StoreEvent::Renewed);
    }
}

/// The VM's lease, if it may still take new records.
pub fn fresh_lease<H: Host>(vm: &Vm<H>, settings: &StoreSettings) -> Option<Lease> {
    vm.lease.get().filter(|lease| settings.lease_fresh(lease, vm.host.now_s()))
}

/// Reads a lease grant's answer and keeps the lease for the VM's next writes.
pub fn take_lease<H: Host>(vm: &Vm<H>, answer: Answer) -> Option<Lease> {
    let body = body(vm, answer).ok()?;
    match read_lease(&body, vm.host.now_s()) {
        Ok(lease) => {
            vm.metrics.count_store(&vm.host, StoreEvent::LeaseGranted);
            vm.lease.set(Some(lease));
            Some(lease)
        }
        Err(_) => {
            vm.metrics.count_store(&vm.host, StoreEvent::Failed);
            None
        }
    }
}

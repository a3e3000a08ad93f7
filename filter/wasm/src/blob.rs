//! Blob steering in the stream: a redirect answered at once, or a request sent upstream whose
//! answer is judged by the core's [`ResponsePlan`] (`verify_upstream`, `Location` rewriting).

use crate::check_registry::{Judged, Steer, Then};
use crate::host::Host;
use crate::vm::Vm;
use blobsteer_core::existence::CheckRequest;
use blobsteer_core::{
    Action, ClientMatch, FallbackChain, Redirect, RequestStep, ResponseDecision, ResponsePlan,
    ResponseStep, Verdict,
};
use proxy_wasm::types::Action as HostAction;

/// A blob request sent upstream: its answer is judged when the response headers come.
#[derive(Debug)]
pub struct Forwarded {
    plan: ResponsePlan,
    client: ClientMatch,
    /// The client's fallback chain, for a checked backend.
    fallbacks: FallbackChain,
}

/// What the upstream's answer to a forwarded request leads to in the stream.
#[derive(Debug)]
pub enum Answered {
    /// Carried out; the stream goes on with this.
    Done(HostAction),
    /// The upstream said yes, and the client's backend is checked: what to do depends on the
    /// check, asked now (the mirror hears only of requests the upstream said yes to).
    Check {
        /// The check.
        check: Box<CheckRequest>,
        /// What to do with its answer.
        then: Then,
        /// The client.
        client: ClientMatch,
    },
}

/// Carries out a steering step on the current stream (the blob is known to be there, or its
/// backend is not checked). Returns what the stream does next, and the phase of its response
/// if it goes upstream to be judged.
pub fn steer<H: Host>(
    vm: &Vm<H>,
    step: RequestStep,
    client: ClientMatch,
    fallbacks: FallbackChain,
) -> (HostAction, Option<Forwarded>) {
    match step {
        RequestStep::Respond(redirect) => {
            (send_redirect(vm, &redirect, client.backend(), &client), None)
        }
        RequestStep::Forward(plan) => {
            if plan.send_as_head() && !vm.set_request_header(":method", "HEAD") {
                return (HostAction::Continue, None);
            }
            (HostAction::Continue, Some(Forwarded { plan, client, fallbacks }))
        }
        RequestStep::Pass(action) => {
            vm.count(action, client.backend());
            (HostAction::Continue, None)
        }
        // Manifest steps are not blob steering; the stream hands them to `manifest`.
        RequestStep::RewriteManifest(_)
        | RequestStep::LookupRewritten(_)
        | RequestStep::LeaveManifest(_) => (HostAction::Continue, None),
    }
}

/// Answers the current request with the redirect to `backend` (the client's own, or one of its
/// fallback chain), counted for it; if the host refuses, the request goes upstream untouched.
pub fn send_redirect<H: Host>(
    vm: &Vm<H>,
    redirect: &Redirect,
    backend: Option<usize>,
    client: &ClientMatch,
) -> HostAction {
    let description = describe(vm, Action::Redirected, backend, client);
    if vm.redirect(redirect.status, &redirect.location, description.as_deref()) {
        vm.count(Action::Redirected, backend);
        return HostAction::Pause;
    }
    HostAction::Continue
}

/// The decision header's value for steering to `backend`: it names a backend of the client's
/// fallback chain (its own lacked the blob, or was down).
fn describe<H: Host>(
    vm: &Vm<H>,
    action: Action,
    backend: Option<usize>,
    client: &ClientMatch,
) -> Option<String> {
    let description = vm.describe(action, Some(client))?;
    let Some(other) = backend.filter(|&b| client.backend() != Some(b)) else {
        return Some(description);
    };
    let name = vm.config.backends().get(other).map_or("", |b| b.name.as_str());
    Some(format!("{description}; fallback={name}"))
}

/// Carries out a decision on the current stream's response headers.
pub fn apply<H: Host>(vm: &Vm<H>, decision: &ResponseDecision, client: &ClientMatch) -> HostAction {
    let description = describe(vm, decision.action, Some(decision.backend), client);
    match &decision.step {
        ResponseStep::Respond(redirect) => {
            if vm.redirect(redirect.status, &redirect.location, description.as_deref()) {
                vm.count(decision.action, Some(decision.backend));
                return HostAction::Pause;
            }
            // Could not replace it: keep the upstream's answer, made whole for a GET.
            if decision.sent_as_head {
                vm.set_response_header("content-length", Some("0"));
            }
            vm.count(Action::PassedUpstreamAnswer, Some(decision.backend));
            return HostAction::Continue;
        }
        ResponseStep::RewriteLocation(location) => {
            vm.set_response_header("location", Some(location));
        }
        ResponseStep::Pass => {}
    }
    if decision.zero_content_length() {
        vm.set_response_header("content-length", Some("0"));
    }
    vm.count(decision.action, Some(decision.backend));
    if let Some(text) = description {
        vm.add_decision_header(&text);
    }
    HostAction::Continue
}

impl Forwarded {
    /// The upstream answered: redirect, rewrite `Location`, or pass; or, for a checked backend
    /// the upstream said yes for, ask its check first.
    pub fn on_response<H: Host>(self, vm: &Vm<H>) -> Answered {
        let Forwarded { plan, client, fallbacks } = self;
        match plan.judge(vm.response_status().unwrap_or(0)) {
            Verdict::Decided(decision) => Answered::Done(apply(vm, &decision, &client)),
            Verdict::Checked { check, present, absent } => Answered::Check {
                check,
                then: Then {
                    steer: Steer::Judge(Box::new(Judged { present, absent })),
                    chain: fallbacks,
                },
                client,
            },
        }
    }
}

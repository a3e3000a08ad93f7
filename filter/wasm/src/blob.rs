//! Blob steering in the stream: a redirect answered at once, or a request sent upstream whose
//! answer is judged by the core's [`ResponsePlan`] (`verify_upstream`, `Location` rewriting).

use crate::host::Host;
use crate::vm::Vm;
use blobsteer_core::{Action, ClientMatch, RequestStep, ResponsePlan, ResponseStep};
use proxy_wasm::types::Action as HostAction;

/// A blob request sent upstream: its answer is judged when the response headers come.
#[derive(Debug)]
pub struct Forwarded {
    plan: ResponsePlan,
    client: ClientMatch,
}

/// Carries out a steering step on the current stream (the blob is known to be there, or its
/// backend is not checked). Returns what the stream does next, and the phase of its response
/// if it goes upstream to be judged.
pub fn steer<H: Host>(
    vm: &Vm<H>,
    step: RequestStep,
    client: ClientMatch,
) -> (HostAction, Option<Forwarded>) {
    let backend = client.backend();
    match step {
        RequestStep::Respond(redirect) => {
            let description = vm.describe(Action::Redirected, Some(&client));
            if vm.redirect(redirect.status, &redirect.location, description.as_deref()) {
                vm.count(Action::Redirected, backend);
                return (HostAction::Pause, None);
            }
            (HostAction::Continue, None)
        }
        RequestStep::Forward(plan) => {
            if plan.send_as_head && !vm.set_request_header(":method", "HEAD") {
                return (HostAction::Continue, None);
            }
            (HostAction::Continue, Some(Forwarded::new(plan, client)))
        }
        RequestStep::Pass(action) => {
            vm.count(action, backend);
            (HostAction::Continue, None)
        }
        // Manifest steps are not blob steering; the stream hands them to `manifest`.
        RequestStep::RewriteManifest(_) | RequestStep::LookupRewritten(_) => {
            (HostAction::Continue, None)
        }
    }
}

impl Forwarded {
    /// A request forwarded with `plan`, for `client`.
    pub fn new(plan: ResponsePlan, client: ClientMatch) -> Self {
        Forwarded { plan, client }
    }

    /// The upstream answered: redirect, rewrite `Location`, or pass.
    pub fn on_response<H: Host>(self, vm: &Vm<H>) -> HostAction {
        let Forwarded { plan, client } = self;
        let decision = plan.decide(vm.response_status().unwrap_or(0));
        let description = vm.describe(decision.action, Some(&client));
        match &decision.step {
            ResponseStep::Respond(redirect) => {
                if vm.redirect(redirect.status, &redirect.location, description.as_deref()) {
                    vm.count(decision.action, Some(plan.backend));
                    return HostAction::Pause;
                }
                // Could not replace it: keep the upstream's answer, made whole for a GET.
                if plan.send_as_head {
                    vm.set_response_header("content-length", Some("0"));
                }
                vm.count(Action::PassedUpstreamAnswer, Some(plan.backend));
                return HostAction::Continue;
            }
            ResponseStep::RewriteLocation(location) => {
                vm.set_response_header("location", Some(location));
            }
            ResponseStep::Pass => {}
        }
        if decision.zero_content_length {
            vm.set_response_header("content-length", Some("0"));
        }
        vm.count(decision.action, Some(plan.backend));
        if let Some(text) = description {
            vm.add_decision_header(&text);
        }
        HostAction::Continue
    }
}

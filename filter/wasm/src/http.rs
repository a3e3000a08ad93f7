//! The per-stream context: reads the request, applies the core's decision.

use crate::metrics::Metrics;
use blobsteer_core::{
    Action, ClientMatch, Config, Request, RequestStep, ResponsePlan, ResponseStep,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action as HostAction, MapType};
use std::borrow::Cow;
use std::rc::Rc;

/// What every stream of a VM shares.
pub struct Filter {
    /// The validated configuration.
    pub config: Config,
    /// Stat ids.
    pub metrics: Metrics,
}

/// A stream the filter acts on.
pub struct HttpFilter {
    filter: Rc<Filter>,
    pending: Pending,
}

/// What the response phase still has to do.
enum Pending {
    Nothing,
    /// Add the decision header with this value.
    Describe(String),
    /// A forwarded blob request: judge the upstream's answer.
    Blob {
        plan: ResponsePlan,
        client: ClientMatch,
    },
}

/// Streams of a VM without a configuration (never reached: Envoy refuses such a filter).
pub struct PassThrough;

impl Context for PassThrough {}
impl HttpContext for PassThrough {}

impl HttpFilter {
    /// A stream of the filter.
    pub fn new(filter: Rc<Filter>) -> Self {
        HttpFilter { filter, pending: Pending::Nothing }
    }

    fn config(&self) -> &Config {
        &self.filter.config
    }

    /// The decision header's value, only when an operator asked for it.
    fn describe(&self, action: Action, client: Option<&ClientMatch>) -> Option<String> {
        self.config().decision_header.as_ref().map(|_| self.config().describe(action, client))
    }

    /// Answers the client with a redirect. On failure the stream simply continues upstream.
    fn respond(&self, status: u16, location: &str, description: Option<&str>) -> bool {
        let mut headers = vec![("location", location)];
        if let (Some(name), Some(value)) = (self.config().decision_header.as_deref(), description) {
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
        let source_address =
            if forwarded_for.is_empty() && self.config().client_ip.source_address_fallback {
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
        let decision = self.config().decide_request(&request);
        let backend = decision.client.as_ref().and_then(ClientMatch::backend);
        match decision.step {
            RequestStep::Respond(redirect) => {
                let description = self.describe(Action::Redirected, decision.client.as_ref());
                if self.respond(redirect.status, &redirect.location, description.as_deref()) {
                    self.filter.metrics.count(Action::Redirected, backend);
                    return HostAction::Pause;
                }
                HostAction::Continue
            }
            RequestStep::Forward(plan) => {
                if plan.send_as_head {
                    if let Err(status) = hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        ":method",
                        Some("HEAD"),
                    ) {
                        log::warn!("cannot send the request as HEAD: {status:?}");
                        return HostAction::Continue;
                    }
                }
                if let Some(client) = decision.client {
                    self.pending = Pending::Blob { plan, client };
                }
                HostAction::Continue
            }
            RequestStep::Pass(action) => {
                self.filter.metrics.count(action, backend);
                if let Some(text) = self.describe(action, decision.client.as_ref()) {
                    self.pending = Pending::Describe(text);
                }
                HostAction::Continue
            }
        }
    }

    fn on_response(&mut self) -> HostAction {
        match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => HostAction::Continue,
            Pending::Describe(text) => {
                self.add_decision_header(&text);
                HostAction::Continue
            }
            Pending::Blob { plan, client } => {
                let status = response_status().unwrap_or(0);
                let decision = plan.decide(status);
                let description = self.describe(decision.action, Some(&client));
                match &decision.step {
                    ResponseStep::Respond(redirect) => {
                        if self.respond(redirect.status, &redirect.location, description.as_deref())
                        {
                            self.filter.metrics.count(decision.action, Some(plan.backend));
                            return HostAction::Pause;
                        }
                        // Could not replace it: keep the upstream's answer, made whole for a GET.
                        if plan.send_as_head {
                            set_response_header("content-length", "0");
                        }
                        self.filter.metrics.count(Action::PassedUpstreamAnswer, Some(plan.backend));
                        return HostAction::Continue;
                    }
                    ResponseStep::RewriteLocation(location) => {
                        set_response_header("location", location)
                    }
                    ResponseStep::Pass => {}
                }
                if decision.zero_content_length {
                    set_response_header("content-length", "0");
                }
                self.filter.metrics.count(decision.action, Some(plan.backend));
                if let Some(text) = description {
                    self.add_decision_header(&text);
                }
                HostAction::Continue
            }
        }
    }

    fn add_decision_header(&self, value: &str) {
        if let Some(name) = self.config().decision_header.as_deref() {
            set_response_header(name, value);
        }
    }
}

impl Context for HttpFilter {}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> HostAction {
        self.on_request()
    }

    fn on_http_response_headers(
        &mut self,
        _num_headers: usize,
        _end_of_stream: bool,
    ) -> HostAction {
        self.on_response()
    }
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

fn response_status() -> Option<u16> {
    let value = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok()??;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

fn set_response_header(name: &str, value: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value)) {
        log::warn!("cannot set response header {name}: {status:?}");
    }
}

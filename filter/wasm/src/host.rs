//! The seam between the glue and Envoy: every host call the filter makes goes through [`Host`],
//! and [`Envoy`] is its one real implementation, the only code that calls
//! `proxy_wasm::hostcalls`. The tests put a fake host behind the same trait.
//!
//! proxy-wasm 0.2.5 panics (and the VM traps) where it should return an error in two places:
//! the string variants of header getters on non-UTF-8 values, and reading a callout's response
//! headers when Envoy delivered none. The first is avoided by reading bytes only; the second by
//! the trait itself: [`Host::call_header`] and [`Host::call_body`] take the counts Envoy passed
//! to `on_http_call_response` and read nothing when there are no headers.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A host call that did not succeed, with the host's status (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub Status);

/// A header map of the current stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Headers {
    /// The request's headers.
    Request,
    /// The response's headers.
    Response,
}

/// What Envoy passed to `on_http_call_response`: how much of a callout's answer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Number of response headers: 0 when the callout failed after the upstream had started
    /// answering (the answer may not be read then).
    pub headers: usize,
    /// Size of the response body.
    pub body: usize,
}

/// Everything the filter asks of its host. Fallible calls return `Result` and are handled by
/// the caller: nothing here panics.
pub trait Host {
    /// The value of one header of the current stream, as bytes. For `x-forwarded-for` (an
    /// inline header) Envoy joins repeated lines into one value.
    fn header(&self, map: Headers, name: &str) -> Option<Vec<u8>>;
    /// Every header of the current stream's map, in one call.
    fn headers(&self, map: Headers) -> Vec<(String, Vec<u8>)>;
    /// Sets (or, with `None`, removes) a header of the current stream.
    fn set_header(&self, map: Headers, name: &str, value: Option<&str>) -> Result<(), Refused>;
    /// The first `size` bytes of the buffered response body.
    fn response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the buffered response body (`size` bytes) with `value`.
    fn set_response_body(&self, size: usize, value: &[u8]) -> Result<(), Refused>;
    /// Answers the current stream locally (no body).
    fn send_response(&self, status: u16, headers: &[(&str, &str)]) -> Result<(), Refused>;
    /// Sends a request to an Envoy cluster; its answer comes to the current stream's
    /// `on_http_call_response` with the returned token.
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Refused>;
    /// A header of the callout being answered. Read only through `callout::Answer`: with no
    /// headers delivered, proxy-wasm 0.2.5 panics here.
    fn call_header(&self, name: &str) -> Option<Vec<u8>>;
    /// The first `size` bytes of the body of the callout being answered (read only through
    /// `callout::Answer`).
    fn call_body(&self, size: usize) -> Option<Vec<u8>>;
    /// A shared-data value (visible to every worker).
    fn shared(&self, key: &str) -> Option<Vec<u8>>;
    /// Sets a shared-data value.
    fn set_shared(&self, key: &str, value: &[u8]) -> Result<(), Refused>;
    /// Makes another stream of this VM the current one (to resume it).
    fn set_effective_context(&self, context_id: u32) -> Result<(), Refused>;
    /// Lets the current stream's paused request go on.
    fn resume_request(&self) -> Result<(), Refused>;
    /// Lets the current stream's paused response go on.
    fn resume_response(&self) -> Result<(), Refused>;
    /// The host's clock.
    fn now(&self) -> Option<SystemTime>;
    /// Seconds since the epoch, by the host's clock (0 if it cannot tell).
    fn now_s(&self) -> u64 {
        self.now()
            .and_then(|now| now.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| since.as_secs())
    }
    /// A property such as `source.address`.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Sets a property of the current stream; Envoy keeps it as the filter state object
    /// `wasm.<name>`, which access logs can print (`%FILTER_STATE(wasm.<name>:PLAIN)%`).
    fn set_property(&self, name: &str, value: &[u8]) -> Result<(), Refused>;
    /// The plugin's configuration.
    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, Refused>;
    /// 64 bits the requesters cannot predict (for the secret that places produced digests).
    fn random(&self) -> u64;
    /// Defines a counter; its id is what [`Host::increment`] takes.
    fn define_counter(&self, name: &str) -> Result<u32, Refused>;
    /// Adds one to a counter.
    fn increment(&self, id: u32) -> Result<(), Refused>;
}

/// The host the filter runs in: Envoy, through the proxy-wasm ABI.
#[derive(Debug, Clone, Copy, Default)]
pub struct Envoy;

fn map_type(map: Headers) -> MapType {
    match map {
        Headers::Request => MapType::HttpRequestHeaders,
        Headers::Response => MapType::HttpResponseHeaders,
    }
}

impl Host for Envoy {
    fn header(&self, map: Headers, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(map_type(map), name).ok().flatten()
    }

    fn headers(&self, map: Headers) -> Vec<(String, Vec<u8>)> {
        hostcalls::get_map_bytes(map_type(map)).unwrap_or_default()
    }

    fn set_header(&self, map: Headers, name: &str, value: Option<&str>) -> Result<(), Refused> {
        hostcalls::set_map_value(map_type(map), name, value).map_err(Refused)
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size).ok().flatten()
    }

    fn set_response_body(&self, size: usize, value: &[u8]) -> Result<(), Refused> {
        hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, value).map_err(Refused)
    }

    fn send_response(&self, status: u16, headers: &[(&str, &str)]) -> Result<(), Refused> {
        hostcalls::send_http_response(u32::from(status), headers.to_vec(), None).map_err(Refused)
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Refused> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout)
            .map_err(Refused)
    }

    fn call_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name).ok().flatten()
    }

    fn call_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size).ok().flatten()
    }

    fn shared(&self, key: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(key).ok().and_then(|(value, _cas)| value)
    }

    fn set_shared(&self, key: &str, value: &[u8]) -> Result<(), Refused> {
        hostcalls::set_shared_data(key, Some(value), None).map_err(Refused)
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), Refused> {
        hostcalls::set_effective_context(context_id).map_err(Refused)
    }

    fn resume_request(&self) -> Result<(), Refused> {
        hostcalls::resume_http_request().map_err(Refused)
    }

    fn resume_response(&self) -> Result<(), Refused> {
        hostcalls::resume_http_response().map_err(Refused)
    }

    fn now(&self) -> Option<SystemTime> {
        hostcalls::get_current_time().ok()
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn set_property(&self, name: &str, value: &[u8]) -> Result<(), Refused> {
        hostcalls::set_property(vec![name], Some(value)).map_err(Refused)
    }

    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, Refused> {
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).map_err(Refused)
    }

    fn random(&self) -> u64 {
        // std seeds its hash keys from WASI's random_get, which Envoy serves from its own
        // random source; each RandomState after the first differs.
        RandomState::new().hash_one(0u8)
    }

    fn define_counter(&self, name: &str) -> Result<u32, Refused> {
        hostcalls::define_metric(MetricType::Counter, name).map_err(Refused)
    }

    fn increment(&self, id: u32) -> Result<(), Refused> {
        hostcalls::increment_metric(id, 1).map_err(Refused)
    }
}

/// Makes a panic, should one ever happen, say so at critical level in Envoy's log before the VM
/// traps: otherwise the trap is all an operator sees. (Not a host call of the request path, so
/// not part of [`Host`].)
pub fn log_panics_as_critical() {
    std::panic::set_hook(Box::new(|info| {
        let message = format!(
            "blobsteer panicked, the VM traps (failure_policy decides what follows): {info}"
        );
        // Nothing more can be done if even the log refuses.
        let _ = hostcalls::log(LogLevel::Critical, &message);
    }));
}

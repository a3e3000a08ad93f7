//! The proxy-wasm SDK's entry points: the VM's `_initialize`, and the SDK traits forwarding
//! each host event to the root or the stream, with Envoy as the host.

use crate::host::{self, Delivered, Envoy};
use crate::root::Root;
use crate::stream::Stream;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    host::log_panics_as_critical();
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(Root::new(Envoy))
    });
}}

impl Context for Root<Envoy> {}

impl RootContext for Root<Envoy> {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.configure()
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match self.stream(context_id) {
            Some(stream) => Box::new(stream),
            None => Box::new(PassThrough),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Streams of a VM without a configuration (never reached: Envoy refuses such a filter).
struct PassThrough;

impl Context for PassThrough {}
impl HttpContext for PassThrough {}

impl Context for Stream<Envoy> {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        self.on_call_answer(token, Delivered { headers, body });
    }

    fn on_done(&mut self) -> bool {
        Stream::on_done(self);
        true
    }
}

impl HttpContext for Stream<Envoy> {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        Stream::on_request_headers(self, end_of_stream)
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        Stream::on_request_body(self)
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        Stream::on_response_headers(self)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        Stream::on_response_body(self, body_size, end_of_stream)
    }
}

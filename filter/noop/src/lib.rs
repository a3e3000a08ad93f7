//! A proxy-wasm HTTP filter that does nothing: every callback lets the stream continue.
//!
//! `make bench` loads it where blobsteer would be, built by the same toolchain with the same
//! release profile, so the difference between the two is blobsteer's own work and not the cost
//! of crossing into a wasm VM on every request, which any wasm filter pays.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

/// The VM's entry point, exported as `_initialize`.
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> { Box::new(Noop) });
    }}
}

/// The root context and every HTTP context alike: no state, no work.
struct Noop;

impl Context for Noop {}

impl RootContext for Noop {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The default callbacks, which all continue: the stream is not touched.
impl HttpContext for Noop {}

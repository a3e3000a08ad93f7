//! The blobsteer Envoy filter: proxy-wasm glue only.
//!
//! Everything is decided by `blobsteer-core`; this crate reads headers and properties from the
//! host, asks the core, and applies the answer (a local redirect, a rewritten `Location`, a
//! header, a counter). Host calls that can fail are handled, and any failure leaves the request
//! and response as they were: the filter fails open.

mod http;
mod manifests;
mod metrics;
mod root;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

/// The VM's entry point, exported as `_initialize`.
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
            Box::new(root::Root::default())
        });
    }}
}

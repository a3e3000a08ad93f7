//! The root context: accepts or refuses the configuration, once per VM.

use crate::http::{Filter, HttpFilter, PassThrough};
use crate::metrics::Metrics;
use blobsteer_core::Config;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::rc::Rc;

/// Holds the compiled configuration shared by every HTTP stream of this VM.
#[derive(Default)]
pub struct Root {
    filter: Option<Rc<Filter>>,
}

impl Context for Root {}

impl RootContext for Root {
    /// Returning false makes Envoy refuse the filter (and NACK an xDS update): a bad config is
    /// never half-applied.
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                log::error!("refusing to start: the plugin has no configuration");
                return false;
            }
            Err(status) => {
                log::error!("refusing to start: cannot read the configuration: {status:?}");
                return false;
            }
        };
        let started = hostcalls::get_current_time().ok();
        match Config::from_json(&bytes) {
            Ok(config) => {
                // Parse, validation and table build, timed by the host: what a VM pays at load.
                let took = started
                    .zip(hostcalls::get_current_time().ok())
                    .and_then(|(start, end)| end.duration_since(start).ok())
                    .unwrap_or_default();
                log::info!(
                    "configured in {:.3} ms ({} bytes): {}",
                    took.as_secs_f64() * 1000.0,
                    bytes.len(),
                    config.summary()
                );
                let metrics = Metrics::define(&config);
                self.filter = Some(Rc::new(Filter::new(config, metrics)));
                true
            }
            Err(errors) => {
                for error in &errors.0 {
                    log::error!("invalid configuration: {error}");
                }
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match &self.filter {
            Some(filter) => Box::new(HttpFilter::new(context_id, Rc::clone(filter))),
            None => Box::new(PassThrough),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

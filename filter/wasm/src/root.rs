//! The root context: accepts or refuses the configuration, once per VM, and makes the streams.

use crate::host::Host;
use crate::stream::Stream;
use crate::vm::Vm;
use blobsteer_core::Config;
use std::rc::Rc;

/// Holds the VM's state once its configuration is accepted.
pub struct Root<H> {
    host: H,
    vm: Option<Rc<Vm<H>>>,
}

impl<H: Host + Clone> Root<H> {
    /// A VM that has not been configured yet.
    pub fn new(host: H) -> Self {
        Root { host, vm: None }
    }

    /// Reads, validates and compiles the configuration. Returning false makes Envoy refuse the
    /// filter (and NACK an xDS update): a bad config is never half-applied.
    pub fn configure(&mut self) -> bool {
        let bytes = match self.host.plugin_configuration() {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                log::error!("refusing to start: the plugin has no configuration");
                return false;
            }
            Err(refused) => {
                log::error!("refusing to start: cannot read the configuration: {refused:?}");
                return false;
            }
        };
        let started = self.host.now();
        match Config::from_json(&bytes) {
            Ok(config) => {
                // Parse, validation and table build, timed by the host: what a VM pays at load.
                let took = started
                    .zip(self.host.now())
                    .and_then(|(start, end)| end.duration_since(start).ok())
                    .unwrap_or_default();
                log::info!(
                    "configured in {:.3} ms ({} bytes): {}",
                    took.as_secs_f64() * 1000.0,
                    bytes.len(),
                    config.summary()
                );
                self.vm = Some(Rc::new(Vm::new(self.host.clone(), config)));
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

    /// A stream of this VM; `None` before a configuration was accepted (never reached: Envoy
    /// refuses such a filter).
    pub fn stream(&self, context_id: u32) -> Option<Stream<H>> {
        self.vm.as_ref().map(|vm| Stream::new(context_id, Rc::clone(vm)))
    }
}

//! This Envoy's memory of the digests it produced (or learned from the fleet's store), in shared
//! data: two candidate slots per digest, placed by a secret of the Envoy (see
//! `blobsteer_core::manifest::Mapping`). Only `manifest` reads and writes it, through here.

use crate::host::Host;
use crate::vm::Vm;
use blobsteer_core::manifest::{Mapping, SECRET_KEY};

/// The memory as one stream event uses it: the secret is read once, however many digests the
/// event looks up or remembers (an index and all its children).
pub struct Memory<'v, H> {
    vm: &'v Vm<H>,
    secret: Vec<u8>,
}

impl<'v, H: Host> Memory<'v, H> {
    /// The memory of `vm`'s Envoy.
    pub fn open(vm: &'v Vm<H>) -> Self {
        Memory { vm, secret: secret(vm) }
    }

    /// The VM it belongs to.
    pub fn vm(&self) -> &'v Vm<H> {
        self.vm
    }

    /// The shared-data keys where `digest` would be remembered.
    fn places(&self, digest: &str) -> [String; 2] {
        Mapping::places(digest, self.vm.config.manifests.mapping_slots, &self.secret)
    }

    /// What the two candidate slots of `digest` hold now.
    pub fn recall(&self, digest: &str) -> [Option<Vec<u8>>; 2] {
        self.places(digest).map(|key| self.vm.host.shared(&key))
    }

    /// Remembers a mapping's encoded `value` for `digest`, in the candidate slot that already
    /// holds it, else an empty one, else the one written earlier.
    pub fn remember(&self, digest: &str, value: &[u8]) {
        let places = self.places(digest);
        let held = places.clone().map(|key| self.vm.host.shared(&key));
        let at = Mapping::choose(digest, [held[0].as_deref(), held[1].as_deref()]);
        let key = places.get(at).map_or("", String::as_str);
        if let Err(refused) = self.vm.host.set_shared(key, value) {
            log::warn!("cannot remember a rewritten digest ({key}): {refused:?}");
        }
    }
}

/// The Envoy's secret that places produced digests (shared by its workers): made at first use,
/// then read back, so the workers that race to make it end up with the one written last.
fn secret<H: Host>(vm: &Vm<H>) -> Vec<u8> {
    if let Some(secret) = vm.host.shared(SECRET_KEY).filter(|s| !s.is_empty()) {
        return secret;
    }
    let made = format!("{:016x}{:016x}", vm.host.random(), vm.host.random()).into_bytes();
    if let Err(refused) = vm.host.set_shared(SECRET_KEY, &made) {
        log::warn!("cannot keep the secret that places produced digests: {refused:?}");
    }
    vm.host.shared(SECRET_KEY).filter(|s| !s.is_empty()).unwrap_or(made)
}

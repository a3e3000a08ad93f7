//! The blobsteer Envoy filter: proxy-wasm glue only.
//!
//! Everything is decided by `blobsteer-core`; this crate reads from the host, asks the core,
//! and applies the answer. Every host call goes through one seam ([`host::Host`], implemented
//! for Envoy in `host.rs`, the only file that calls `proxy_wasm::hostcalls`), so the glue is
//! tested in Rust against a fake host. Any failure leaves the request and response as they
//! were: the filter fails open.
//!
//! The modules, in the order their imports run: `host` (the seam), `metrics`,
//! `check_registry` and `vm` (what a VM's streams share), `callout` (answers by token),
//! `memory` (produced digests in shared data) and `store` (calls to the fleet's etcd), the
//! phase owners `blob`, `check` and `manifest`, then `stream` (one HTTP stream) and `root`.
//! `sdk` connects them to the proxy-wasm SDK's traits. `docs/request-handling.md` draws the
//! flow.

mod blob;
mod callout;
mod check;
mod check_registry;
mod host;
mod manifest;
mod memory;
mod metrics;
mod root;
mod sdk;
mod store;
mod stream;
mod vm;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

//! blobsteer's decisions, free of any host: the configuration, where a client is, which backend
//! serves it, and what the filter does with each request and response.
//!
//! The wasm filter only reads from Envoy, calls into this crate, and applies the answer; the
//! `blobsteer` CLI calls the very same functions.

pub mod base64;
pub mod cidr_table;
pub mod client_ip;
pub mod config;
pub mod decision;
pub mod digest;
pub mod existence;
pub mod health;
pub mod manifest;
pub mod mapping;
pub mod ranges;
pub mod registry_path;
pub mod rewriting;
pub mod slot;
pub mod store;
pub mod url_template;

pub use config::{Backend, BlobMode, Config, ConfigError, ConfigErrors, Target};
pub use decision::{
    Action, ClientMatch, Decision, DigestLookup, Fallback, FallbackChain, ManifestPlan, Redirect,
    Request, RequestStep, ResponseDecision, ResponsePlan, ResponseStep, Route, Verdict,
};

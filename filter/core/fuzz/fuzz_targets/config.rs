//! `Config::from_json` on arbitrary bytes (seeded with real configs and a JSON dictionary).
//!
//! Properties:
//! - never panics;
//! - on `Err`: at least one error, and every error (and the whole list) displays as non-empty text;
//! - on `Ok`: `summary()` works and counts what the table holds; every backend has a valid name
//!   and an http(s) template; the CIDR table answers lookups of fixed addresses and of the
//!   boundaries of the configured prefixes exactly as a brute-force longest-prefix match does;
//!   a blob request from each of those addresses is decided without panicking, and a redirect
//!   goes to the matched backend's URL, free of CR/LF/whitespace, and of `..` unless the
//!   operator's template has it.

#![no_main]

use blobsteer_core::config::Target;
use blobsteer_core::decision::{decide_request, describe};
use blobsteer_core::{Config, Request, RequestStep};
use blobsteer_fuzz::{assert_safe_location, boundary_addresses, longest_match, url_prefix};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

const FIXED: [&str; 10] = [
    "15.236.10.20",
    "15.193.1.5",
    "44.192.1.2",
    "198.51.100.7",
    "0.0.0.0",
    "255.255.255.255",
    "::",
    "2a05:d012::1",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "::ffff:15.236.10.20",
];

/// Boundary addresses are checked for about this many prefixes, spread over the whole table (a
/// big one is indexed on the top 16 bits), to keep executions fast.
const PREFIXES_PROBED: usize = 64;

const BLOB: &str =
    "/v2/demo/hello/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    match Config::from_json(data) {
        Ok(config) => check_config(&config),
        Err(errors) => {
            assert!(!errors.0.is_empty(), "Err with no error in it");
            for error in &errors.0 {
                assert!(
                    !error.to_string().trim().is_empty(),
                    "an error displays as nothing: {error:?}"
                );
                assert!(!error.message.trim().is_empty(), "an error without a message: {error:?}");
            }
            assert!(!errors.to_string().trim().is_empty());
        }
    }
});

fn check_config(config: &Config) {
    let summary = config.summary();
    let backends = config.backends();
    assert!(!backends.is_empty(), "a config without backends was accepted");
    assert!(summary.starts_with(&format!("{} backend", backends.len())), "{summary}");
    let entries = config.table().entries();
    let routable = entries.iter().filter(|e| e.target != Target::NonRoutable).count();
    assert!(
        summary.contains(&format!(", {routable} prefixes (")),
        "{summary} for {routable} prefixes"
    );
    let non_routable = entries.len() - routable;
    assert!(summary.contains(&format!(", {non_routable} non-routable,")), "{summary}");

    for backend in backends {
        let name = &backend.name;
        assert!(
            (1..=64).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "backend name {name:?}"
        );
        let template = backend.blob_url.as_str();
        assert!(
            template.starts_with("http://") || template.starts_with("https://"),
            "{template:?}"
        );
    }
    for entry in entries {
        assert_eq!(entry.prefix, entry.prefix.trunc(), "a prefix with host bits was accepted");
        if let Target::Backend(index) = entry.target {
            assert!(index < backends.len(), "entry {entry:?} names no backend");
        }
    }

    let mut addresses: Vec<IpAddr> = FIXED.iter().filter_map(|text| text.parse().ok()).collect();
    for entry in entries.iter().step_by(entries.len().div_ceil(PREFIXES_PROBED).max(1)) {
        addresses.extend(boundary_addresses(entry.prefix));
    }
    for ip in addresses {
        assert_eq!(config.table().lookup(ip), longest_match(config, ip), "lookup of {ip}");
        check_blob_request(config, ip);
    }
}

fn check_blob_request(config: &Config, ip: IpAddr) {
    let xff = ip.to_string();
    let forwarded_for = [xff.as_str()];
    let request =
        Request {
            method: "GET",
            path: BLOB,
            forwarded_for: &forwarded_for,
            source_address: None,
            user_agent: None,
            has_body: false,
        };
    let decision = decide_request(&config, &request);
    let _ = describe(&config, blobsteer_core::Action::Redirected, decision.client.as_ref());
    // Not an exhaustive `match`: steps the core may add (other than blob redirects) are not this
    // target's business, and must not stop it from building.
    let location = if let RequestStep::Respond(redirect) = &decision.step {
        &redirect.location
    } else if let RequestStep::Forward(plan) = &decision.step {
        &plan.location
    } else {
        return;
    };
    let backend = decision.client.and_then(|c| c.backend()).and_then(|i| config.backends().get(i));
    let Some(backend) = backend else { panic!("steered to no backend: {decision:?}") };
    assert!(
        location.starts_with(url_prefix(backend.blob_url.as_str())),
        "{location} for {backend:?}"
    );
    assert!(location.contains("0123456789abcdef"), "{location} lacks the digest");
    assert_safe_location(location, backend.blob_url.as_str());
}

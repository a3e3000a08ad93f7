//! `Config::decide_request` on arbitrary requests, against two fixed, valid configurations (one
//! `redirect`, one `verify_upstream`), both with a backend that has a `cluster` (existence
//! checks) and `non_routable` prefixes nested in backend prefixes.
//!
//! Input layout: (lossy) UTF-8 split on `\n` as `method \n path \n xff line \n xff line ...`.
//! Without a third part the header is absent and `source.address` (fixed, inside a backend
//! prefix) is used. (The path cannot hold `\n` here; `registry_path` fuzzes that.)
//!
//! Properties:
//! - never panics;
//! - a `Respond` or `Forward` only for a `GET`/`HEAD` whose path parses as a blob, with a client
//!   whose longest match (brute force) is the backend steered to; the location starts with that
//!   backend's URL prefix (template text before `{`), holds the digest, and no CR, LF, space or
//!   `..`; a `Respond` has the configured redirect status;
//! - a backend with a `cluster` always gets an existence check of exactly that location, whose
//!   cache entries read back as written: before the redirect in `redirect` mode, in the plan
//!   (after the upstream) in `verify_upstream` mode;
//! - `ResponsePlan::judge(status)` for every status 100..=599 never panics and follows the
//!   documented table (200 and 206 redirect, a redirect status rewrites `Location`, the rest
//!   passes without a check); with a check, the mirror's "absent" keeps the upstream's answer
//!   except for a GET's yes, sent back to its own blob path marked for the registry;
//! - a checked backend's fallback chain walks its `fallback` backends in order, each with a
//!   safe location of that backend and a check exactly when it has a cluster.

#![no_main]

use blobsteer_core::config::{BlobMode, REDIRECT_STATUSES};
use blobsteer_core::existence::{CheckRequest, Known};
use blobsteer_core::decision::{decide_request, describe};
use blobsteer_core::registry_path::RegistryPath;
use blobsteer_core::{
    Action, ClientMatch, Config, Decision, Request, RequestStep, ResponseDecision, ResponsePlan,
    ResponseStep, Verdict,
};
use blobsteer_fuzz::{assert_safe_location, longest_match, url_prefix};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const BACKENDS: &str = r#"
    "backends": [
        {"name": "aws-eu-west-3", "blob_url": "https://eu.mirror.example/containers/images/{digest}",
         "cidrs": ["15.236.0.0/15", "2a05:d012::/36", "0.0.0.0/1"], "cluster": "mirror_eu",
         "fallback": ["gcp-europe-north1", "aws-ap-northeast-1"]},
        {"name": "aws-ap-northeast-1", "blob_url": "http://ap.mirror.example:8080/{repository}/{algorithm}/{encoded}/{digest}",
         "cidrs": ["15.193.1.0/24", "2000::/3"]},
        {"name": "gcp-europe-north1", "blob_url": "https://storage.example/bucket-europe-north1/{repository}/blobs/{digest}",
         "cidrs": ["128.0.0.0/2", "34.88.0.0/16", "2600:1900:4280::/44"], "cluster": "gcs_europe_north1"}
    ],
    "non_routable": ["15.193.0.0/19", "10.0.0.0/8", "2600:1900::/28", "::ffff:0:0/96"]
"#;

static CONFIGS: LazyLock<[Config; 2]> = LazyLock::new(|| {
    let redirect = format!(
        r#"{{{BACKENDS}, "client_ip": {{"xff_num_trusted_hops": 0, "source_address_fallback": true}},
            "blobs": {{"mode": "redirect", "redirect_status": 308}},
            "existence_check": {{"cache_slots": 1024, "negative_ttl_s": 30}}}}"#
    );
    let verify = format!(
        r#"{{{BACKENDS}, "client_ip": {{"xff_num_trusted_hops": 1, "source_address_fallback": true}},
            "blobs": {{"mode": "verify_upstream", "redirect_status": 302}},
            "decision_header": "x-blobsteer-decision"}}"#
    );
    [redirect, verify].map(|json| Config::from_json(json.as_bytes()).unwrap())
});

/// The connection's address when there is no `x-forwarded-for`: inside `15.236.0.0/15`.
const SOURCE_ADDRESS: &str = "15.236.10.20:41234";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let forwarded_for: Vec<&str> =
        parts.next().map(|xff| xff.split('\n').collect()).unwrap_or_default();
    let request = Request {
        method,
        path,
        forwarded_for: &forwarded_for,
        source_address: Some(SOURCE_ADDRESS),
        user_agent: Some("containerd/1.7.24"),
        // A body makes every request a pass; the decisions worth fuzzing are those without.
        has_body: false,
    };
    for config in CONFIGS.iter() {
        let decision = decide_request(&config, &request);
        check(config, &request, &decision);
    }
});

fn check(config: &Config, request: &Request<'_>, decision: &Decision) {
    let action = match &decision.step {
        RequestStep::Pass(action) => *action,
        _ => Action::Redirected,
    };
    let _ = describe(&config, action, decision.client.as_ref());
    // Not an exhaustive `match`: steps the core may add (e.g. for manifests) are checked only
    // for not being blob redirects, and must not stop this target from building.
    let location = if let RequestStep::Respond(redirect) = &decision.step {
        assert_eq!(config.blobs.mode, BlobMode::Redirect);
        assert_eq!(redirect.status, config.blobs.redirect_status);
        &redirect.location
    } else if let RequestStep::Forward(plan) = &decision.step {
        assert_eq!(config.blobs.mode, BlobMode::VerifyUpstream);
        check_plan(config, request, plan);
        &plan.location
    } else {
        if let RequestStep::Pass(_) = decision.step {
            if let Some(ClientMatch::Backend { .. }) = decision.client {
                panic!("a client with a backend passed: {decision:?}");
            }
        }
        return;
    };

    let RegistryPath::Blob { digest, .. } = RegistryPath::parse(request.path) else {
        panic!("steered a request whose path is not a blob: {:?}", request.path);
    };
    assert!(matches!(request.method, "GET" | "HEAD"), "steered a {:?}", request.method);
    let Some(ClientMatch::Backend { ip, prefix, backend, .. }) = decision.client else {
        panic!("steered without a backend: {decision:?}");
    };
    let entry = longest_match(config, ip).expect("the client matches a prefix");
    assert_eq!((entry.prefix, entry.target), (prefix, blobsteer_core::Target::Backend(backend)));
    let backend = &config.backends()[backend];
    let prefixes: Vec<&str> =
        config.backends().iter().map(|b| url_prefix(b.blob_url.as_str())).collect();
    assert!(prefixes.iter().any(|p| location.starts_with(p)), "{location:?} is no backend's");
    assert!(
        location.starts_with(url_prefix(backend.blob_url.as_str())),
        "{location:?} for {backend:?}"
    );
    assert!(location.contains(digest.encoded()), "{location:?} lacks {digest}");
    assert_safe_location(location, backend.blob_url.as_str());

    let check = match &decision.step {
        RequestStep::Forward(plan) => {
            assert_eq!(decision.check, None, "verify_upstream asks nothing before the upstream");
            &plan.check
        }
        _ => &decision.check,
    };
    match (&backend.cluster, check) {
        (Some(cluster), Some(check)) => check_existence(config, cluster, location, check),
        (None, None) => {}
        (cluster, check) => panic!("cluster {cluster:?} but check {check:?}"),
    }

    // A checked backend's chain, walked: its `fallback` backends in order, each steered to
    // safely, with a check exactly when it has a cluster.
    let mut chain = decision.fallbacks.clone();
    let walked: Vec<usize> = std::iter::from_fn(|| chain.next(config))
        .map(|fallback| {
            let next = &config.backends()[fallback.backend];
            let location = &fallback.redirect.location;
            assert_eq!(fallback.redirect.status, config.blobs.redirect_status);
            assert!(location.starts_with(url_prefix(next.blob_url.as_str())), "{location:?}");
            assert!(location.contains(digest.encoded()), "{location:?} lacks {digest}");
            assert_safe_location(location, next.blob_url.as_str());
            match (&next.cluster, &fallback.check) {
                (Some(cluster), Some(check)) => check_existence(config, cluster, location, check),
                (None, None) => {}
                (cluster, check) => panic!("fallback cluster {cluster:?} but check {check:?}"),
            }
            fallback.backend
        })
        .collect();
    let want = if check.is_some() { backend.fallback.clone() } else { Vec::new() };
    assert_eq!(walked, want);
}

fn check_plan(config: &Config, request: &Request<'_>, plan: &ResponsePlan) {
    assert_eq!(plan.send_as_head(), request.method == "GET");
    if let Some(retry) = &plan.head_for_get {
        let (path, query) = retry.split_once('?').expect("a marked path");
        assert_eq!(query, "blobsteer=registry");
        assert_eq!(RegistryPath::parse(path), RegistryPath::parse(request.path));
        assert!(path.starts_with("/v2/") && !retry.contains(['\r', '\n', ' ', '#']), "{retry:?}");
    }
    assert_eq!(plan.redirect_status, config.blobs.redirect_status);
    for status in 100..=599u16 {
        let (answer, absent) = match plan.clone().judge(status) {
            Verdict::Decided(answer) => (answer, None),
            Verdict::Checked { check, present, absent } => {
                assert_eq!(Some(&*check), plan.check.as_ref());
                (present, Some(absent))
            }
        };
        let steered = check_answer(plan, status, &answer);
        assert_eq!(absent.is_some(), steered && plan.check.is_some(), "status {status}");
        if let Some(absent) = absent {
            assert_eq!(absent.action, Action::PassedMirrorMissing);
            let want = match (&answer.step, &plan.head_for_get) {
                (ResponseStep::Respond(_), Some(retry)) => {
                    ResponseStep::Respond(blobsteer_core::Redirect { status: 307, location: retry.clone() })
                }
                _ => ResponseStep::Pass,
            };
            assert_eq!(absent.step, want, "status {status}");
        }
    }
}

/// Checks the steering decision on `status`; returns whether the upstream said yes.
fn check_answer(plan: &ResponsePlan, status: u16, answer: &ResponseDecision) -> bool {
    let (steered, replaced) = match &answer.step {
        ResponseStep::Respond(redirect) => {
            // The upstream's yes: 200, or 206 to a Range request.
            assert!(matches!(status, 200 | 206), "{status} became the redirect");
            assert_eq!(
                (redirect.status, &redirect.location),
                (plan.redirect_status, &plan.location)
            );
            assert_eq!(answer.action, Action::Redirected);
            (true, true)
        }
        ResponseStep::RewriteLocation(location) => {
            assert!(REDIRECT_STATUSES.contains(&status), "{status} rewrote Location");
            assert_eq!(location, &plan.location);
            assert_eq!(answer.action, Action::LocationRewritten);
            (true, false)
        }
        ResponseStep::Pass => {
            let yes = matches!(status, 200 | 206);
            assert!(!yes && !REDIRECT_STATUSES.contains(&status), "{status} passed");
            assert_eq!(answer.action, Action::PassedUpstreamAnswer);
            (false, false)
        }
    };
    assert_eq!(answer.zero_content_length(), plan.send_as_head() && !replaced, "status {status}");
    assert_eq!(answer.backend, plan.backend);
    steered
}

fn check_existence(config: &Config, cluster: &str, location: &str, check: &CheckRequest) {
    assert_eq!(check.cluster, cluster);
    assert_eq!(format!("{}://{}{}", check.scheme, check.authority, check.path), location);
    assert!(check.path.starts_with('/'), "{check:?}");
    let slot: u64 = check
        .cache_key
        .strip_prefix("blobsteer.exists.")
        .and_then(|s| s.parse().ok())
        .expect("cache key");
    assert!(slot < u64::from(config.existence_check.cache_slots), "{check:?}");
    let settings = &config.existence_check;
    let now = 1_785_300_000;
    let present = check.entry(Known::Present, settings, now);
    let positive = u64::from(settings.positive_ttl_s);
    assert_eq!(check.read(Some(&present), now + positive - 1), Some(Known::Present));
    assert_eq!(check.read(Some(&present), now + positive), None);
    let absent = check.entry(Known::Absent, settings, now);
    let ttl = u64::from(settings.negative_ttl_s);
    let fresh = if ttl > 0 { Some(Known::Absent) } else { None };
    assert_eq!(check.read(Some(&absent), now), fresh);
    assert_eq!(check.read(Some(&absent), now + ttl), None);
}

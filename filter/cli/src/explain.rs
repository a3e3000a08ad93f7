//! `blobsteer explain`: what the filter does with a request, from the filter's own decision code.

use crate::args::{Parsed, Usage};
use blobsteer_core::client_ip::ClientIpSource;
use blobsteer_core::decision::{classify_client, decide_request};
use blobsteer_core::manifest::Untouched;
use blobsteer_core::rewriting::outlook;
use blobsteer_core::{ClientMatch, Config, Decision, Request, RequestStep};
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::ExitCode;

/// A blob path used when `--path` is not given.
const SAMPLE_BLOB_PATH: &str =
    "/v2/library/sample/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Runs the command.
pub fn run(argv: &[String]) -> Result<ExitCode, Usage> {
    let args = Parsed::new(argv, &["config", "method", "path", "source", "user-agent"])?;
    let config_path =
        args.get("config").ok_or_else(|| Usage("explain needs --config CONFIG".into()))?;
    let config = match crate::load_config(config_path) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let method = args.get("method").unwrap_or("GET");
    let path = args.get("path").unwrap_or(SAMPLE_BLOB_PATH);
    let source = args.get("source");
    let user_agent = args.get("user-agent");
    let explain = |xff: Option<&str>| {
        let lines: Vec<&str> = xff.into_iter().collect();
        let request = Request {
            method,
            path,
            forwarded_for: &lines,
            source_address: source,
            user_agent,
            has_body: false,
        };
        println!("{}", describe(&config, &request, xff));
    };
    if args.positional.is_empty() {
        explain(None);
    } else if args.positional == ["-"] {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(line) => explain(Some(&line)),
                Err(e) => {
                    eprintln!("blobsteer: reading stdin: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    } else {
        for xff in &args.positional {
            explain(Some(xff));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One JSON object: the client as the filter sees it, and what the filter does.
fn describe(config: &Config, request: &Request<'_>, xff: Option<&str>) -> Value {
    let decision = decide_request(config, request);
    let manifest = outlook(config, request.path, &decision);
    let Decision { client, step, check, fallbacks } = decision;
    // The decision only looks at the client for blob downloads; show it for every request anyway.
    let client = client
        .unwrap_or_else(|| classify_client(config, request.forwarded_for, request.source_address));
    // Redirect mode checks before it answers; verify_upstream checks once the upstream said yes.
    let (check, asked, if_absent) = match &step {
        RequestStep::Forward(plan) => {
            let if_absent = match &plan.head_for_get {
                Some(retry) => format!("passed_mirror_missing: a 307 back to {retry}"),
                None => "passed_mirror_missing: the upstream's answer".to_string(),
            };
            (plan.check.clone(), "after_upstream_yes", if_absent)
        }
        _ => (check, "before_upstream", "passed_mirror_missing: upstream untouched".to_string()),
    };
    let reason = match &step {
        RequestStep::LeaveManifest(reason) => Some(*reason),
        _ => None,
    };
    let (action, status, location) = match step {
        RequestStep::Respond(redirect) => {
            ("redirected", Some(redirect.status), Some(redirect.location))
        }
        RequestStep::Forward(plan) => {
            ("verify_upstream", Some(plan.redirect_status), Some(plan.location))
        }
        RequestStep::Pass(action) => (action.as_str(), None, None),
        RequestStep::RewriteManifest(_) => ("rewrite_manifest", None, None),
        RequestStep::LookupRewritten(_) => ("lookup_rewritten_digest", None, None),
        RequestStep::LeaveManifest(_) => ("manifest_untouched", None, None),
    };
    let source = match client {
        ClientMatch::Unmapped { source, .. }
        | ClientMatch::NonRoutable { source, .. }
        | ClientMatch::Default { source, .. }
        | ClientMatch::Backend { source, .. } => Some(match source {
            ClientIpSource::ForwardedFor => "x-forwarded-for",
            ClientIpSource::SourceAddress => "source.address",
        }),
        ClientMatch::NoClientIp => None,
    };
    json!({
        "xff": xff,
        "method": request.method,
        "path": request.path,
        "client_ip": client.ip().map(|ip| ip.to_string()),
        "client_ip_source": source,
        "backend": client.backend().and_then(|b| config.backends().get(b)).map(|b| b.name.as_str()),
        // Where the client goes, in order, if its (checked) backend lacks the blob or is down:
        // each in turn, used at once without a cluster, else checked; after them, the registry.
        "fallback": fallbacks
            .backends()
            .filter_map(|b| config.backends().get(b))
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>(),
        "prefix": client.prefix().map(|p| p.to_string()),
        "non_routable": matches!(client, ClientMatch::NonRoutable { .. }),
        "action": action,
        // What `manifest.untouched.<reason>` counts, when the request alone decides it.
        "reason": reason.map(Untouched::as_str),
        "status": status,
        "location": location,
        // With a cluster, the filter asks the mirror before anyone is sent there.
        "existence_check": check.map(|c| json!({
            "cluster": c.cluster,
            "head": format!("{}://{}{}", c.scheme, c.authority, c.path),
            "asked": asked,
            "if_absent": if_absent,
        })),
        // For a manifest request: whether its answer may be rewritten, and why.
        "manifest": manifest.map(|m| json!({
            "rewrite": m.rewrite,
            "why": m.why,
            "upstream_method": m.upstream_method,
            "advertises": m.advertises,
        })),
    })
}

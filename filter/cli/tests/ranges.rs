//! `blobsteer ranges` on small fixtures, and on the real provider files of `../shared/data`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use ipnet::IpNet;
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Output;

mod common;
use common::{blobsteer, root, testdata};

const TEMPLATES: [&str; 6] = [
    "--blob-url",
    "aws=https://aws-{region}.example/containers/images/{digest}",
    "--blob-url",
    "gcp=https://gcp-{region}.example/containers/images/{digest}",
    "--blob-url",
    "azure=https://azure-{region}.example/containers/images/{digest}",
];

fn fixture(name: &str) -> String {
    testdata(&format!("ranges/{name}"))
}

fn ranges(files: &[(&str, String)], extra: &[&str]) -> Output {
    let mut args = vec!["ranges".to_string()];
    for (flag, path) in files {
        args.push(format!("--{flag}"));
        args.push(path.clone());
    }
    args.extend(TEMPLATES.iter().chain(extra).map(ToString::to_string));
    blobsteer(&args.iter().map(String::as_str).collect::<Vec<_>>(), b"")
}

#[test]
fn fixtures_make_a_config_that_check_accepts_and_explain_routes() {
    let files = [
        ("aws", fixture("aws.json")),
        ("gcp", fixture("gcp.json")),
        ("azure", fixture("azure.json")),
    ];
    let out = ranges(&files, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = ranges(&files, &[]);
    assert_eq!(out.stdout, again.stdout, "same input, same bytes");
    let dir = common::tempdir();
    let config = dir.join("config.json");
    std::fs::write(&config, &out.stdout).unwrap();
    let config = config.display().to_string();
    let check = blobsteer(&["check", &config], b"");
    assert!(String::from_utf8(check.stdout).unwrap().ends_with(
        "ok: 8 backends, 10 prefixes (8 IPv4, 2 IPv6), 2 non-routable, blob mode redirect\n"
    ));
    let explained = blobsteer(
        &["explain", "--config", &config, "15.193.1.5", "15.193.0.5", "15.193.2.5", "34.88.9.9"],
        b"",
    );
    let backends: Vec<Value> = String::from_utf8(explained.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["backend"].clone())
        .collect();
    let want: Vec<Value> = vec![
        "aws-ap-northeast-1".into(),
        "aws-ap-south-1".into(),
        Value::Null,
        "gcp-europe-north1".into(),
    ];
    assert_eq!(backends, want);
}

#[test]
fn a_malformed_file_names_file_entry_and_field_and_prints_nothing() {
    let bad = fixture("bad-aws.json");
    let out = ranges(&[("aws", bad.clone())], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("blobsteer ranges: {bad}: prefixes[1].ip_prefix: \"15.236.0.0/33\" is not a CIDR prefix\n")
    );
    let typo = ranges(&[("aws", fixture("aws.json"))], &["--exclude", "aws:eu-west-33"]);
    assert_eq!(typo.status.code(), Some(1));
    assert!(String::from_utf8(typo.stderr)
        .unwrap()
        .contains("--exclude aws:eu-west-33: no such region"));
}

#[test]
fn previous_refuses_a_refresh_that_drops_too_many_prefixes() {
    let all = [
        ("aws", fixture("aws.json")),
        ("gcp", fixture("gcp.json")),
        ("azure", fixture("azure.json")),
    ];
    let full = ranges(&all, &[]);
    assert!(full.status.success());
    let dir = common::tempdir();
    let previous = dir.join("previous.json").display().to_string();
    std::fs::write(&previous, &full.stdout).unwrap();
    // The same files again: nothing dropped, the config as without --previous.
    let same = ranges(&all, &["--previous", &previous]);
    assert!(same.status.success());
    assert_eq!(same.stdout, full.stdout);
    assert_eq!(
        String::from_utf8(same.stderr).unwrap(),
        format!("blobsteer ranges: 0 of the 12 prefixes of {previous} dropped (0.0%; at most 10% allowed)\n")
    );
    // Only AWS: GCP's and Azure's 5 prefixes are gone, more than the default 10%.
    let aws = [("aws", fixture("aws.json"))];
    let cut = ranges(&aws, &["--previous", &previous]);
    assert_eq!(cut.status.code(), Some(1));
    assert!(cut.stdout.is_empty());
    assert_eq!(
        String::from_utf8(cut.stderr).unwrap(),
        format!(
            "blobsteer ranges: the new configuration drops 5 of the 12 prefixes of {previous} \
             (41.6%), more than the 10% allowed (--max-removed-percent); nothing written\n"
        )
    );
    let accepted = ranges(&aws, &["--previous", &previous, "--max-removed-percent", "42"]);
    assert!(accepted.status.success(), "{}", String::from_utf8_lossy(&accepted.stderr));
    assert!(!accepted.stdout.is_empty());
    // A limit is a whole percentage, and only means something with --previous.
    for bad in [
        vec!["--previous", &previous, "--max-removed-percent", "101"],
        vec!["--max-removed-percent", "5"],
    ] {
        assert_eq!(ranges(&aws, &bad).status.code(), Some(2), "{bad:?}");
    }
    let missing = ranges(&aws, &["--previous", "/nonexistent/previous.json"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());
}

/// Every address at the edges of every published prefix is routed to the region that published
/// the longest prefix containing it.
#[test]
fn real_provider_files_route_every_edge_address_to_its_published_region() {
    let data = root().join("../shared/data");
    if !data.is_dir() {
        eprintln!(
            "SKIPPED: {} is absent; the real provider files are needed for this test",
            data.display()
        );
        return;
    }
    let files = [
        ("aws", data.join("aws-ip-ranges.json").display().to_string()),
        ("gcp", data.join("gcp-cloud.json").display().to_string()),
        ("azure", data.join("azure-service-tags.json").display().to_string()),
    ];
    let out = ranges(&files, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = common::tempdir();
    let config = dir.join("full.json");
    std::fs::write(&config, &out.stdout).unwrap();

    let published = published_prefixes(&files);
    assert!(published.len() > 26_000, "{} prefixes", published.len());
    // Longer prefixes containing a prefix's first (last) address share that first (last) address.
    let mut longest_at: HashMap<IpAddr, (u8, &str)> = HashMap::new();
    for (prefix, backend) in &published {
        for edge in [prefix.network(), prefix.broadcast()] {
            let best = longest_at.entry(edge).or_insert((0, backend));
            if prefix.prefix_len() >= best.0 {
                *best = (prefix.prefix_len(), backend);
            }
        }
    }
    let mut addresses: Vec<IpAddr> = longest_at.keys().copied().collect();
    addresses.sort();
    let stdin: String = addresses.iter().map(|a| format!("{a}\n")).collect();
    let config = config.display().to_string();
    let explained = blobsteer(&["explain", "--config", &config, "-"], stdin.as_bytes());
    assert!(explained.status.success());
    let lines: Vec<Value> = String::from_utf8(explained.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), addresses.len());
    for (address, line) in addresses.iter().zip(&lines) {
        let want = longest_at[address].1;
        let got = if line["non_routable"] == true {
            "non-routable"
        } else {
            line["backend"].as_str().unwrap_or("none")
        };
        assert_eq!(got, want, "{address}: {line}");
    }
    // The reference's bug: a regional prefix inside an AWS GLOBAL supernet must win.
    let probe = blobsteer(&["explain", "--config", &config, "15.193.1.5"], b"");
    let line: Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(
        (line["backend"].as_str(), line["prefix"].as_str()),
        (Some("aws-ap-northeast-1"), Some("15.193.1.0/24"))
    );
    eprintln!(
        "checked {} edge addresses of {} published prefixes",
        addresses.len(),
        published.len()
    );
}

/// (prefix, `<cloud>-<region>` or "non-routable"), read straight from the files.
fn published_prefixes(files: &[(&str, String)]) -> Vec<(IpNet, String)> {
    let mut out = Vec::new();
    let mut add = |cloud: &str, prefix: &Value, region: &Value| {
        let region = region.as_str().unwrap().to_lowercase();
        let backend = if region == "global" {
            "non-routable".to_string()
        } else {
            format!("{cloud}-{region}")
        };
        out.push((prefix.as_str().unwrap().parse().unwrap(), backend));
    };
    for (cloud, path) in files {
        let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        match *cloud {
            "aws" => {
                for p in doc["prefixes"].as_array().unwrap() {
                    add(cloud, &p["ip_prefix"], &p["region"]);
                }
                for p in doc["ipv6_prefixes"].as_array().unwrap() {
                    add(cloud, &p["ipv6_prefix"], &p["region"]);
                }
            }
            "gcp" => {
                for p in doc["prefixes"].as_array().unwrap() {
                    let prefix =
                        if p["ipv4Prefix"].is_null() { &p["ipv6Prefix"] } else { &p["ipv4Prefix"] };
                    add(cloud, prefix, &p["scope"]);
                }
            }
            _ => {
                for v in doc["values"].as_array().unwrap() {
                    for p in v["properties"]["addressPrefixes"].as_array().unwrap() {
                        add(cloud, p, &v["properties"]["region"]);
                    }
                }
            }
        }
    }
    out
}

/// `--default-backend` and `--fallbacks`: the chains a refresh keeps, checked like the rest.
#[test]
fn a_default_backend_and_fallback_rules_go_into_the_config() {
    let files = [("aws", fixture("aws.json"))];
    let dir = common::tempdir();
    let rules = dir.join("rules.json");
    let write = |text: &str| std::fs::write(&rules, text).unwrap();
    let rules_arg = rules.display().to_string();
    let cdn = "--default-backend=cdn=https://cdn.example/containers/images/{digest}";
    write(
        r#"{"_comment": "ignored", "aws:eu-west-3": ["aws:us-east-1", "default"], "aws:ap-south-1": ["aws:ap-northeast-1"]}"#,
    );
    let out = ranges(&files, &[cdn, "--fallbacks", &rules_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    let backend = |name: &str| {
        config["backends"].as_array().unwrap().iter().find(|b| b["name"] == name).unwrap().clone()
    };
    assert_eq!(backend("aws-eu-west-3")["fallback"], serde_json::json!(["aws-us-east-1", "cdn"]));
    assert_eq!(backend("aws-ap-south-1")["fallback"], serde_json::json!(["aws-ap-northeast-1"]));
    assert_eq!(
        (backend("cdn")["cidrs"].clone(), config["default_backend"].clone()),
        (serde_json::json!([]), "cdn".into())
    );

    // Typos do not pass: a region with no backend, an unknown target, "default" without one.
    write(r#"{"aws:eu-west-9": ["aws:us-east-1"], "aws:eu-west-3": ["aws:us-west-7", "default"]}"#);
    let err = String::from_utf8(ranges(&files, &["--fallbacks", &rules_arg]).stderr).unwrap();
    for want in [
        "--fallbacks aws:eu-west-3: aws-us-west-7 is not a backend made",
        "--fallbacks aws:eu-west-3: \"default\" needs --default-backend",
        "--fallbacks aws:eu-west-9: no backend of its own (a typo, or aliased or kept out)",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// The shipped example (AWS, modelled on registry.k8s.io's neighbours) applies to the real AWS
/// file: every chain is made and none goes round.
#[test]
fn the_shipped_aws_fallback_example_applies_to_the_real_aws_file() {
    let aws = root().join("../shared/data/aws-ip-ranges.json");
    if !aws.is_file() {
        eprintln!(
            "SKIPPED: {} is absent; the real AWS file is needed for this test",
            aws.display()
        );
        return;
    }
    let example = testdata("ranges/aws-fallbacks.example.json");
    let cdn = "--default-backend=cdn=https://cdn.example/containers/images/{digest}";
    let out = ranges(&[("aws", aws.display().to_string())], &[cdn, "--fallbacks", &example]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    let chains = config["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b.get("fallback").is_some())
        .count();
    assert_eq!(chains, 18, "every rule of the example became a chain");
}

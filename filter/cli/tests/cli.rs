//! The `blobsteer` command, run as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use serde_json::Value;
use std::process::Output;

const BLOB: &str =
    "/v2/demo/hello/blobs/sha256:5d41402abc4b2a76b9719d911017c592b1b5f2c3d4e5f60718293a4b5c6d7e8f";

fn testdata(name: &str) -> String {
    common::testdata(&format!("config/{name}"))
}

fn blobsteer(args: &[&str], stdin: Option<&str>) -> Output {
    common::blobsteer(args, stdin.unwrap_or_default().as_bytes())
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn check_summarises_a_good_config() {
    let out = blobsteer(&["check", &testdata("three-backends.json")], None);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.ends_with(
            "ok: 3 backends, 6 prefixes (4 IPv4, 2 IPv6), 1 non-routable, blob mode redirect\n"
        ),
        "{stdout}"
    );
}

#[test]
fn check_lists_every_error_with_its_field() {
    let out = blobsteer(&["check", &testdata("bad-values.json")], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for want in [
        r#"backends[0].blob_url: "https://eu.example/containers/images/{encoded}" must contain {digest}"#,
        r#"backends[0].cidrs[1]: "15.236.0.0/33" is not a CIDR prefix"#,
        r#"backends[1].blob_url: "gopher://us.example/{digest}" must start with http:// or https://"#,
        "backends[1].cidrs[0]: 15.236.0.0/15 is already listed at backends[0].cidrs[0] (eu)",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    let typo = blobsteer(&["check", &testdata("bad-typo.json")], None);
    assert_eq!(typo.status.code(), Some(1));
    assert!(String::from_utf8(typo.stderr).unwrap().contains("unknown field `blob_urls`"));
}

#[test]
fn explain_prints_one_object_per_address() {
    let config = testdata("three-backends.json");
    let out = blobsteer(
        &[
            "explain",
            "--config",
            &config,
            "--path",
            BLOB,
            "15.236.10.20",
            "15.193.1.5",
            "15.193.2.5",
            "garbage",
            "[2a05:d012::5]:443",
        ],
        None,
    );
    assert!(out.status.success());
    let got = lines(&out);
    assert_eq!(got.len(), 5);
    assert_eq!(got[0]["client_ip"], "15.236.10.20");
    assert_eq!(got[0]["backend"], "aws-eu-west-3");
    assert_eq!(got[0]["prefix"], "15.236.0.0/15");
    assert_eq!(got[0]["action"], "redirected");
    assert_eq!(got[0]["status"], 307);
    assert_eq!(
        got[0]["location"],
        "https://prod-registry-k8s-io-eu-west-3.s3.dualstack.eu-west-3.amazonaws.com/containers/images/sha256:5d41402abc4b2a76b9719d911017c592b1b5f2c3d4e5f60718293a4b5c6d7e8f"
    );
    assert_eq!(got[1]["backend"], "aws-ap-northeast-1", "longest prefix wins inside GLOBAL");
    assert_eq!(got[1]["prefix"], "15.193.1.0/24");
    assert_eq!(got[2]["backend"], Value::Null);
    assert_eq!(got[2]["non_routable"], true);
    assert_eq!(got[2]["action"], "passed_non_routable");
    assert_eq!(got[3]["client_ip"], Value::Null);
    assert_eq!(got[3]["action"], "passed_no_client_ip");
    assert_eq!(got[3]["location"], Value::Null);
    assert_eq!(got[4]["client_ip"], "2a05:d012::5");
    assert_eq!(got[4]["backend"], "aws-eu-west-3");
}

#[test]
fn explain_reads_stdin_and_honours_method_path_and_source() {
    let config = testdata("three-backends.json");
    let out = blobsteer(
        &["explain", "--config", &config, "--method", "DELETE", "-"],
        Some("44.192.1.2\n\n1.2.3.4, 44.192.9.9\n"),
    );
    let got = lines(&out);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|g| g["action"] == "passed_method"));
    assert_eq!(got[0]["backend"], "aws-us-east-1");
    assert_eq!(got[1]["client_ip"], Value::Null);
    assert_eq!(got[2]["client_ip"], "44.192.9.9");

    // No x-forwarded-for at all: the config falls back to the connection's address.
    let out = blobsteer(&["explain", "--config", &config, "--source", "15.236.0.9:5555"], None);
    let got = lines(&out);
    assert_eq!(got[0]["xff"], Value::Null);
    assert_eq!(got[0]["client_ip_source"], "source.address");
    assert_eq!(got[0]["backend"], "aws-eu-west-3");

    let manifest = blobsteer(
        &["explain", "--config", &config, "--path", "/v2/demo/manifests/1.0", "15.236.0.9"],
        None,
    );
    let got = lines(&manifest);
    assert_eq!(got[0]["action"], "passed_not_blob");
    assert_eq!(got[0]["backend"], "aws-eu-west-3");
}

#[test]
fn explain_says_when_the_mirror_is_asked_and_what_follows_if_it_lacks_the_blob() {
    let three = std::fs::read_to_string(testdata("three-backends.json")).unwrap();
    let verify = three.replace(r#""mode": "redirect""#, r#""mode": "verify_upstream""#);
    let config = common::tempdir().join("verify.json");
    std::fs::write(&config, verify).unwrap();
    let config = config.display().to_string();
    let mut asked = vec![];
    for (config, method) in
        [(testdata("three-backends.json"), "GET"), (config.clone(), "GET"), (config, "HEAD")]
    {
        let out = blobsteer(
            &["explain", "--config", &config, "--method", method, "--path", BLOB, "15.236.0.9"],
            None,
        );
        let got = lines(&out).remove(0);
        asked.push((
            got["existence_check"]["asked"].clone(),
            got["existence_check"]["if_absent"].clone(),
        ));
    }
    assert_eq!(
        asked,
        [
            ("before_upstream".into(), "passed_mirror_missing: upstream untouched".into()),
            (
                "after_upstream_yes".into(),
                format!("passed_mirror_missing: a 307 back to {BLOB}?blobsteer=registry").into()
            ),
            ("after_upstream_yes".into(), "passed_mirror_missing: the upstream's answer".into()),
        ]
    );
}

#[test]
fn explain_shows_the_default_backend_and_the_chain_after_the_chosen_one() {
    let config = common::tempdir().join("chains.json");
    std::fs::write(
        &config,
        r#"{"backends": [
            {"name": "aws-eu-west-3", "blob_url": "https://eu/{digest}", "cidrs": ["15.236.0.0/15"], "cluster": "mirror_eu", "fallback": ["aws-eu-central-1", "cdn"]},
            {"name": "aws-eu-central-1", "blob_url": "https://fra/{digest}", "cidrs": ["3.64.0.0/12"]},
            {"name": "cdn", "blob_url": "https://cdn/{digest}", "cidrs": []}],
          "default_backend": "cdn"}"#,
    )
    .unwrap();
    let config = config.display().to_string();
    let got =
        lines(&blobsteer(&["explain", "--config", &config, "15.236.0.9", "198.51.100.7"], None));
    assert_eq!(
        (&got[0]["backend"], &got[0]["fallback"]),
        (&"aws-eu-west-3".into(), &serde_json::json!(["aws-eu-central-1", "cdn"]))
    );
    assert_eq!((&got[1]["backend"], &got[1]["fallback"]), (&"cdn".into(), &serde_json::json!([])));
    assert_eq!((&got[1]["action"], &got[1]["prefix"]), (&"redirected".into(), &Value::Null));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(blobsteer(&[], None).status.code(), Some(2));
    assert_eq!(blobsteer(&["explain", "--config"], None).status.code(), Some(2));
    assert_eq!(blobsteer(&["explain", "--bogus", "x"], None).status.code(), Some(2));
    assert_eq!(blobsteer(&["check"], None).status.code(), Some(2));
    // An unknown option is named as such, even with no value after it.
    let out = blobsteer(&["ranges", "--bogus"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .starts_with("blobsteer: unknown option --bogus\n"));
}

#[test]
fn help_on_every_command_prints_its_usage_and_exits_0() {
    for command in ["check", "explain", "ranges", "rewrite"] {
        for flag in ["--help", "-h"] {
            // Alone, and after other arguments (even an incomplete command line).
            for args in [vec![command, flag], vec![command, "--config", "x.json", flag]] {
                let out = blobsteer(&args, None);
                let stdout = String::from_utf8(out.stdout).unwrap();
                assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}");
                assert!(
                    out.stderr.is_empty(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    stdout.starts_with(&format!("usage:\n  blobsteer {command} ")),
                    "{args:?}: {stdout}"
                );
            }
        }
    }
    let out = blobsteer(&["--help"], None);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    for command in ["check", "explain", "ranges", "rewrite"] {
        assert!(stdout.contains(&format!("\n  blobsteer {command} ")), "{stdout}");
    }
    // After `--`, it is an argument like any other: an x-forwarded-for value here.
    let out =
        blobsteer(&["explain", "--config", &testdata("three-backends.json"), "--", "-h"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(lines(&out)[0]["xff"], "-h");
}

#[test]
fn explain_says_whether_a_manifest_is_rewritten_and_why() {
    let config = testdata("three-backends.json");
    let tag = "/v2/demo/hello/manifests/1.0";
    let off =
        lines(&blobsteer(&["explain", "--config", &config, "--path", tag, "15.236.0.9"], None));
    assert_eq!(off[0]["manifest"]["rewrite"], false);
    assert_eq!(off[0]["manifest"]["why"], "manifests.rewrite is off");
    let blob = lines(&blobsteer(&["explain", "--config", &config, "15.236.0.9"], None));
    assert_eq!(blob[0]["manifest"], Value::Null, "a blob request has no manifest outlook");

    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["manifests"] = serde_json::json!({"rewrite": true});
    let on = std::env::temp_dir().join(format!("blobsteer-explain-{}.json", std::process::id()));
    std::fs::write(&on, json.to_string()).unwrap();
    let on = on.display().to_string();
    let containerd = ["--user-agent", "containerd/1.6.20"];
    let args = [&["explain", "--config", &on, "--method", "HEAD", "--path", tag][..], &containerd]
        .concat();
    let got = lines(&blobsteer(
        &[&args[..], &["15.236.0.9", "44.192.1.2", "198.51.100.7"]].concat(),
        None,
    ));
    assert_eq!(got[0]["action"], "rewrite_manifest");
    assert_eq!(got[0]["manifest"]["rewrite"], true);
    assert!(got[0]["manifest"]["upstream_method"].as_str().unwrap().starts_with("GET"));
    // aws-eu-west-3 has a cluster (existence checks); aws-us-east-1 has none.
    assert!(got[0]["manifest"]["advertises"].as_str().unwrap().starts_with("only blobs"));
    assert_eq!(got[1]["manifest"]["advertises"], "every blob");
    assert_eq!(got[2]["manifest"]["rewrite"], false);
    assert_eq!(got[2]["manifest"]["why"], "the client has no backend (passed_no_backend)");
    assert_eq!(got[0]["reason"], Value::Null);
    // Every other agent (or none) gets the registry's manifest, named as the reason.
    for agent in [&["--user-agent", "skopeo/1.9.3"][..], &["--user-agent", "x containerd/1"], &[]] {
        let args =
            [&["explain", "--config", &on, "--path", tag][..], agent, &["15.236.0.9"]].concat();
        let got = lines(&blobsteer(&args, None));
        assert_eq!(
            (&got[0]["action"], &got[0]["reason"]),
            (&"manifest_untouched".into(), &"user_agent".into()),
            "{agent:?}"
        );
        assert_eq!(got[0]["backend"], "aws-eu-west-3", "the client is still shown");
        assert!(got[0]["manifest"]["why"]
            .as_str()
            .unwrap()
            .starts_with("the User-Agent is not one of"));
    }
    // A digest is looked up whoever asks.
    let digest = "/v2/demo/hello/manifests/sha256:0000000000000000000000000000000000000000000000000000000000000000";
    for agent in [&["--user-agent", "curl/7.88.1"][..], &containerd] {
        let got = lines(&blobsteer(
            &[&["explain", "--config", &on, "--path", digest][..], agent].concat(),
            None,
        ));
        assert_eq!(got[0]["action"], "lookup_rewritten_digest");
        assert!(got[0]["manifest"]["why"].as_str().unwrap().starts_with("a request by digest"));
    }
    std::fs::remove_file(&on).unwrap();
}

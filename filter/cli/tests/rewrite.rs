//! `blobsteer rewrite`: the bytes the filter sends for a tag request, and why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{blobsteer, testdata};
use serde_json::Value;
use std::process::Output;

fn rewrite(extra: &[&str], file: &str, stdin: &[u8]) -> Output {
    let config = testdata("config/three-backends.json");
    let mut args = vec!["rewrite", "--config", &config, "--backend", "aws-us-east-1"];
    args.extend(extra);
    args.push(file);
    blobsteer(&args, stdin)
}

fn status(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    let out = rewrite(&["--content-type", "text/plain"], "-", bytes);
    status(&out).split(' ').next().unwrap().to_string()
}

#[test]
fn an_image_manifest_is_rewritten_and_the_digest_is_of_the_bytes_sent() {
    let out = rewrite(&[], &testdata("manifests/oci-image.json"), b"");
    assert!(out.status.success());
    let line = status(&out);
    assert!(line.ends_with(" rewritten\n"), "{line}");
    assert_eq!(line.split(' ').next().unwrap(), sha256(&out.stdout));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["layers"][1]["urls"][0]
        .as_str()
        .unwrap()
        .starts_with("https://prod-registry-k8s-io-us-east-1."));
    // The same bytes from stdin, every time.
    let again = rewrite(&[], "-", &std::fs::read(testdata("manifests/oci-image.json")).unwrap());
    assert_eq!(again.stdout, out.stdout);
}

#[test]
fn untouched_manifests_come_out_byte_for_byte_with_the_reason() {
    for (file, reason) in [
        ("helm-artifact.json", "artifact"),
        ("with-subject.json", "subject"),
        ("schema1.json", "schema1"),
    ] {
        let path = testdata(&format!("manifests/{file}"));
        let out = rewrite(&[], &path, b"");
        assert!(out.status.success());
        let original = std::fs::read(&path).unwrap();
        assert_eq!(out.stdout, original);
        assert_eq!(status(&out), format!("{} unchanged: {reason}\n", sha256(&original)));
    }
    let mismatch = rewrite(
        &["--content-type", "application/vnd.docker.distribution.manifest.v2+json"],
        &testdata("manifests/oci-image.json"),
        b"",
    );
    assert!(status(&mismatch).ends_with("unchanged: media_type_mismatch\n"));
}

#[test]
fn an_index_points_at_its_rewritten_children() {
    let layout = testdata("manifests/layout");
    let out =
        rewrite(&["--children", &format!("{layout}/blobs")], &format!("{layout}/index.json"), b"");
    assert!(status(&out).ends_with(" rewritten\n"), "{}", status(&out));
    let index: Value = serde_json::from_slice(&out.stdout).unwrap();
    let original: Value =
        serde_json::from_slice(&std::fs::read(format!("{layout}/index.json")).unwrap()).unwrap();
    for (new, old) in
        index["manifests"].as_array().unwrap().iter().zip(original["manifests"].as_array().unwrap())
    {
        let (algorithm, hex) = old["digest"].as_str().unwrap().split_once(':').unwrap();
        let child = rewrite(&[], &format!("{layout}/blobs/{algorithm}/{hex}"), b"");
        assert_eq!(new["digest"].as_str().unwrap(), status(&child).split(' ').next().unwrap());
        assert_eq!(new["size"].as_u64().unwrap() as usize, child.stdout.len());
        assert_eq!(new["platform"], old["platform"]);
        assert!(new.get("urls").is_none());
    }
    let without = rewrite(&[], &format!("{layout}/index.json"), b"");
    assert!(status(&without).ends_with("unchanged: child_unavailable\n"));
}

#[test]
fn bad_config_or_unknown_backend_exit_1() {
    let out = blobsteer(
        &["rewrite", "--config", &testdata("config/bad-typo.json"), "--backend", "eu", "-"],
        b"{}",
    );
    assert_eq!(out.status.code(), Some(1));
    let out = blobsteer(
        &["rewrite", "--config", &testdata("config/three-backends.json"), "--backend", "mars", "-"],
        b"{}",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(status(&out).contains("no backend \"mars\""));
}

#[test]
fn a_children_directory_that_is_not_there_is_an_error_not_an_unchanged_index() {
    let layout = testdata("manifests/layout");
    let index = format!("{layout}/index.json");
    let missing = format!("{layout}/no-such-blobs");
    let out = rewrite(&["--children", &missing], &index, b"");
    assert_eq!(out.status.code(), Some(1), "{}", status(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(
        status(&out),
        format!(
            "blobsteer rewrite: --children {missing}: No such file or directory (os error 2)\n"
        )
    );
    // A file is not a directory either.
    let out = rewrite(&["--children", &index], &index, b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(status(&out), format!("blobsteer rewrite: --children {index}: not a directory\n"));
}

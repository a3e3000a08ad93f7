//! Manifest rewriting throughput: an OCI image manifest, as the upstream serves it for a tag,
//! rewritten for one backend (every blob descriptor gains the backend's URL in `urls`) through
//! the entry point the wasm filter uses (`read`, then `rewrite_for`; here in one call,
//! `rewrite_for_backend`). The filter buffers and rewrites every manifest of a tag request from
//! a matched client, so its cost per KiB bounds what manifest rewriting adds to a pull.
//!
//! Manifests of 1, 4, 16 and 64 layers are synthesized in the shape of
//! `testdata/manifests/oci-image.json` (distinct valid sha256 digests); divan reports bytes/s of
//! input. Needs no `../shared/data`. `cargo bench -p blobsteer-core --bench manifest`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use blobsteer_core::manifest::{
    self, rewrite_for_backend, sha256_digest, DEFAULT_MAX_BYTES, OCI_MANIFEST,
};
use blobsteer_core::url_template::UrlTemplate;
use blobsteer_core::Backend;
use divan::counter::{BytesCount, BytesFormat};
use std::fmt::Write;
use std::hint::black_box;

/// Layer counts of the synthesized manifests: from a one-layer base image to a large one.
const LAYERS: [usize; 4] = [1, 4, 16, 64];

const REPOSITORY: &str = "demo/hello";

fn main() {
    // KiB/s and MiB/s, since the budget is per KiB of manifest; `--bytes-format` still overrides.
    divan::Divan::default().bytes_format(BytesFormat::Binary).config_with_args().main();
}

/// A backend as a `blobsteer ranges` configuration has it.
fn backend() -> Backend {
    Backend {
        name: "aws-eu-west-3".to_string(),
        blob_url: UrlTemplate::parse(
            "https://prod-registry-k8s-io-eu-west-3.s3.dualstack.eu-west-3.amazonaws.com/containers/images/{digest}",
        )
        .unwrap(),
        cluster: None,
        fallback: Vec::new(),
    }
}

/// An OCI image manifest with `layers` layers, pretty-printed like `oci-image.json` (what
/// registries commonly store): a config, layers with distinct digests and sizes, every fourth
/// with an annotation, and a top-level annotation.
fn image_manifest(layers: usize) -> Vec<u8> {
    let digest = |what: &str, i: usize| sha256_digest(format!("{what}-{layers}-{i}").as_bytes());
    let mut text = String::new();
    let _ = write!(
        text,
        "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{OCI_MANIFEST}\",\n   \"config\": {{\n      \
         \"mediaType\": \"application/vnd.oci.image.config.v1+json\",\n      \
         \"digest\": \"{}\",\n      \"size\": {}\n   }},\n   \"layers\": [",
        digest("config", 0),
        1_024 + 37 * layers,
    );
    for i in 0..layers {
        let separator = if i == 0 { "" } else { "," };
        let _ = write!(
            text,
            "{separator}\n      {{\n         \
             \"mediaType\": \"application/vnd.oci.image.layer.v1.tar+gzip\",\n         \
             \"digest\": \"{}\",\n         \"size\": {}",
            digest("layer", i),
            (i + 1) * 1_048_583 % 98_765_431,
        );
        if i % 4 == 3 {
            let _ = write!(
                text,
                ",\n         \"annotations\": {{\n            \
                 \"org.opencontainers.image.title\": \"layer-{i}.tar.gz\"\n         }}"
            );
        }
        text.push_str("\n      }");
    }
    text.push_str(
        "\n   ],\n   \"annotations\": {\n      \
         \"org.opencontainers.image.created\": \"2026-01-01T00:00:00Z\"\n   }\n}\n",
    );
    text.into_bytes()
}

/// The manifest of `layers` layers, checked (before timing) to be valid JSON that rewrites,
/// with a URL on the config and on every layer.
fn checked_manifest(layers: usize, backend: &Backend) -> Vec<u8> {
    let bytes = image_manifest(layers);
    let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(parsed["layers"].as_array().unwrap().len(), layers);
    let out = rewrite(backend, &bytes).unwrap();
    let text = String::from_utf8(out.bytes).unwrap();
    assert_eq!(
        text.matches("\"urls\":[\"https://prod-registry-k8s-io-eu-west-3").count(),
        layers + 1
    );
    let rewritten: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(rewritten["config"]["urls"].is_array());
    bytes
}

/// What the filter does with a tag's image manifest for a client of `backend` (no existence
/// checks: every blob may be advertised).
fn rewrite(backend: &Backend, bytes: &[u8]) -> Result<manifest::Rewritten, manifest::Untouched> {
    rewrite_for_backend(
        &backend.blob_url,
        REPOSITORY,
        bytes,
        Some(OCI_MANIFEST),
        None,
        DEFAULT_MAX_BYTES,
        |_| None,
        |_| true,
    )
}

/// A tag's image manifest rewritten for one backend: parse, validate, splice in the URLs and
/// hash the result (the new `Docker-Content-Digest`). Throughput is of the input bytes.
#[divan::bench(args = LAYERS)]
fn rewrite_image(bencher: divan::Bencher, layers: usize) {
    let backend = backend();
    let bytes = checked_manifest(layers, &backend);
    bencher
        .counter(BytesCount::new(bytes.len()))
        .bench_local(|| rewrite(black_box(&backend), black_box(&bytes)));
}

/// Only reading the same manifests (JSON parse and the checks before any rewrite), to show how
/// much of [`rewrite_image`] is parsing.
#[divan::bench(args = LAYERS)]
fn read_image(bencher: divan::Bencher, layers: usize) {
    let backend = backend();
    let bytes = checked_manifest(layers, &backend);
    bencher.counter(BytesCount::new(bytes.len())).bench_local(|| {
        manifest::read(black_box(&bytes), Some(OCI_MANIFEST), None, DEFAULT_MAX_BYTES)
            .map(|m| m.kind)
    });
}

/// Shapes of a manifest of 4 MiB (Distribution's limit, and the clients'): an ordinary one,
/// made of many layers; one object of about 380,000 keys, the shape that made a repeated-key
/// search quadratic; and an array of 2 million zeros, the most values 4 MiB can hold. Reading
/// must cost about the same per KiB for all three.
const SHAPES: [&str; 3] = ["ordinary", "one_object", "tiny_values"];

/// A manifest of about 4 MiB in `shape`.
fn four_mib(shape: &str) -> Vec<u8> {
    const SIZE: usize = 4 << 20;
    let bytes = match shape {
        "ordinary" => image_manifest(SIZE / 300),
        "one_object" => {
            let mut text = format!("{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\"");
            let mut i = 0;
            while text.len() < SIZE - 32 {
                let _ = write!(text, ",\"k{i}\":0");
                i += 1;
            }
            text.push('}');
            text.into_bytes()
        }
        _ => format!("[{}0]", "0,".repeat(SIZE / 2 - 2)).into_bytes(),
    };
    assert!(bytes.len() <= SIZE, "{shape}: {} bytes", bytes.len());
    bytes
}

/// Reading a 4 MiB manifest of each shape (the two hostile ones are refused, as holding more
/// values than a manifest can: what is timed is the reading up to that point).
#[divan::bench(args = SHAPES, sample_count = 20)]
fn read_4_mib(bencher: divan::Bencher, shape: &str) {
    let bytes = four_mib(shape);
    bencher.counter(BytesCount::new(bytes.len())).bench_local(|| {
        manifest::read(black_box(&bytes), Some(OCI_MANIFEST), None, DEFAULT_MAX_BYTES)
            .map(|m| m.kind)
    });
}

//! `RegistryPath::parse` on arbitrary UTF-8 `:path` values.
//!
//! Properties:
//! - never panics;
//! - a `Blob`'s repository passes `is_repository`, holds no `..`, `%`, whitespace or control
//!   character, and is at most 255 bytes; its digest is `sha256:` + 64 lowercase hex or
//!   `sha512:` + 128 (checked by hand), consistent with `algorithm()` and `encoded()`;
//! - `/v2/{repository}/blobs/{digest}` rebuilt from a `Blob` parses to the same `Blob`
//!   (likewise for manifests);
//! - the parse agrees exactly with an independent statement of the OCI grammar as a regular
//!   expression: a path (before `?`) is a `Blob` or a `Manifest` if and only if it matches.

#![no_main]

use blobsteer_core::registry_path::{
    is_repository, is_tag, Reference, RegistryPath, MAX_REPOSITORY_LEN,
};
use blobsteer_fuzz::is_supported_digest;
use libfuzzer_sys::fuzz_target;
use regex::Regex;
use std::sync::LazyLock;

/// Distribution's repository grammar.
const REPOSITORY: &str =
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*";
const DIGEST: &str = r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}";
const TAG: &str = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";

static BLOB: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"\A/v2/({REPOSITORY})/blobs/({DIGEST})\z")).unwrap());
static MANIFEST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"\A/v2/({REPOSITORY})/manifests/({DIGEST}|{TAG})\z")).unwrap()
});

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let parsed = RegistryPath::parse(path);
    let before_query = path.split('?').next().unwrap_or_default();
    let grammar = |regex: &Regex| {
        regex
            .captures(before_query)
            .map(|c| (c.get(1).map_or("", |m| m.as_str()), c.get(2).map_or("", |m| m.as_str())))
            .filter(|(repository, _)| repository.len() <= MAX_REPOSITORY_LEN)
    };

    match parsed {
        RegistryPath::Blob { repository, digest } => {
            check_repository(repository);
            let text = digest.as_str();
            assert!(is_supported_digest(text), "blob digest {text:?}");
            assert_eq!(text, format!("{}:{}", digest.algorithm().as_str(), digest.encoded()));
            assert_eq!(digest.encoded().len(), digest.algorithm().encoded_len());
            assert_eq!(digest.to_string(), text);
            assert_eq!(
                grammar(&BLOB),
                Some((repository, text)),
                "{path:?} is a blob only to the core"
            );
            let rebuilt = format!("/v2/{repository}/blobs/{digest}");
            assert_eq!(RegistryPath::parse(&rebuilt), parsed, "rebuilt as {rebuilt:?}");
        }
        RegistryPath::Manifest { repository, reference } => {
            check_repository(repository);
            let reference_text = match reference {
                Reference::Tag(tag) => {
                    assert!(is_tag(tag), "tag {tag:?}");
                    assert!(!is_supported_digest(tag));
                    tag
                }
                Reference::Digest(digest) => {
                    assert!(is_supported_digest(digest.as_str()), "manifest digest {digest:?}");
                    digest.as_str()
                }
            };
            assert_eq!(
                grammar(&MANIFEST),
                Some((repository, reference_text)),
                "{path:?} is a manifest only to the core"
            );
            let rebuilt = format!("/v2/{repository}/manifests/{reference_text}");
            assert_eq!(RegistryPath::parse(&rebuilt), parsed, "rebuilt as {rebuilt:?}");
        }
        RegistryPath::Other => {
            assert_eq!(
                grammar(&BLOB),
                None,
                "{path:?} is a blob in the grammar, Other to the core"
            );
            assert_eq!(
                grammar(&MANIFEST),
                None,
                "{path:?} is a manifest in the grammar, Other to the core"
            );
        }
    }
});

fn check_repository(repository: &str) {
    assert!(is_repository(repository), "repository {repository:?}");
    assert!(!repository.is_empty() && repository.len() <= MAX_REPOSITORY_LEN);
    assert!(!repository.contains(".."), "repository with '..': {repository:?}");
    assert!(!repository.contains('%'), "repository with '%': {repository:?}");
    assert!(
        !repository.chars().any(|c| c.is_whitespace() || c.is_control()),
        "repository with whitespace or a control character: {repository:?}"
    );
    assert!(
        !repository.starts_with('/') && !repository.ends_with('/') && !repository.contains("//")
    );
}

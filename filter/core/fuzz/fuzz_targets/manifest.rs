//! Manifest reading and rewriting on arbitrary upstream answers: never a panic; a rewrite is
//! the input plus the inserted `urls` members only, hashes to its digest and is valid JSON; an
//! index rewrite keeps its entries and gets no `urls`.
#![no_main]

use blobsteer_core::digest::Digest;
use blobsteer_core::manifest::{self, sha256_digest, Kind};
use libfuzzer_sys::fuzz_target;

/// A host no input contains by chance, so every occurrence in the output is an insertion.
const MARKER: &str = "https://q7x9-blobsteer-fuzz-marker.invalid/b/";

const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some(manifest::OCI_MANIFEST),
    Some(manifest::OCI_INDEX),
    Some(manifest::DOCKER_MANIFEST),
    Some(manifest::DOCKER_LIST),
    Some("application/json; charset=utf-8"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let Ok(parsed) = manifest::read(body, content_type, None, 1 << 20) else { return };
    let url = |digest: Digest<'_>| Some(format!("{MARKER}{digest}"));
    match parsed.kind {
        Kind::Image => {
            let Ok(out) = parsed.rewrite_image(url) else { return };
            assert_eq!(out.digest, sha256_digest(&out.bytes));
            let text = std::str::from_utf8(&out.bytes).expect("a rewrite of UTF-8 JSON is UTF-8");
            // As valid for a strict parser as the input was (serde refuses numbers beyond f64,
            // which the JSON grammar allows: such an input stays such an output).
            if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
                assert!(serde_json::from_str::<serde_json::Value>(text).is_ok(), "rewrite is not JSON");
            }
            // Removing every inserted member gives back the input, byte for byte.
            let mut restored = String::with_capacity(text.len());
            let mut rest = text;
            while let Some(at) = rest.find(",\"urls\":[\"https://q7x9-blobsteer-fuzz-marker.invalid/b/") {
                restored.push_str(&rest[..at]);
                let after = &rest[at..];
                let end = after.find("\"]").expect("inserted member is closed") + 2;
                rest = &after[end..];
            }
            restored.push_str(rest);
            assert_eq!(restored.as_bytes(), body, "a rewrite changed bytes it should not");
        }
        Kind::Index => {
            let Ok(children) = parsed.children() else { return };
            let count = children.len();
            let Ok(out) = parsed.rewrite_index(|old| Some((sha256_digest(old.as_bytes()), 42))) else { return };
            assert_eq!(out.digest, sha256_digest(&out.bytes));
            let doc: serde_json::Value = serde_json::from_slice(&out.bytes).expect("index rewrite is JSON");
            let entries = doc["manifests"].as_array().expect("manifests stays an array");
            assert_eq!(entries.len(), count);
            assert!(entries.iter().all(|e| e.get("urls").is_none() && e["size"] == 42));
        }
    }
});

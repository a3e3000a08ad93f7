//! Manifest rewriting on fixtures in `testdata/manifests`.

use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const OCI_IMAGE: &[u8] = include_bytes!("../../../../testdata/manifests/oci-image.json");
const DOCKER_FOREIGN: &[u8] =
    include_bytes!("../../../../testdata/manifests/docker-image-foreign-layer.json");
const OCI_INDEX_BYTES: &[u8] = include_bytes!("../../../../testdata/manifests/oci-index.json");
const WITH_SUBJECT: &[u8] = include_bytes!("../../../../testdata/manifests/with-subject.json");
const HELM: &[u8] = include_bytes!("../../../../testdata/manifests/helm-artifact.json");
const SCHEMA1: &[u8] = include_bytes!("../../../../testdata/manifests/schema1.json");
const MAX: usize = 4 << 20;

fn url(digest: Digest<'_>) -> Option<String> {
    Some(format!("https://eu.example/containers/images/{digest}"))
}

fn reason(bytes: &[u8], content_type: Option<&str>, encoding: Option<&str>) -> Untouched {
    match read(bytes, content_type, encoding, MAX) {
        Err(reason) => reason,
        Ok(manifest) => manifest.rewrite_image(url).unwrap_err(),
    }
}

#[test]
fn every_blob_descriptor_gets_the_backend_url_and_nothing_else_moves() {
    let manifest = read(OCI_IMAGE, Some(OCI_MANIFEST), None, MAX).unwrap();
    let out = manifest.rewrite_image(url).unwrap();
    assert_eq!(out.digest, sha256_digest(&out.bytes));
    let text = String::from_utf8(out.bytes.clone()).unwrap();
    // Same document for serde, plus urls on config and both layers.
    let before: serde_json::Value = serde_json::from_slice(OCI_IMAGE).unwrap();
    let mut after: serde_json::Value = serde_json::from_str(&text).unwrap();
    let strip = |descriptor: &mut serde_json::Value| {
        let digest = descriptor["digest"].as_str().unwrap().to_string();
        let urls = descriptor.as_object_mut().unwrap().remove("urls").unwrap();
        assert_eq!(
            urls,
            serde_json::json!([format!("https://eu.example/containers/images/{digest}")])
        );
    };
    strip(&mut after["config"]);
    after["layers"].as_array_mut().unwrap().iter_mut().for_each(strip);
    assert_eq!(before, after);
    // The bytes outside the insertions are the original bytes, in order.
    let stripped = text
        .split(",\"urls\":[")
        .map(|part| part.split_once("\"]").map_or(part, |(_, rest)| rest))
        .collect::<String>();
    assert_eq!(stripped.as_bytes(), OCI_IMAGE);
    // Deterministic.
    assert_eq!(read(OCI_IMAGE, None, None, MAX).unwrap().rewrite_image(url).unwrap(), out);
}

#[test]
fn descriptors_that_already_have_urls_are_left_alone() {
    let manifest = read(DOCKER_FOREIGN, Some(DOCKER_MANIFEST), None, MAX).unwrap();
    let out = manifest.rewrite_image(url).unwrap();
    let after: serde_json::Value = serde_json::from_slice(&out.bytes).unwrap();
    assert_eq!(
        after["layers"][1]["urls"],
        serde_json::json!(["https://mcr.microsoft.com/foreign/layer"])
    );
    assert!(after["layers"][0]["urls"][0].as_str().unwrap().starts_with("https://eu.example/"));
    assert!(after["config"]["urls"].is_array());
}

#[test]
fn an_index_gets_its_childrens_new_digests_and_sizes_and_no_urls() {
    let index = read(OCI_INDEX_BYTES, Some(OCI_INDEX), None, MAX).unwrap();
    assert_eq!(index.kind, Kind::Index);
    let children: Vec<String> = index.children().unwrap().iter().map(|d| d.to_string()).collect();
    assert_eq!(children.len(), 2);
    let new = |old: &str| {
        let position = children.iter().position(|c| c == old)?;
        Some((sha256_digest(format!("new-{position}").as_bytes()), 2000 + position))
    };
    let out = index.rewrite_index(new).unwrap();
    let after: serde_json::Value = serde_json::from_slice(&out.bytes).unwrap();
    for (i, entry) in after["manifests"].as_array().unwrap().iter().enumerate() {
        assert_eq!(entry["digest"], new(&children[i]).unwrap().0);
        assert_eq!(entry["size"], 2000 + i);
        assert!(entry.get("urls").is_none());
    }
    assert_eq!(after["manifests"][1]["platform"]["variant"], "v8");
    let missing = index.rewrite_index(|old| if old == children[1] { None } else { new(old) });
    assert_eq!(missing, Err(Untouched::ChildUnavailable));
}

#[test]
fn everything_that_is_not_plainly_an_image_is_left_untouched_with_its_reason() {
    let duplicate = br#"{"schemaVersion": 2, "schemaVersion": 2}"#;
    let bad_digest =
        String::from_utf8(OCI_IMAGE.to_vec()).unwrap().replacen("sha256:", "sha256:X", 1);
    let all_foreign = br#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000", "size": 1, "urls": ["https://x/"]},
        "layers": []}"#;
    // (body, Content-Type, Content-Encoding, reason)
    type Case<'a> = (&'a [u8], Option<&'a str>, Option<&'a str>, Untouched);
    let cases: [Case; 11] = [
        (
            SCHEMA1,
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            None,
            Untouched::Schema1,
        ),
        (WITH_SUBJECT, None, None, Untouched::Subject),
        (HELM, None, None, Untouched::Artifact),
        (OCI_IMAGE, Some(DOCKER_MANIFEST), None, Untouched::MediaTypeMismatch),
        (OCI_IMAGE, Some(OCI_MANIFEST), Some("gzip"), Untouched::Encoded),
        (b"{\"schemaVersion\": 2, ", None, None, Untouched::InvalidJson),
        (duplicate, Some(OCI_MANIFEST), None, Untouched::InvalidJson),
        (&[b'['; 100][..], None, None, Untouched::TooDeep),
        (bad_digest.as_bytes(), None, None, Untouched::BadDescriptor),
        (all_foreign, None, None, Untouched::NothingToRewrite),
        (
            br#"{"schemaVersion": 2, "layers": []}"#,
            Some("application/json"),
            None,
            Untouched::NotImage,
        ),
    ];
    for (bytes, content_type, encoding, want) in cases {
        assert_eq!(
            reason(bytes, content_type, encoding),
            want,
            "{}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        );
    }
    assert_eq!(read(OCI_IMAGE, None, None, OCI_IMAGE.len() - 1).unwrap_err(), Untouched::TooLarge);
    assert!(read(
        OCI_IMAGE,
        Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
        Some("identity"),
        MAX
    )
    .is_ok());
}

#[test]
fn sha256_known_answers() {
    assert_eq!(
        sha256_digest(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_digest(b"abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn mappings_round_trip_and_refuse_other_digests() {
    let m = Mapping {
        digest: sha256_digest(b"new"),
        backend: "eu".into(),
        repository: "demo/hello".into(),
        original: sha256_digest(b"old"),
    };
    let value = m.encode(1_000);
    assert_eq!(Mapping::decode(Some(&value), &m.digest), Some(m.clone()));
    assert_eq!(Mapping::decode(Some(&value), &sha256_digest(b"other")), None);
    assert_eq!(Mapping::decode(Some(b"garbage"), &m.digest), None);
    assert_eq!(Mapping::decode(None, &m.digest), None);
    let places = Mapping::places(&m.digest, 16, b"secret");
    assert!(places.iter().all(|k| k.starts_with("blobsteer.manifest.")));
    assert_ne!(places[0], places[1], "two distinct candidates");
    assert_ne!(
        Mapping::places(&m.digest, 1 << 20, b"other secret"),
        Mapping::places(&m.digest, 1 << 20, b"secret")
    );
}

#[test]
fn a_new_digest_takes_its_own_slot_an_empty_one_or_the_older_one() {
    let at = |digest: &[u8], when: u64| {
        let m = Mapping {
            digest: sha256_digest(digest),
            backend: "eu".into(),
            repository: "r".into(),
            original: sha256_digest(b"o"),
        };
        m.encode(when)
    };
    let new = sha256_digest(b"new");
    let (old, older) = (at(b"a", 200), at(b"b", 100));
    assert_eq!(Mapping::choose(&new, [Some(&old), Some(&older)]), 1);
    assert_eq!(Mapping::choose(&new, [Some(&older), Some(&old)]), 0);
    assert_eq!(Mapping::choose(&new, [Some(&old), None]), 1);
    assert_eq!(Mapping::choose(&new, [Some(b"garbage"), Some(&old)]), 0);
    assert_eq!(Mapping::choose(&new, [Some(&older), Some(&at(b"new", 50))]), 1, "its own");
}

#[test]
fn a_produced_digest_outlives_the_next_eighth_of_the_slots_in_productions() {
    // The memory simulated with its own rule: 256 slots full of older digests, a victim
    // produced, then 32 more digests (an eighth of the slots). Over 100 victims, how many are
    // still there (a direct-mapped memory keeps about 88%).
    let slots = 256u32;
    let mut survived = 0;
    for trial in 0..100u32 {
        let mut memory: std::collections::HashMap<String, Vec<u8>> = Default::default();
        let mut produce = |name: String, when: u64| {
            let m = Mapping {
                digest: sha256_digest(name.as_bytes()),
                backend: "eu".into(),
                repository: "r".into(),
                original: sha256_digest(b"o"),
            };
            let places = Mapping::places(&m.digest, slots, b"secret");
            let held = [
                memory.get(&places[0]).map(Vec::as_slice),
                memory.get(&places[1]).map(Vec::as_slice),
            ];
            let at = Mapping::choose(&m.digest, held);
            memory.insert(places[at].clone(), m.encode(when));
            m.digest
        };
        // The memory is full of older digests first.
        for i in 0..slots * 2 {
            produce(format!("{trial}-fill-{i}"), 0);
        }
        let victim = produce(format!("{trial}-victim"), 1);
        for i in 0..slots / 8 {
            produce(format!("{trial}-after-{i}"), 2);
        }
        let places = Mapping::places(&victim, slots, b"secret");
        if places
            .iter()
            .any(|k| Mapping::decode(memory.get(k).map(Vec::as_slice), &victim).is_some())
        {
            survived += 1;
        }
    }
    assert!(survived >= 97, "{survived} of 100 survived");
}

#[test]
fn one_blob_that_may_not_be_advertised_leaves_the_whole_manifest_untouched() {
    let manifest = read(OCI_IMAGE, None, None, MAX).unwrap();
    let first_layer = manifest.root.get("layers").and_then(|l| match &l.value {
        Value::Array(layers) => {
            layers.first().and_then(|d| d.get("digest")).and_then(Node::as_str).map(str::to_string)
        }
        _ => None,
    });
    let first_layer = first_layer.unwrap();
    let result = manifest.rewrite_image(|d| (d.as_str() != first_layer).then(|| url(d)).flatten());
    assert_eq!(result, Err(Untouched::BlobsUnverified));
}

/// Found by the `manifest` fuzz target: a number beyond f64 range is valid JSON (serde_json
/// refuses it); the rewrite must keep it exactly, like every byte it does not change.
#[test]
fn numbers_beyond_f64_range_survive_a_rewrite() {
    let text = String::from_utf8(OCI_IMAGE.to_vec()).unwrap().replacen(
        "\"size\": 434",
        "\"size\": 1e9991049000",
        1,
    );
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    let out = read(text.as_bytes(), None, None, MAX).unwrap().rewrite_image(url).unwrap();
    assert!(String::from_utf8(out.bytes).unwrap().contains("\"size\": 1e9991049000,\"urls\":["));
}

#[test]
fn a_rewrite_never_grows_past_what_clients_accept() {
    // A legal manifest just under 4 MiB: one layer, padded with an annotation.
    let digest = "sha256:".to_string() + &"a".repeat(64);
    let head = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{digest}","size":1}}],"annotations":{{"pad":""#
    );
    let pad = CLIENT_MAX_BYTES - 100 - head.len();
    let bytes = format!("{head}{}\"}}}}", "x".repeat(pad)).into_bytes();
    assert!(bytes.len() <= CLIENT_MAX_BYTES);
    let template =
        crate::url_template::UrlTemplate::parse("https://eu.example/b/{digest}").unwrap();
    let rewrite = |max: usize| {
        rewrite_for_backend(
            &template,
            "r",
            &bytes,
            Some(OCI_MANIFEST),
            None,
            max,
            |_| None,
            |_| true,
        )
    };
    assert_eq!(rewrite(64 << 20), Err(Untouched::RewriteTooLarge));
    // A smaller one is rewritten as before.
    assert!(rewrite_for_backend(
        &template,
        "r",
        OCI_IMAGE,
        Some(OCI_MANIFEST),
        None,
        MAX,
        |_| None,
        |_| true
    )
    .is_ok());
}

//! The manifest flow on the fixtures of `testdata/manifests`, as the glue drives it.

use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const IMAGE: &[u8] = include_bytes!("../../../../testdata/manifests/oci-image.json");
const INDEX: &[u8] = include_bytes!("../../../../testdata/manifests/layout/index.json");
const CHILD_AMD64: &[u8] = include_bytes!(
    "../../../../testdata/manifests/layout/blobs/sha256/38cd360f421acaf7047bcbf3f9cdc851fa32d6fe7281bb52fc5ca5d351f15cd9"
);
const CHILD_ARM64: &[u8] = include_bytes!(
    "../../../../testdata/manifests/layout/blobs/sha256/6e55cb0199a9c1102f159d4594a4937399ca3cd2db8014e00c683569dd3c53f1"
);

fn config(cluster: bool) -> Config {
    let cluster = if cluster { r#", "cluster": "mirror_eu""# } else { "" };
    let json = format!(
        r#"{{"backends": [{{"name": "eu", "blob_url": "https://eu.example/b/{{digest}}", "cidrs": ["15.236.0.0/15"]{cluster}}}],
            "manifests": {{"rewrite": true, "max_bytes": 65536}}}}"#
    );
    Config::from_json(json.as_bytes()).unwrap()
}

fn plan(head: bool, expect: Option<&str>) -> ManifestPlan {
    ManifestPlan {
        backend: 0,
        repository: "demo/hello".into(),
        send_as_get: head,
        expect_digest: expect.map(str::to_string),
    }
}

fn job(plan: ManifestPlan) -> ManifestJob {
    let header = |name: &str| match name {
        ":authority" => Some("registry.example".to_string()),
        "authorization" => Some("Bearer t".to_string()),
        _ => None,
    };
    ManifestJob::new(plan, None, header)
}

fn head(content_type: &str) -> UpstreamHead {
    let headers: [(&str, &[u8]); 3] =
        [(":status", b"200"), ("content-type", content_type.as_bytes()), ("x-other", b"\xff")];
    UpstreamHead::from_headers(headers)
}

fn unknown(_: &CheckRequest) -> Option<Known> {
    None
}

fn held(plan: ManifestPlan, content_type: &str) -> ManifestJob {
    let mut job = job(plan);
    assert_eq!(job.judge_head(&config(false), head(content_type)), HeadVerdict::Hold);
    job
}

#[test]
fn the_head_is_held_only_for_a_plain_200_within_the_limit() {
    let c = config(false);
    let leave =
        |head: UpstreamHead, send_as_get: bool| job(plan(send_as_get, None)).judge_head(&c, head);
    let ok = head(manifest::OCI_MANIFEST);
    assert_eq!(leave(ok.clone(), false), HeadVerdict::Hold);
    let not_found = UpstreamHead { status: Some(404), ..ok.clone() };
    assert_eq!(leave(not_found, true), HeadVerdict::Leave(Leave { reason: None, drop_body: true }));
    let gzip = UpstreamHead { content_encoding: Some("gzip".into()), ..ok.clone() };
    assert_eq!(
        leave(gzip, false),
        HeadVerdict::Leave(Leave { reason: Some(Untouched::Encoded), drop_body: false })
    );
    // The encoding rule is the reader's own: trimmed, case-insensitive.
    let identity = UpstreamHead { content_encoding: Some(" Identity ".into()), ..ok.clone() };
    assert_eq!(leave(identity, false), HeadVerdict::Hold);
    let long = UpstreamHead { content_length: Some(65537), ..ok };
    assert_eq!(
        leave(long, false),
        HeadVerdict::Leave(Leave { reason: Some(Untouched::TooLarge), drop_body: false })
    );
    let j = job(plan(true, None));
    assert_eq!(j.judge_body_size(&c, 65536), None);
    assert_eq!(
        j.judge_body_size(&c, 65537),
        Some(Leave { reason: Some(Untouched::TooLarge), drop_body: true })
    );
}

#[test]
fn an_image_is_rewritten_with_framing_that_matches_and_its_digest_remembered() {
    let c = config(false);
    let j = held(plan(false, None), manifest::OCI_MANIFEST);
    let mut cache = RewriteCache::new(8);
    let BodyStep::Reply(reply) = j.on_body(&c, IMAGE, &mut cache, &unknown) else { panic!() };
    let Reply::Rewritten { rewritten, remember, action } = &reply else { panic!("{reply:?}") };
    assert_eq!(*action, Action::ManifestRewritten);
    assert_eq!(rewritten.digest, sha256_digest(&rewritten.bytes));
    let mapping = &remember[0];
    assert_eq!(mapping.digest, rewritten.digest);
    assert_eq!((&mapping.original, mapping.backend.as_str()), (&sha256_digest(IMAGE), "eu"));
    let edit = j.edit(&reply);
    assert_eq!(edit.body, Some(rewritten.bytes.as_slice()));
    assert!(edit.set.contains(&("content-length", rewritten.bytes.len().to_string())));
    assert!(edit.set.contains(&("etag", format!("\"{}\"", rewritten.digest))));
    // A HEAD client gets the same headers and no body.
    let h = held(plan(true, None), manifest::OCI_MANIFEST);
    let BodyStep::Reply(head_reply) = h.on_body(&c, IMAGE, &mut cache, &unknown) else { panic!() };
    let edit = h.edit(&head_reply);
    assert_eq!(edit.body, Some(&b""[..]));
    assert!(edit.set.contains(&("content-length", rewritten.bytes.len().to_string())));
}

#[test]
fn an_index_fetches_its_children_then_points_at_their_rewrites() {
    let c = config(false);
    let j = held(plan(false, None), manifest::OCI_INDEX);
    let mut cache = RewriteCache::new(8);
    let BodyStep::FetchChildren(children) = j.on_body(&c, INDEX, &mut cache, &unknown) else {
        panic!()
    };
    assert_eq!(children, [sha256_digest(CHILD_AMD64), sha256_digest(CHILD_ARM64)]);
    let request = j.child_request(&children[0]);
    assert_eq!(request.path, format!("/v2/demo/hello/manifests/{}", children[0]));
    let names: Vec<&str> = request.headers.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, [":method", ":path", ":authority", "authorization", "accept", "accept"]);

    let fetched: HashMap<String, Child> = [CHILD_AMD64, CHILD_ARM64]
        .iter()
        .map(|b| (sha256_digest(b), Child { bytes: b.to_vec(), content_type: None }))
        .collect();
    let reply = j.complete(&c, INDEX, &fetched, &mut cache, &unknown);
    let Reply::Rewritten { remember, rewritten, .. } = &reply else { panic!("{reply:?}") };
    assert_eq!(remember.len(), 3, "the index and both children");
    assert_eq!(rewritten.children.len(), 2);

    let mut one = fetched.clone();
    one.remove(&children[1]);
    let reply = j.complete(&c, INDEX, &one, &mut RewriteCache::new(0), &unknown);
    assert_eq!(reply, Reply::Original(Untouched::ChildUnavailable));
    assert_eq!(j.edit(&reply).body, None, "a GET client gets the original body");
}

#[test]
fn a_rewrite_is_made_once_per_origin_and_shared() {
    let c = config(false);
    let j = held(plan(false, None), manifest::OCI_MANIFEST);
    let mut cache = RewriteCache::new(8);
    let mut j = j;
    j.head.docker_content_digest = Some(sha256_digest(IMAGE));
    let first = j.on_body(&c, IMAGE, &mut cache, &unknown);
    let second = j.on_body(&c, IMAGE, &mut cache, &unknown);
    let (
        BodyStep::Reply(Reply::Rewritten { rewritten: a, .. }),
        BodyStep::Reply(Reply::Rewritten { rewritten: b, .. }),
    ) = (first, second)
    else {
        panic!()
    };
    assert!(Rc::ptr_eq(&a, &b), "the second reply is the cached rewrite itself");
}

#[test]
fn a_checked_backend_advertises_only_blobs_known_present() {
    let c = config(true);
    let mut j = job(plan(false, None));
    assert_eq!(j.judge_head(&c, head(manifest::OCI_MANIFEST)), HeadVerdict::Hold);
    let mut cache = RewriteCache::new(8);
    let BodyStep::Reply(reply) = j.on_body(&c, IMAGE, &mut cache, &unknown) else { panic!() };
    assert_eq!(reply, Reply::Original(Untouched::BlobsUnverified));
    let asked = std::cell::RefCell::new(Vec::new());
    let present = |check: &CheckRequest| {
        asked.borrow_mut().push(check.path.clone());
        Some(Known::Present)
    };
    let BodyStep::Reply(reply) = j.on_body(&c, IMAGE, &mut cache, &present) else { panic!() };
    assert!(matches!(reply, Reply::Rewritten { .. }), "{reply:?}");
    assert!(asked.borrow().iter().all(|path| path.starts_with("/b/sha256:")), "{asked:?}");
    // A checked tag's rewrite depends on the cache: it is never kept.
    let BodyStep::Reply(again) = j.on_body(&c, IMAGE, &mut cache, &unknown) else { panic!() };
    assert_eq!(again, Reply::Original(Untouched::BlobsUnverified));
}

#[test]
fn a_produced_digest_is_reissued_for_its_original_and_only_served_if_it_matches() {
    let c = config(false);
    let j = held(plan(false, None), manifest::OCI_MANIFEST);
    let BodyStep::Reply(Reply::Rewritten { rewritten, remember, .. }) =
        j.on_body(&c, IMAGE, &mut RewriteCache::new(0), &unknown)
    else {
        panic!()
    };
    let lookup = |repository: &str| DigestLookup {
        repository: repository.into(),
        digest: rewritten.digest.clone(),
        is_head: true,
    };
    let value = remember[0].encode(1_000);
    let slots = [Some(&b"another"[..]), Some(value.as_slice())];
    let again = reissue(&c, lookup("demo/hello"), slots).unwrap();
    assert_eq!(again.original_path, format!("/v2/demo/hello/manifests/{}", sha256_digest(IMAGE)));
    assert_eq!(again.plan, plan(true, Some(&rewritten.digest)));
    assert_eq!(reissue(&c, lookup("other/repo"), slots), None);
    assert_eq!(reissue(&c, lookup("demo/hello"), [None, None]), None);
    assert_eq!(reissue(&c, lookup("demo/hello"), [Some(b"garbage"), None]), None);

    let served = held(again.plan.clone(), manifest::OCI_MANIFEST);
    let BodyStep::Reply(reply) = served.on_body(&c, IMAGE, &mut RewriteCache::new(0), &unknown)
    else {
        panic!()
    };
    assert_eq!(reply.counted(), (Action::ManifestServedByDigest, None));
    // The original changed under the produced digest: the registry's own 404, headers only.
    let changed = br#"{"schemaVersion":2}"#;
    let BodyStep::Reply(reply) = served.on_body(&c, changed, &mut RewriteCache::new(0), &unknown)
    else {
        panic!()
    };
    assert_eq!(reply.counted(), (Action::ManifestUntouched, Some(Untouched::BadDescriptor)));
    let edit = served.edit(&reply);
    assert_eq!((edit.status, edit.body), (Some(404), Some(&b""[..])));
    assert!(edit.set.contains(&("content-length", MANIFEST_UNKNOWN.len().to_string())));
    assert_eq!(reply.described(), None);
}

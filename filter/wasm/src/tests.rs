//! The glue, driven as Envoy drives it, against the fake host: requests, responses, callout
//! answers and stream ends, in the orders that matter.

use crate::fake::{Answering, FakeHost};
use crate::host::{Delivered, Headers};
use crate::root::Root;
use crate::stream::Stream;
use proxy_wasm::types::Action as HostAction;
use std::collections::HashMap;

const BLOB: &str =
    "/v2/demo/hello/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const EU: &str = "15.236.10.20";
const INDEX: &[u8] = include_bytes!("../../../testdata/manifests/layout/index.json");
const CHILDREN: [(&str, &[u8]); 2] = [
    (
        "sha256:38cd360f421acaf7047bcbf3f9cdc851fa32d6fe7281bb52fc5ca5d351f15cd9",
        include_bytes!("../../../testdata/manifests/layout/blobs/sha256/38cd360f421acaf7047bcbf3f9cdc851fa32d6fe7281bb52fc5ca5d351f15cd9"),
    ),
    (
        "sha256:6e55cb0199a9c1102f159d4594a4937399ca3cd2db8014e00c683569dd3c53f1",
        include_bytes!("../../../testdata/manifests/layout/blobs/sha256/6e55cb0199a9c1102f159d4594a4937399ca3cd2db8014e00c683569dd3c53f1"),
    ),
];
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A VM with a configuration, its streams, and the fake host they share.
struct Vm {
    host: FakeHost,
    root: Root<FakeHost>,
    streams: HashMap<u32, Stream<FakeHost>>,
    /// The next request's headers do not end its stream: a body follows.
    body_follows: bool,
}

impl Vm {
    /// A VM whose configuration is one backend `eu` with `extra` members added to it, and the
    /// top-level `sections`.
    fn new(backend_extra: &str, sections: &str) -> Vm {
        let config = format!(
            r#"{{"backends": [{{"name": "eu", "blob_url": "http://mirror.example:8080/b/{{digest}}", "cidrs": ["15.236.0.0/15"]{backend_extra}}}]{sections}}}"#
        );
        let host = FakeHost::default();
        host.state().properties.insert("plugin_configuration".into(), config.into_bytes());
        host.state().properties.insert("xds.cluster_name".into(), b"registry".to_vec());
        host.state().now_s = 1_000;
        let mut root = Root::new(host.clone());
        assert!(root.configure(), "the test configuration is valid");
        Vm { host, root, streams: HashMap::new(), body_follows: false }
    }

    fn checked() -> Vm {
        Vm::new(r#", "cluster": "mirror_eu""#, "")
    }

    fn rewriting() -> Vm {
        Vm::new("", r#", "manifests": {"rewrite": true}"#)
    }

    /// A new stream with these request headers, as Envoy calls `on_http_request_headers`.
    fn request(&mut self, id: u32, headers: &[(&str, &str)]) -> HostAction {
        {
            let mut state = self.host.state();
            let stream = state.streams.entry(id).or_default();
            stream.request =
                headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
            state.current = id;
        }
        let mut stream = self.root.stream(id).expect("configured");
        let action = stream.on_request_headers(!std::mem::take(&mut self.body_follows));
        self.streams.insert(id, stream);
        action
    }

    fn blob(&mut self, id: u32, method: &str, xff: &str) -> HostAction {
        self.request(id, &[(":method", method), (":path", BLOB), ("x-forwarded-for", xff)])
    }

    /// A tag request of containerd (a user agent manifests are rewritten for).
    fn tag(&mut self, id: u32, method: &str) -> HostAction {
        self.tag_by(id, method, "containerd/1.7.24")
    }

    fn tag_by(&mut self, id: u32, method: &str, user_agent: &str) -> HostAction {
        let path = "/v2/demo/hello/manifests/1.0";
        let headers = [
            (":method", method),
            (":path", path),
            (":authority", "reg"),
            ("x-forwarded-for", EU),
            ("user-agent", user_agent),
        ];
        self.request(id, &headers)
    }

    /// The upstream's response headers arrive.
    fn response_headers(&mut self, id: u32, headers: &[(&str, &str)]) -> HostAction {
        {
            let mut state = self.host.state();
            state.current = id;
            let stream = state.streams.entry(id).or_default();
            stream.response =
                headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
        }
        self.streams.get_mut(&id).unwrap().on_response_headers()
    }

    /// The whole response body arrives in one callback.
    fn response_body(&mut self, id: u32, body: &[u8]) -> HostAction {
        {
            let mut state = self.host.state();
            state.current = id;
            state.streams.entry(id).or_default().body = body.to_vec();
        }
        self.streams.get_mut(&id).unwrap().on_response_body(body.len(), true)
    }

    /// Envoy delivers the answer of callout `token` to the stream that sent it.
    fn answer(&mut self, token: u32, headers: &[(&str, &str)], body: &[u8]) {
        let context_id =
            self.host.state().calls.iter().find(|c| c.token == token).unwrap().context_id;
        let answering = Answering {
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
            body: body.to_vec(),
        };
        {
            let mut state = self.host.state();
            state.current = context_id;
            state.answering = Some(answering);
        }
        let delivered = Delivered { headers: headers.len(), body: body.len() };
        if let Some(stream) = self.streams.get_mut(&context_id) {
            stream.on_call_answer(token, delivered);
        }
        self.host.state().answering = None;
    }

    fn done(&mut self, id: u32) {
        self.host.state().current = id;
        let mut stream = self.streams.remove(&id).unwrap();
        stream.on_done();
        self.host.state().streams.remove(&id);
    }

    fn calls(&self) -> Vec<crate::fake::Call> {
        self.host.state().calls.clone()
    }
}

fn moved(vm: &Vm, names: &[(&str, u64)]) {
    let want: Vec<(String, u64)> = names.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    let mut want = want;
    want.sort();
    assert_eq!(vm.host.moved(), want);
}

#[test]
fn the_request_is_read_in_one_host_call() {
    let mut vm = Vm::new("", "");
    let action =
        vm.request(1, &[(":method", "GET"), (":path", "/v2/_catalog"), ("x-forwarded-for", EU)]);
    assert_eq!(action, HostAction::Continue);
    let reads = |vm: &Vm| -> Vec<String> {
        vm.host.state().reads.drain(..).map(|(_, _, name)| name).collect()
    };
    assert_eq!(reads(&vm), ["*"], "the whole map, once; no property for a path outside /v2/");
    moved(&vm, &[("passed_not_blob", 1)]);
    assert_eq!(vm.blob(2, "GET", EU), HostAction::Pause);
    assert_eq!(reads(&vm), ["*"]);
    let (status, headers) = vm.host.stream(2).local_reply.unwrap();
    assert_eq!(status, 307);
    assert_eq!(headers[0].1, format!("http://mirror.example:8080/b/{}", &BLOB[21..]));
    // A tag request with rewriting on takes what it forwards to children from the same read.
    let mut vm = Vm::rewriting();
    vm.tag(3, "GET");
    assert_eq!(reads(&vm), ["*"]);
}

#[test]
fn two_streams_coalesce_on_one_check_and_both_are_steered() {
    let mut vm = Vm::checked();
    assert_eq!(vm.blob(1, "GET", EU), HostAction::Pause);
    assert_eq!(vm.blob(2, "HEAD", EU), HostAction::Pause);
    let calls = vm.calls();
    assert_eq!(calls.len(), 1, "one HEAD for both streams");
    assert_eq!(
        (calls[0].cluster.as_str(), calls[0].header(":method")),
        ("mirror_eu", Some("HEAD"))
    );
    assert_eq!(calls[0].header(":authority"), Some("mirror.example:8080"));
    vm.answer(calls[0].token, &[(":status", "200")], b"");
    for id in [1, 2] {
        let (status, _) = vm.host.stream(id).local_reply.expect("redirected");
        assert_eq!(status, 307, "stream {id}");
        assert_eq!(vm.host.stream(id).resumed_requests, 0);
    }
    assert_eq!(vm.host.state().current, 1, "back on the stream that was called");
    moved(
        &vm,
        &[
            ("check.sent", 1),
            ("check.coalesced", 1),
            ("check.present", 1),
            ("redirected", 2),
            ("backend.eu.redirected", 2),
        ],
    );
    // The answer is cached for every worker: the next request needs no check.
    assert_eq!(vm.blob(3, "GET", EU), HostAction::Pause);
    assert_eq!(vm.calls().len(), 1);
    assert_eq!(vm.host.counter("check.cache_present"), 1);
    // The local replies go out through the response phase untouched.
    for id in [1, 2] {
        assert_eq!(vm.response_headers(id, &[(":status", "307")]), HostAction::Continue);
    }
}

#[test]
fn a_stream_that_ends_while_its_check_is_in_flight_releases_its_waiters() {
    let mut vm = Vm::checked();
    vm.blob(1, "GET", EU);
    vm.blob(2, "GET", EU);
    let token = vm.calls()[0].token;
    vm.done(1);
    let waiter = vm.host.stream(2);
    assert_eq!((waiter.resumed_requests, waiter.local_reply), (1, None), "sent upstream");
    assert_eq!(vm.host.counter("passed_mirror_missing"), 1);
    // Envoy cancels the callout with its stream; an answer that came anyway finds no one.
    vm.answer(token, &[(":status", "200")], b"");
    assert_eq!(vm.host.stream(2).local_reply, None);
    assert!(vm.host.state().shared.keys().all(|k| !k.starts_with("blobsteer.exists.")));
    assert_eq!(vm.response_headers(2, &[(":status", "200")]), HostAction::Continue);
}

#[test]
fn a_check_answer_with_zero_headers_is_a_failed_check_read_no_further() {
    let mut vm = Vm::checked();
    vm.blob(1, "GET", EU);
    vm.blob(2, "GET", EU);
    // The fake panics, as proxy-wasm 0.2.5 does, if the glue reads the headers.
    vm.answer(vm.calls()[0].token, &[], b"");
    for id in [1, 2] {
        let stream = vm.host.stream(id);
        assert_eq!((stream.resumed_requests, stream.local_reply), (1, None), "stream {id}");
    }
    assert_eq!(vm.host.counter("check.unavailable"), 1);
    assert_eq!(vm.host.counter("passed_mirror_missing"), 2);
    // The failure is cached briefly: the next request goes upstream at once.
    assert_eq!(vm.blob(3, "GET", EU), HostAction::Continue);
    assert_eq!(vm.host.counter("check.cache_absent"), 1);
}

#[test]
fn an_unknown_token_is_ignored() {
    let mut vm = Vm::checked();
    vm.blob(1, "GET", EU);
    let before = vm.host.moved();
    vm.host.state().calls.push(crate::fake::Call {
        token: 999,
        context_id: 1,
        cluster: "elsewhere".into(),
        headers: vec![],
        body: None,
        timeout: std::time::Duration::ZERO,
    });
    vm.answer(999, &[(":status", "200")], b"");
    assert_eq!(vm.host.moved(), before);
    assert_eq!(vm.host.stream(1).local_reply, None, "still held for its own check");
    vm.answer(vm.calls()[0].token, &[(":status", "200")], b"");
    assert_eq!(vm.host.stream(1).local_reply.map(|(s, _)| s), Some(307));
}

fn checked_verify_upstream() -> Vm {
    Vm::new(r#", "cluster": "mirror_eu""#, r#", "blobs": {"mode": "verify_upstream"}"#)
}

#[test]
fn verify_upstream_asks_the_mirror_only_after_the_upstream_said_yes() {
    let mut vm = checked_verify_upstream();
    // Refused by the upstream: the mirror is not asked, and the answer is the same either way.
    assert_eq!(vm.blob(1, "GET", EU), HostAction::Continue);
    assert_eq!(vm.host.stream(1).request_header(":method").as_deref(), Some("HEAD"));
    let refusal = [(":status", "401"), ("content-length", "145")];
    assert_eq!(vm.response_headers(1, &refusal), HostAction::Continue);
    assert_eq!(vm.host.stream(1).response_header("content-length").as_deref(), Some("0"));
    assert!(vm.calls().is_empty(), "no check for a refused request");
    moved(&vm, &[("passed_upstream_answer", 1), ("backend.eu.passed_upstream_answer", 1)]);
    // Said yes: held in the response phase for one check, which a second stream joins.
    vm.blob(2, "GET", EU);
    vm.blob(3, "HEAD", EU);
    assert_eq!(vm.response_headers(2, &[(":status", "200")]), HostAction::Pause);
    assert_eq!(vm.response_headers(3, &[(":status", "206")]), HostAction::Pause);
    assert_eq!(vm.calls().len(), 1);
    assert_eq!(vm.response_body(2, b""), HostAction::Pause, "held until the answer");
    vm.answer(vm.calls()[0].token, &[(":status", "200")], b"");
    for id in [2, 3] {
        let (status, headers) = vm.host.stream(id).local_reply.expect("redirected");
        assert_eq!(
            (status, headers[0].1.as_str()),
            (307, &*format!("http://mirror.example:8080/b/{}", &BLOB[21..]))
        );
    }
    assert_eq!(vm.host.state().current, 2, "back on the stream that was called");
    assert_eq!(vm.host.counter("redirected"), 2);
    assert_eq!(vm.host.counter("check.coalesced"), 1);
    // Cached now: the next yes is redirected at once.
    vm.blob(4, "GET", EU);
    assert_eq!(vm.response_headers(4, &[(":status", "200")]), HostAction::Pause);
    assert_eq!(vm.host.stream(4).local_reply.map(|(s, _)| s), Some(307));
    assert_eq!(vm.calls().len(), 1);
}

#[test]
fn verify_upstream_sends_a_get_the_mirror_cannot_serve_back_to_the_registry() {
    let mut vm = checked_verify_upstream();
    vm.blob(1, "GET", EU);
    vm.blob(2, "HEAD", EU);
    vm.response_headers(1, &[(":status", "200")]);
    vm.response_headers(2, &[(":status", "200"), ("content-length", "1234")]);
    vm.answer(vm.calls()[0].token, &[(":status", "404")], b"");
    // The GET went up as a HEAD: it has no bytes to give, so it is sent back to the registry.
    let (status, headers) = vm.host.stream(1).local_reply.expect("sent back");
    assert_eq!((status, headers[0].1.clone()), (307, format!("{BLOB}?blobsteer=registry")));
    // The HEAD gets the upstream's own answer, as it was.
    let head = vm.host.stream(2);
    assert_eq!((head.local_reply.clone(), head.resumed_responses), (None, 1));
    assert_eq!(head.response_header("content-length").as_deref(), Some("1234"));
    assert_eq!(vm.response_body(2, b""), HostAction::Continue, "released");
    assert_eq!(vm.host.counter("passed_mirror_missing"), 2);
    // The marked GET goes to the registry as it is, and nothing else is asked.
    let marked = format!("{BLOB}?blobsteer=registry");
    let action = vm.request(3, &[(":method", "GET"), (":path", &marked), ("x-forwarded-for", EU)]);
    assert_eq!(action, HostAction::Continue);
    assert_eq!(vm.host.stream(3).request_header(":method").as_deref(), Some("GET"));
    assert_eq!(vm.response_headers(3, &[(":status", "200")]), HostAction::Continue);
    assert_eq!(vm.host.counter("passed_registry_retry"), 1);
    assert_eq!(vm.calls().len(), 1);
    // An upstream redirect, with the mirror known to lack the blob: kept, made whole.
    vm.blob(4, "GET", EU);
    let moved = [(":status", "307"), ("location", "http://storage/x"), ("content-length", "9")];
    assert_eq!(vm.response_headers(4, &moved), HostAction::Continue);
    let kept = vm.host.stream(4);
    assert_eq!(kept.response_header("location").as_deref(), Some("http://storage/x"));
    assert_eq!(kept.response_header("content-length").as_deref(), Some("0"));
}

#[test]
fn a_redirect_the_host_refuses_leaves_the_request_to_the_upstream() {
    let mut vm = Vm::new("", "");
    vm.host.state().refuse.insert("send_response".into());
    assert_eq!(vm.blob(1, "GET", EU), HostAction::Continue);
    assert_eq!(vm.host.counter("redirected"), 0);
    // verify_upstream: the upstream's 200 to a HEAD cannot become the redirect, so it stays,
    // made whole for the GET client (no body follows).
    let mut vm = Vm::new("", r#", "blobs": {"mode": "verify_upstream"}"#);
    vm.host.state().refuse.insert("send_response".into());
    assert_eq!(vm.blob(1, "GET", EU), HostAction::Continue);
    assert_eq!(vm.host.stream(1).request_header(":method").as_deref(), Some("HEAD"));
    let action = vm.response_headers(1, &[(":status", "200"), ("content-length", "1234")]);
    assert_eq!(action, HostAction::Continue);
    assert_eq!(vm.host.stream(1).response_header("content-length").as_deref(), Some("0"));
    moved(&vm, &[("passed_upstream_answer", 1), ("backend.eu.passed_upstream_answer", 1)]);
}

#[test]
fn a_tag_asked_by_a_copy_tool_is_left_as_the_registry_sends_it() {
    let mut vm = Vm::new("", r#", "manifests": {"rewrite": true}, "decision_header": "x-d""#);
    assert_eq!(vm.tag_by(1, "HEAD", "skopeo/1.9.3"), HostAction::Continue);
    let stream = vm.host.stream(1);
    assert_eq!(stream.request_header(":method").as_deref(), Some("HEAD"), "asked as it came");
    assert!(!vm.host.state().properties.contains_key("1:blobsteer_client_request"));
    let headers =
        [(":status", "200"), ("content-type", "application/vnd.oci.image.manifest.v1+json")];
    assert_eq!(vm.response_headers(1, &headers), HostAction::Continue, "not held");
    assert_eq!(vm.host.stream(1).response_header("x-d").as_deref(), Some("manifest_untouched"));
    moved(&vm, &[("manifest_untouched", 1), ("manifest.untouched.user_agent", 1)]);
}

#[test]
fn a_head_sent_upstream_as_get_has_its_body_dropped() {
    let mut vm = Vm::rewriting();
    assert_eq!(vm.tag(1, "HEAD"), HostAction::Continue);
    assert_eq!(vm.host.stream(1).request_header(":method").as_deref(), Some("GET"));
    // The access log can still tell what the client asked.
    let recorded = vm.host.state().properties.get("1:blobsteer_client_request").cloned();
    assert_eq!(recorded.as_deref(), Some(&b"HEAD /v2/demo/hello/manifests/1.0"[..]));
    // Not a manifest the filter rewrites (gzip): the answer goes, without its body.
    let headers = [(":status", "200"), ("content-encoding", "gzip"), ("content-length", "5")];
    assert_eq!(vm.response_headers(1, &headers), HostAction::Continue);
    assert_eq!(vm.response_body(1, b"bytes"), HostAction::Continue);
    let stream = vm.host.stream(1);
    assert_eq!(stream.body, b"");
    assert_eq!(stream.response_header("content-length").as_deref(), Some("5"));
    assert_eq!(vm.host.counter("manifest.untouched.encoded"), 1);
}

/// A tag request whose index is held and whose two children are fetched.
fn index_fetched(vm: &mut Vm, method: &str) -> Vec<crate::fake::Call> {
    vm.tag(1, method);
    let head = [(":status", "200"), ("content-type", OCI_INDEX)];
    assert_eq!(vm.response_headers(1, &head), HostAction::Pause);
    assert_eq!(vm.response_body(1, INDEX), HostAction::Pause, "held for the children");
    let calls = vm.calls();
    assert_eq!(calls.len(), 2);
    for (call, (digest, _)) in calls.iter().zip(CHILDREN) {
        assert_eq!(call.cluster, "registry");
        assert_eq!(
            call.header(":path"),
            Some(format!("/v2/demo/hello/manifests/{digest}").as_str())
        );
        assert_eq!(call.header(":authority"), Some("reg"));
        assert_eq!(call.timeout, std::time::Duration::from_millis(10_000));
    }
    calls
}

#[test]
fn an_index_whose_child_fails_goes_out_as_it_came() {
    let mut vm = Vm::rewriting();
    let calls = index_fetched(&mut vm, "GET");
    vm.answer(calls[0].token, &[(":status", "200")], CHILDREN[0].1);
    assert_eq!(vm.host.stream(1).resumed_responses, 0, "one child still out");
    vm.answer(calls[1].token, &[(":status", "404")], b"{}");
    let stream = vm.host.stream(1);
    assert_eq!(stream.resumed_responses, 1);
    assert_eq!(stream.body, INDEX);
    assert_eq!(stream.response_header("docker-content-digest"), None);
    assert_eq!(vm.host.counter("manifest.untouched.child_unavailable"), 1);
}

#[test]
fn a_child_answer_with_zero_headers_is_a_failed_child() {
    let mut vm = Vm::rewriting();
    let calls = index_fetched(&mut vm, "GET");
    vm.answer(calls[0].token, &[(":status", "200")], CHILDREN[0].1);
    vm.answer(calls[1].token, &[], b"");
    let stream = vm.host.stream(1);
    assert_eq!((stream.resumed_responses, stream.body.as_slice()), (1, INDEX));
    assert_eq!(vm.host.counter("manifest.untouched.child_unavailable"), 1);
}

#[test]
fn an_index_is_rewritten_and_its_digest_served_again() {
    let mut vm = Vm::rewriting();
    let calls = index_fetched(&mut vm, "HEAD");
    for (call, (_, bytes)) in calls.iter().zip(CHILDREN) {
        vm.answer(call.token, &[(":status", "200")], bytes);
    }
    let stream = vm.host.stream(1);
    assert_eq!(stream.resumed_responses, 1);
    assert_eq!(stream.body, b"", "a HEAD client gets no body");
    let digest = stream.response_header("docker-content-digest").unwrap();
    assert_ne!(digest, blobsteer_core::manifest::sha256_digest(INDEX));
    assert_eq!(stream.response_header("etag"), Some(format!("\"{digest}\"")));
    assert_eq!(vm.host.counter("manifest_rewritten"), 1);

    // The client asks for what it was told: the original is asked for instead, and rewritten
    // to the same bytes.
    let path = format!("/v2/demo/hello/manifests/{digest}");
    assert_eq!(vm.request(2, &[(":method", "GET"), (":path", &path)]), HostAction::Continue);
    let original =
        format!("/v2/demo/hello/manifests/{}", blobsteer_core::manifest::sha256_digest(INDEX));
    assert_eq!(vm.host.stream(2).request_header(":path"), Some(original));
    let head = [(":status", "200"), ("content-type", OCI_INDEX)];
    assert_eq!(vm.response_headers(2, &head), HostAction::Pause);
    // The first answer had no Docker-Content-Digest to keep its rewrite by: the children are
    // fetched again.
    assert_eq!(vm.response_body(2, INDEX), HostAction::Pause);
    let calls = vm.calls();
    assert_eq!(calls.len(), 4);
    for (call, (_, bytes)) in calls[2..].iter().zip(CHILDREN) {
        vm.answer(call.token, &[(":status", "200")], bytes);
    }
    let stream = vm.host.stream(2);
    assert_eq!(stream.response_header("docker-content-digest"), Some(digest.clone()));
    assert_eq!(blobsteer_core::manifest::sha256_digest(&stream.body), digest);
    assert_eq!(
        stream.response_header("content-length"),
        Some(stream.body.len().to_string()),
        "framing agrees with the body sent"
    );
    assert_eq!(vm.host.counter("manifest_served_by_digest"), 1);
    // One secret for the Envoy, made once (two draws), then read by every use.
    let secret = vm.host.state().shared.get(blobsteer_core::manifest::SECRET_KEY).cloned();
    assert_eq!(secret.map(|s| s.len()), Some(32));
    assert_eq!(vm.host.state().randoms, 2);
}

#[test]
fn a_digest_the_filter_did_not_produce_is_left_alone() {
    let mut vm = Vm::rewriting();
    let path = format!("/v2/demo/hello/manifests/{}", CHILDREN[0].0);
    assert_eq!(vm.request(1, &[(":method", "GET"), (":path", &path)]), HostAction::Continue);
    assert_eq!(vm.host.stream(1).request_header(":path"), Some(path));
    assert_eq!(vm.response_headers(1, &[(":status", "200")]), HostAction::Continue);
    moved(&vm, &[("passed_pinned_manifest", 1)]);
    assert!(vm.host.state().reads.iter().all(|(_, map, _)| *map == Headers::Request));
}

#[test]
fn a_blob_request_with_a_body_is_never_held_or_answered() {
    let mut vm = Vm::checked();
    vm.body_follows = true;
    assert_eq!(vm.blob(1, "GET", EU), HostAction::Continue);
    assert!(vm.calls().is_empty(), "no check for it");
    assert_eq!(vm.host.stream(1).local_reply, None);
    assert_eq!(vm.streams.get_mut(&1).unwrap().on_request_body(), HostAction::Continue);
    moved(&vm, &[("passed_request_body", 1)]);
    // A held request's body, however it comes, keeps it held until its check answers.
    assert_eq!(vm.blob(2, "GET", EU), HostAction::Pause);
    assert_eq!(vm.streams.get_mut(&2).unwrap().on_request_body(), HostAction::Pause);
}

/// A VM rewriting manifests with these `manifests` settings added.
fn rewriting_with(settings: &str) -> Vm {
    Vm::new("", &format!(r#", "manifests": {{"rewrite": true, {settings}}}"#))
}

/// Tag request `id` whose upstream answers `index`; returns what the body callback did.
fn tag_answered(vm: &mut Vm, id: u32, index: &[u8]) -> HostAction {
    vm.tag(id, "GET");
    let head = [(":status", "200"), ("content-type", OCI_INDEX)];
    assert_eq!(vm.response_headers(id, &head), HostAction::Pause);
    vm.response_body(id, index)
}

#[test]
fn an_index_with_too_many_children_is_sent_without_fetching_any() {
    let mut vm = rewriting_with(r#""max_children": 1"#);
    assert_eq!(tag_answered(&mut vm, 1, INDEX), HostAction::Continue);
    assert!(vm.calls().is_empty());
    assert_eq!(vm.host.stream(1).body, INDEX);
    assert_eq!(vm.host.counter("manifest.untouched.too_many_children"), 1);
}

#[test]
fn a_child_listed_many_times_is_fetched_once() {
    let mut vm = Vm::rewriting();
    let entry = format!(
        r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{}}}"#,
        CHILDREN[0].0,
        CHILDREN[0].1.len()
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        vec![entry; 50].join(",")
    );
    assert_eq!(tag_answered(&mut vm, 1, index.as_bytes()), HostAction::Pause);
    let calls = vm.calls();
    assert_eq!(calls.len(), 1);
    vm.answer(calls[0].token, &[(":status", "200")], CHILDREN[0].1);
    assert_eq!(vm.host.counter("manifest_rewritten"), 1);
    assert_eq!(vm.host.state().streams[&1].resumed_responses, 1);
}

#[test]
fn the_vms_child_fetches_are_bounded_and_returned() {
    let mut vm = rewriting_with(r#""max_child_fetches": 3"#);
    assert_eq!(tag_answered(&mut vm, 1, INDEX), HostAction::Pause);
    assert_eq!(vm.calls().len(), 2);
    // Two more would make four: the second index goes out as it came, nothing fetched.
    assert_eq!(tag_answered(&mut vm, 2, INDEX), HostAction::Continue);
    assert_eq!(vm.calls().len(), 2);
    assert_eq!(vm.host.counter("manifest.untouched.fetches_busy"), 1);
    for call in vm.calls() {
        vm.answer(
            call.token,
            &[(":status", "200")],
            CHILDREN.iter().find(|(d, _)| call.header(":path").unwrap().ends_with(d)).unwrap().1,
        );
    }
    // Answered: the budget is back.
    assert_eq!(tag_answered(&mut vm, 3, INDEX), HostAction::Pause);
    assert_eq!(vm.calls().len(), 4);
    // A stream that ends with its children out gives their fetches back (Envoy cancels them).
    vm.done(3);
    assert_eq!(tag_answered(&mut vm, 4, INDEX), HostAction::Pause);
    assert_eq!(vm.calls().len(), 6);
}

#[test]
fn a_child_larger_than_max_child_bytes_is_not_read() {
    let mut vm = rewriting_with(r#""max_child_bytes": 1024"#);
    assert_eq!(tag_answered(&mut vm, 1, INDEX), HostAction::Pause);
    let calls = vm.calls();
    vm.answer(calls[0].token, &[(":status", "200")], CHILDREN[0].1);
    vm.answer(calls[1].token, &[(":status", "200")], &[b' '; 2048]);
    assert_eq!(vm.host.state().call_bodies_read, 1, "the large child's body stays in Envoy");
    assert_eq!(vm.host.stream(1).body, INDEX);
    assert_eq!(vm.host.counter("manifest.untouched.child_unavailable"), 1);
}

/// A VM that rewrites, with the fleet's store on cluster `etcd`.
fn with_store() -> Vm {
    Vm::new(
        "",
        r#", "manifests": {"rewrite": true, "store": {"cluster": "etcd", "prefix": "/r/", "ttl_s": 400}}"#,
    )
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A containerd tag request for an image manifest, answered by the upstream; the response is
/// held for the store.
fn image_held(vm: &mut Vm, id: u32) {
    vm.tag(id, "GET");
    let head = [(":status", "200"), ("content-type", OCI_MANIFEST)];
    assert_eq!(vm.response_headers(id, &head), HostAction::Pause);
    assert_eq!(vm.response_body(id, CHILDREN[0].1), HostAction::Pause, "held for the store");
}

fn json_body(call: &crate::fake::Call) -> serde_json::Value {
    serde_json::from_slice(call.body.as_deref().unwrap()).unwrap()
}

#[test]
fn a_rewrite_is_sent_only_once_the_store_has_its_record() {
    let mut vm = with_store();
    image_held(&mut vm, 1);
    let calls = vm.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].cluster.as_str(), calls[0].header(":path")),
        ("etcd", Some("/v3/lease/grant"))
    );
    assert_eq!(calls[0].header(":method"), Some("POST"));
    vm.answer(calls[0].token, &[(":status", "200")], br#"{"header":{},"ID":"77","TTL":"400"}"#);
    let calls = vm.calls();
    assert_eq!(calls[1].header(":path"), Some("/v3/kv/txn"));
    let txn = json_body(&calls[1]);
    assert_eq!(txn["success"][0]["request_put"]["lease"], "77");
    assert_eq!(vm.host.stream(1).resumed_responses, 0, "not before the store has it");
    vm.answer(calls[1].token, &[(":status", "200")], br#"{"succeeded":true,"responses":[{}]}"#);
    let stream = vm.host.stream(1);
    assert_eq!(stream.resumed_responses, 1);
    let digest = stream.response_header("docker-content-digest").unwrap();
    assert_eq!(blobsteer_core::manifest::sha256_digest(&stream.body), digest);
    assert_ne!(digest, CHILDREN[0].0);
    let key = txn["success"][0]["request_put"]["key"].as_str().unwrap();
    assert_eq!(
        blobsteer_core::base64::decode(key).unwrap(),
        format!("/r/demo/hello@{digest}").into_bytes()
    );
    moved(
        &vm,
        &[
            ("manifest_rewritten", 1),
            ("backend.eu.manifest_rewritten", 1),
            ("store.lease_granted", 1),
            ("store.written", 1),
        ],
    );
    // The same rewrite again: the record is known here, fresh, so nothing is asked.
    vm.tag(2, "GET");
    vm.response_headers(2, &[(":status", "200"), ("content-type", OCI_MANIFEST)]);
    assert_eq!(vm.response_body(2, CHILDREN[0].1), HostAction::Continue);
    assert_eq!(vm.calls().len(), 2);
    assert_eq!(vm.host.stream(2).response_header("docker-content-digest"), Some(digest));
}

#[test]
fn a_rewrite_the_store_cannot_take_goes_out_as_it_came() {
    type Answered<'a> = (&'a [(&'a str, &'a str)], &'a [u8], &'a str);
    let answers: [Answered<'_>; 4] = [
        (&[(":status", "504")], b"", "store.timeout"),
        (&[], b"", "store.timeout"),
        (&[(":status", "200")], b"<html>", "store.failed"),
        (&[(":status", "500")], b"", "store.failed"),
    ];
    for (headers, body, counted) in answers {
        let mut vm = with_store();
        image_held(&mut vm, 1);
        let grant = vm.calls()[0].token;
        vm.answer(grant, &[(":status", "200")], br#"{"ID":"5"}"#);
        vm.answer(vm.calls()[1].token, headers, body);
        let stream = vm.host.stream(1);
        assert_eq!(stream.resumed_responses, 1, "{counted}");
        assert_eq!(stream.response_header("docker-content-digest"), None, "the original's");
        assert_eq!(stream.body, CHILDREN[0].1);
        assert_eq!(vm.host.counter(counted), 1, "{counted}");
        assert_eq!(vm.host.counter("manifest.untouched.store_unavailable"), 1);
        assert_eq!(vm.host.counter("manifest_rewritten"), 0);
    }
    // A key holding another record: the digest is not handed out either.
    let mut vm = with_store();
    image_held(&mut vm, 1);
    vm.answer(vm.calls()[0].token, &[(":status", "200")], br#"{"ID":"5"}"#);
    let txn = json_body(&vm.calls()[1]);
    let key = txn["compare"][0]["key"].as_str().unwrap();
    let digest = {
        let key = blobsteer_core::base64::decode(key).unwrap();
        String::from_utf8(key).unwrap().rsplit('@').next().unwrap().to_string()
    };
    let other = format!("{digest} us demo/hello sha256:{} 1", "0".repeat(64));
    let value = blobsteer_core::base64::encode(other.as_bytes());
    let conflict = format!(
        r#"{{"responses":[{{"response_range":{{"kvs":[{{"key":"{key}","value":"{value}"}}]}}}}]}}"#
    );
    vm.answer(vm.calls()[1].token, &[(":status", "200")], conflict.as_bytes());
    assert_eq!(vm.host.counter("store.conflict"), 1);
    assert_eq!(vm.host.stream(1).body, CHILDREN[0].1);
}

#[test]
fn a_store_call_answered_503_is_sent_once_more() {
    // The write's first attempt reaches a member that just stopped; the second, another one.
    let mut vm = with_store();
    image_held(&mut vm, 1);
    vm.answer(vm.calls()[0].token, &[(":status", "200")], br#"{"ID":"5"}"#);
    let first = vm.calls()[1].clone();
    vm.answer(first.token, &[(":status", "503")], b"upstream connect error");
    let calls = vm.calls();
    assert_eq!(calls.len(), 3, "sent again");
    assert_eq!((calls[2].header(":path"), &calls[2].body), (first.header(":path"), &first.body));
    assert_eq!(vm.host.stream(1).resumed_responses, 0, "still held for the store");
    vm.answer(calls[2].token, &[(":status", "200")], br#"{"succeeded":true}"#);
    let stream = vm.host.stream(1);
    assert_eq!(stream.resumed_responses, 1);
    assert!(stream.response_header("docker-content-digest").is_some(), "the rewrite");
    moved(
        &vm,
        &[
            ("manifest_rewritten", 1),
            ("backend.eu.manifest_rewritten", 1),
            ("store.lease_granted", 1),
            ("store.retried", 1),
            ("store.written", 1),
        ],
    );
    // Once only: a second 503 is a failure, and the original goes out.
    let mut vm = with_store();
    image_held(&mut vm, 1);
    vm.answer(vm.calls()[0].token, &[(":status", "503")], b"");
    vm.answer(vm.calls()[1].token, &[(":status", "503")], b"");
    assert_eq!(vm.calls().len(), 2);
    assert_eq!(vm.host.stream(1).body, CHILDREN[0].1, "the original");
    assert_eq!((vm.host.counter("store.retried"), vm.host.counter("store.failed")), (1, 1));
    // A lookup likewise: asked again, found.
    let mut vm = with_store();
    let path = format!("/v2/demo/hello/manifests/sha256:{}", "e".repeat(64));
    assert_eq!(vm.request(1, &[(":method", "GET"), (":path", &path)]), HostAction::Pause);
    vm.answer(vm.calls()[0].token, &[(":status", "503")], b"");
    assert_eq!(vm.calls()[1].header(":path"), Some("/v3/kv/range"));
    vm.answer(vm.calls()[1].token, &[(":status", "200")], br#"{"kvs":[]}"#);
    assert_eq!(vm.host.counter("store.miss"), 1);
}

#[test]
fn a_digest_this_envoy_does_not_know_is_asked_of_the_store() {
    // Another Envoy produced it: this one's shared data is empty.
    let mut producer = with_store();
    image_held(&mut producer, 1);
    producer.answer(producer.calls()[0].token, &[(":status", "200")], br#"{"ID":"5"}"#);
    let txn = json_body(&producer.calls()[1]);
    producer.answer(producer.calls()[1].token, &[(":status", "200")], br#"{"succeeded":true}"#);
    let digest = producer.host.stream(1).response_header("docker-content-digest").unwrap();
    let put = &txn["success"][0]["request_put"];

    let mut vm = with_store();
    let path = format!("/v2/demo/hello/manifests/{digest}");
    let by_digest = [(":method", "GET"), (":path", path.as_str()), ("user-agent", "curl/8")];
    assert_eq!(vm.request(1, &by_digest), HostAction::Pause);
    let read = vm.calls()[0].clone();
    assert_eq!(read.header(":path"), Some("/v3/kv/range"));
    assert_eq!(json_body(&read)["key"], put["key"]);
    let found = format!(
        r#"{{"header":{{}},"kvs":[{{"key":{},"value":{},"version":"1"}}],"count":"1"}}"#,
        put["key"], put["value"]
    );
    vm.answer(read.token, &[(":status", "200")], found.as_bytes());
    let stream = vm.host.stream(1);
    assert_eq!(stream.resumed_requests, 1);
    let original = format!("/v2/demo/hello/manifests/{}", CHILDREN[0].0);
    assert_eq!(stream.request_header(":path"), Some(original));
    assert_eq!(vm.host.counter("store.hit"), 1);
    // Served again byte for byte, and now remembered here: the next request needs no read.
    vm.response_headers(1, &[(":status", "200"), ("content-type", OCI_MANIFEST)]);
    assert_eq!(vm.response_body(1, CHILDREN[0].1), HostAction::Continue);
    assert_eq!(vm.host.stream(1).response_header("docker-content-digest"), Some(digest.clone()));
    assert_eq!(vm.request(2, &by_digest), HostAction::Continue);
    assert_eq!(vm.calls().len(), 1);

    // Absent, failed or hostile: the request goes upstream untouched.
    let absent = br#"{"header":{"revision":"3"}}"#;
    let hostile = br#"{"kvs":[{"key":"AAAA","value":"AAAA"},{"key":"AAAA","value":"AAAA"}]}"#;
    for (headers, body, counted) in [
        (&[(":status", "200")][..], &absent[..], "store.miss"),
        (&[(":status", "200")][..], &hostile[..], "store.failed"),
        (&[][..], &b""[..], "store.timeout"),
    ] {
        let mut vm = with_store();
        assert_eq!(vm.request(1, &by_digest), HostAction::Pause);
        vm.answer(vm.calls()[0].token, headers, body);
        let stream = vm.host.stream(1);
        assert_eq!(
            (stream.resumed_requests, stream.request_header(":path")),
            (1, Some(path.clone()))
        );
        assert_eq!(vm.host.counter(counted), 1, "{counted}");
        assert_eq!(vm.host.counter("passed_pinned_manifest"), 1);
    }
}

#[test]
fn a_digest_in_use_is_written_to_the_store_again_once_its_record_is_old() {
    let mut vm = with_store();
    image_held(&mut vm, 1);
    vm.answer(vm.calls()[0].token, &[(":status", "200")], br#"{"ID":"9"}"#);
    vm.answer(vm.calls()[1].token, &[(":status", "200")], br#"{"succeeded":true}"#);
    let digest = vm.host.stream(1).response_header("docker-content-digest").unwrap();
    let path = format!("/v2/demo/hello/manifests/{digest}");
    let by_digest = [(":method", "GET"), (":path", path.as_str())];
    // Young (ttl_s / 4 = 100 s): served from memory, nothing written.
    vm.host.state().now_s += 100;
    assert_eq!(vm.request(2, &by_digest), HostAction::Continue);
    assert_eq!(vm.calls().len(), 2);
    // Older: written again under the VM's lease (still fresh: granted 101 s ago, ttl_s 400).
    vm.host.state().now_s += 1;
    assert_eq!(vm.request(3, &by_digest), HostAction::Continue, "nothing waits for it");
    let renew = vm.calls()[2].clone();
    let put = &json_body(&renew)["success"][0]["request_put"];
    assert_eq!((renew.header(":path"), put["lease"].as_str()), (Some("/v3/kv/txn"), Some("9")));
    vm.answer(renew.token, &[(":status", "200")], br#"{"succeeded":true}"#);
    assert_eq!(vm.host.counter("store.renewed"), 1);
    // Remembered as written now: the next use writes nothing.
    assert_eq!(vm.request(4, &by_digest), HostAction::Continue);
    assert_eq!(vm.calls().len(), 3);
}

#[test]
fn a_lease_asked_for_a_later_renewal_is_kept_whatever_the_stream_does_meanwhile() {
    let mut vm = with_store();
    image_held(&mut vm, 1);
    vm.answer(vm.calls()[0].token, &[(":status", "200")], br#"{"ID":"9"}"#);
    vm.answer(vm.calls()[1].token, &[(":status", "200")], br#"{"succeeded":true}"#);
    let digest = vm.host.stream(1).response_header("docker-content-digest").unwrap();
    // The record and the lease are old: serving the digest asks for a lease, without waiting.
    vm.host.state().now_s += 300;
    let path = format!("/v2/demo/hello/manifests/{digest}");
    assert_eq!(vm.request(2, &[(":method", "GET"), (":path", &path)]), HostAction::Continue);
    let grant = vm.calls()[2].clone();
    assert_eq!(grant.header(":path"), Some("/v3/lease/grant"));
    // The stream is waiting for the upstream's original when the lease comes.
    vm.answer(grant.token, &[(":status", "200")], br#"{"ID":"10"}"#);
    assert_eq!(vm.host.counter("store.lease_granted"), 2);
    // The next use renews under it.
    assert_eq!(vm.request(3, &[(":method", "GET"), (":path", &path)]), HostAction::Continue);
    let renew = vm.calls()[3].clone();
    assert_eq!(json_body(&renew)["success"][0]["request_put"]["lease"], "10");
}

/// eu (checked) falls back to fra (checked) and then cdn (no cluster: holds every blob).
const CHAIN: &str = r#", "cluster": "mirror_eu", "fallback": ["fra", "cdn"]},
    {"name": "fra", "blob_url": "http://fra.example/b/{digest}", "cidrs": [], "cluster": "mirror_fra"},
    {"name": "cdn", "blob_url": "http://cdn.example/b/{digest}", "cidrs": []"#;

/// Where stream `id` was redirected to, and its decision header.
fn redirected_to(vm: &Vm, id: u32) -> (String, String) {
    let (status, headers) = vm.host.stream(id).local_reply.expect("redirected");
    assert_eq!(status, 307, "stream {id}");
    (headers[0].1.clone(), headers.get(1).map(|h| h.1.clone()).unwrap_or_default())
}

#[test]
fn a_blob_the_mirror_lacks_is_checked_on_each_fallback_in_turn() {
    let mut vm = Vm::new(CHAIN, r#", "decision_header": "x-d""#);
    assert_eq!(vm.blob(1, "GET", EU), HostAction::Pause);
    assert_eq!(vm.blob(2, "HEAD", EU), HostAction::Pause);
    vm.answer(vm.calls()[0].token, &[(":status", "404")], b"");
    // eu lacks it: the sender asks fra, and the other stream waits for that answer too.
    let calls = vm.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[1].cluster.as_str(), calls[1].context_id), ("mirror_fra", 1));
    assert_eq!(calls[1].header(":authority"), Some("fra.example"));
    for id in [1, 2] {
        assert_eq!(vm.host.stream(id).local_reply, None, "stream {id} still held");
    }
    vm.answer(calls[1].token, &[(":status", "404")], b"");
    for id in [1, 2] {
        let (location, described) = redirected_to(&vm, id);
        assert_eq!(location, format!("http://cdn.example/b/{}", &BLOB[21..]));
        assert!(described.ends_with("; backend=eu; fallback=cdn"), "{described}");
        assert_eq!(vm.host.stream(id).resumed_requests, 0);
    }
    moved(
        &vm,
        &[
            ("check.sent", 2),
            ("check.coalesced", 2),
            ("check.not_found", 2),
            ("redirected", 2),
            ("backend.cdn.redirected", 2),
        ],
    );
    // The local replies go out with their own decision header, not "passed_mirror_missing".
    assert_eq!(vm.response_headers(1, &[(":status", "307")]), HostAction::Continue);
    assert_eq!(vm.host.stream(1).response_header("x-d"), None);
    // Both absences are cached: the next request goes down the chain without a check.
    assert_eq!(vm.blob(3, "GET", EU), HostAction::Pause);
    assert!(redirected_to(&vm, 3).0.starts_with("http://cdn.example/"));
    assert_eq!((vm.calls().len(), vm.host.counter("check.cache_absent")), (2, 2));
    // Another blob that fra holds is sent there.
    let other = nth_blob(7);
    vm.request(4, &[(":method", "GET"), (":path", &other), ("x-forwarded-for", EU)]);
    vm.answer(vm.calls()[2].token, &[(":status", "404")], b"");
    vm.answer(vm.calls()[3].token, &[(":status", "200")], b"");
    let (location, described) = redirected_to(&vm, 4);
    assert_eq!(location, format!("http://fra.example/b/sha256:{:064x}", 7));
    assert!(described.ends_with("; backend=eu; fallback=fra"), "{described}");
    assert_eq!(vm.host.counter("backend.fra.redirected"), 1);
}

#[test]
fn a_sender_that_ends_while_its_fallback_check_is_in_flight_releases_its_waiters() {
    let mut vm = Vm::new(CHAIN, "");
    vm.blob(1, "GET", EU);
    vm.blob(2, "GET", EU);
    vm.answer(vm.calls()[0].token, &[(":status", "404")], b"");
    assert_eq!(vm.calls().len(), 2, "fra asked by stream 1");
    vm.done(1);
    // Stream 2 cannot ask anything itself (stream 1 is being called): it goes on to cdn.
    assert!(redirected_to(&vm, 2).0.starts_with("http://cdn.example/"));
    assert_eq!(vm.calls().len(), 2);
}

#[test]
fn a_waiter_whose_next_check_is_not_in_flight_passes_over_that_backend() {
    // fra's URL names the repository, eu's does not: two repositories' streams share eu's
    // check, but each needs its own of fra.
    let chain = CHAIN.replace("fra.example/b/{digest}", "fra.example/{repository}/{digest}");
    let mut vm = Vm::new(&chain, "");
    vm.blob(1, "GET", EU);
    let other = BLOB.replace("/demo/hello/", "/demo/other/");
    vm.request(2, &[(":method", "GET"), (":path", &other), ("x-forwarded-for", EU)]);
    assert_eq!(vm.calls().len(), 1, "one check of eu for both");
    vm.answer(vm.calls()[0].token, &[(":status", "404")], b"");
    // Stream 1 asks fra for its repository; stream 2 passes over fra, to cdn.
    assert_eq!(vm.calls().len(), 2);
    assert_eq!(vm.calls()[1].header(":path"), Some(&*format!("/demo/hello/{}", &BLOB[21..])));
    assert!(redirected_to(&vm, 2).0.starts_with("http://cdn.example/"));
    assert_eq!(vm.host.counter("check.passed_over"), 1);
    vm.answer(vm.calls()[1].token, &[(":status", "200")], b"");
    assert!(redirected_to(&vm, 1).0.starts_with("http://fra.example/demo/hello/"));
}

#[test]
fn the_clients_of_a_backend_that_is_down_go_straight_to_their_fallbacks_check() {
    let health = r#", "existence_check": {"down_after_failures": 1}"#;
    let mut vm = Vm::new(CHAIN, health);
    vm.blob(1, "GET", EU);
    vm.answer(vm.calls()[0].token, &[(":status", "503")], b"");
    assert_eq!(vm.host.counter("backend.eu.down"), 1);
    vm.answer(vm.calls()[1].token, &[(":status", "200")], b"");
    assert!(redirected_to(&vm, 1).0.starts_with("http://fra.example/"));
    // eu is down: another blob's first check is fra's.
    let other = nth_blob(9);
    vm.request(2, &[(":method", "GET"), (":path", &other), ("x-forwarded-for", EU)]);
    assert_eq!((vm.calls().len(), vm.calls()[2].cluster.as_str()), (3, "mirror_fra"));
    assert_eq!(vm.host.counter("check.skipped_down"), 1);
}

#[test]
fn verify_upstream_steers_to_the_fallback_once_the_upstream_said_yes() {
    let mut vm = Vm::new(CHAIN, r#", "blobs": {"mode": "verify_upstream"}"#);
    vm.blob(1, "GET", EU);
    assert_eq!(vm.response_headers(1, &[(":status", "200")]), HostAction::Pause);
    vm.answer(vm.calls()[0].token, &[(":status", "404")], b"");
    assert_eq!(vm.calls()[1].cluster, "mirror_fra");
    assert_eq!(vm.response_body(1, b""), HostAction::Pause, "held until fra answers");
    vm.answer(vm.calls()[1].token, &[(":status", "200")], b"");
    let location = redirected_to(&vm, 1).0;
    assert_eq!(location, format!("http://fra.example/b/{}", &BLOB[21..]));
    assert_eq!(vm.host.counter("backend.fra.redirected"), 1);
    // An upstream redirect has its Location rewritten to the fallback.
    vm.blob(2, "GET", EU);
    let moved = [(":status", "307"), ("location", "http://storage/x")];
    assert_eq!(vm.response_headers(2, &moved), HostAction::Continue, "both answers cached");
    let kept = vm.host.stream(2);
    assert_eq!(kept.response_header("location"), Some(location));
    assert_eq!(vm.host.counter("backend.fra.location_rewritten"), 1);
}

/// The path of a blob whose digest is `n` repeated.
fn nth_blob(n: u32) -> String {
    format!("/v2/demo/hello/blobs/sha256:{:064x}", n)
}

#[test]
fn a_failing_mirror_is_taken_out_and_one_probe_brings_it_back() {
    let health =
        r#", "existence_check": {"down_after_failures": 3, "failure_window_s": 10, "down_s": 20}"#;
    let mut vm = Vm::new(r#", "cluster": "mirror_eu""#, health);
    let get = |vm: &mut Vm, id: u32| {
        let path = nth_blob(id);
        vm.request(id, &[(":method", "GET"), (":path", &path), ("x-forwarded-for", EU)])
    };
    // Three different blobs, three failed checks (a timeout, a reset, a 503): down.
    for (id, answer) in
        [(1, &[(":status", "504")][..]), (2, &[][..]), (3, &[(":status", "503")][..])]
    {
        assert_eq!(get(&mut vm, id), HostAction::Pause);
        let token = vm.calls().last().unwrap().token;
        vm.answer(token, answer, b"");
        assert_eq!(vm.host.stream(id).resumed_requests, 1, "upstream");
    }
    assert_eq!(vm.host.counter("backend.eu.down"), 1);
    // Down: no check for another blob; it goes upstream at once.
    assert_eq!(get(&mut vm, 4), HostAction::Continue);
    assert_eq!(vm.calls().len(), 3);
    assert_eq!(vm.host.counter("check.skipped_down"), 1);
    // After down_s, one request probes (even for a blob whose absence is cached), the next skips.
    vm.host.state().now_s += 20;
    assert_eq!(get(&mut vm, 1), HostAction::Pause, "the probe");
    assert_eq!(get(&mut vm, 5), HostAction::Continue, "one probe at a time");
    assert_eq!(vm.calls().len(), 4);
    vm.answer(vm.calls()[3].token, &[(":status", "200")], b"");
    assert_eq!(vm.host.stream(1).local_reply.map(|(s, _)| s), Some(307));
    assert_eq!(vm.host.counter("backend.eu.up"), 1);
    // Up again: checks as usual.
    assert_eq!(get(&mut vm, 6), HostAction::Pause);
    assert_eq!(vm.calls().len(), 5);
}

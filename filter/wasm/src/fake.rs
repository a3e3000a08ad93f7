//! A fake host for the glue's tests: it records every call, holds header maps per stream, and
//! plays scripted callout answers. Like proxy-wasm 0.2.5, it panics when a callout's headers are
//! read although none were delivered, so a test that reaches that read fails.

use crate::host::{Headers, Host, Refused};
use proxy_wasm::types::Status;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One stream's maps, as the host holds them.
#[derive(Debug, Default, Clone)]
pub struct FakeStream {
    pub request: Vec<(String, Vec<u8>)>,
    pub response: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub local_reply: Option<(u16, Vec<(String, String)>)>,
    pub resumed_requests: usize,
    pub resumed_responses: usize,
}

impl FakeStream {
    /// A response header's value as text.
    pub fn response_header(&self, name: &str) -> Option<String> {
        let (_, value) = self.response.iter().find(|(n, _)| n == name)?;
        String::from_utf8(value.clone()).ok()
    }

    /// A request header's value as text.
    pub fn request_header(&self, name: &str) -> Option<String> {
        let (_, value) = self.request.iter().find(|(n, _)| n == name)?;
        String::from_utf8(value.clone()).ok()
    }
}

/// A dispatched callout.
#[derive(Debug, Clone)]
pub struct Call {
    pub token: u32,
    pub context_id: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An answer being delivered to `on_http_call_response`.
#[derive(Debug, Clone, Default)]
pub struct Answering {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct State {
    pub current: u32,
    pub streams: HashMap<u32, FakeStream>,
    pub shared: HashMap<String, Vec<u8>>,
    pub counters: Vec<(String, u64)>,
    pub calls: Vec<Call>,
    pub answering: Option<Answering>,
    /// Operations the host refuses: "send_response", "dispatch", "set_header <name>".
    pub refuse: HashSet<String>,
    pub properties: HashMap<String, Vec<u8>>,
    /// Every header read: (stream, map, name).
    pub reads: Vec<(u32, Headers, String)>,
    /// How many callout bodies were read.
    pub call_bodies_read: usize,
    /// How many random numbers were drawn.
    pub randoms: u64,
    pub now_s: u64,
}

/// The fake host: a handle to shared state, cloned into the VM and kept by the test.
#[derive(Debug, Clone, Default)]
pub struct FakeHost(pub Rc<RefCell<State>>);

impl FakeHost {
    pub fn state(&self) -> std::cell::RefMut<'_, State> {
        self.0.borrow_mut()
    }

    pub fn stream(&self, id: u32) -> FakeStream {
        self.0.borrow().streams.get(&id).cloned().unwrap_or_default()
    }

    /// The value of a counter by its stat name (without `blobsteer.`), 0 if never moved.
    pub fn counter(&self, name: &str) -> u64 {
        let full = format!("blobsteer.{name}");
        self.0.borrow().counters.iter().find(|(n, _)| *n == full).map_or(0, |(_, v)| *v)
    }

    /// Every counter that moved, without the `blobsteer.` prefix.
    pub fn moved(&self) -> Vec<(String, u64)> {
        let state = self.0.borrow();
        let mut moved: Vec<_> = state
            .counters
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(n, v)| (n.trim_start_matches("blobsteer.").to_string(), *v))
            .collect();
        moved.sort();
        moved
    }

    fn refused(&self, operation: &str) -> Result<(), Refused> {
        match self.0.borrow().refuse.contains(operation) {
            true => Err(Refused(Status::InternalFailure)),
            false => Ok(()),
        }
    }

    fn map<T>(&self, map: Headers, f: impl FnOnce(&mut Vec<(String, Vec<u8>)>) -> T) -> T {
        let mut state = self.0.borrow_mut();
        let current = state.current;
        let stream = state.streams.entry(current).or_default();
        f(match map {
            Headers::Request => &mut stream.request,
            Headers::Response => &mut stream.response,
        })
    }

    fn current_stream<T>(&self, f: impl FnOnce(&mut FakeStream) -> T) -> T {
        let mut state = self.0.borrow_mut();
        let current = state.current;
        f(state.streams.entry(current).or_default())
    }
}

impl Host for FakeHost {
    fn header(&self, map: Headers, name: &str) -> Option<Vec<u8>> {
        {
            let mut state = self.0.borrow_mut();
            let current = state.current;
            state.reads.push((current, map, name.to_string()));
        }
        self.map(map, |m| m.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()))
    }

    fn headers(&self, map: Headers) -> Vec<(String, Vec<u8>)> {
        {
            let mut state = self.0.borrow_mut();
            let current = state.current;
            state.reads.push((current, map, "*".to_string()));
        }
        self.map(map, |m| m.clone())
    }

    fn set_header(&self, map: Headers, name: &str, value: Option<&str>) -> Result<(), Refused> {
        self.refused(&format!("set_header {name}"))?;
        self.map(map, |m| {
            m.retain(|(n, _)| n != name);
            if let Some(value) = value {
                m.push((name.to_string(), value.as_bytes().to_vec()));
            }
        });
        Ok(())
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.current_stream(|s| Some(s.body.iter().copied().take(size).collect()))
    }

    fn set_response_body(&self, size: usize, value: &[u8]) -> Result<(), Refused> {
        self.current_stream(|s| {
            let kept = s.body.split_off(size.min(s.body.len()));
            s.body = value.iter().copied().chain(kept).collect();
        });
        Ok(())
    }

    fn send_response(&self, status: u16, headers: &[(&str, &str)]) -> Result<(), Refused> {
        self.refused("send_response")?;
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.current_stream(|s| s.local_reply = Some((status, headers)));
        Ok(())
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Refused> {
        self.refused("dispatch")?;
        let mut state = self.0.borrow_mut();
        let token = 100 + state.calls.len() as u32;
        let context_id = state.current;
        state.calls.push(Call {
            token,
            context_id,
            cluster: cluster.to_string(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.map(<[u8]>::to_vec),
            timeout,
        });
        Ok(token)
    }

    fn call_header(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.0.borrow();
        let answering = state.answering.as_ref().filter(|a| !a.headers.is_empty());
        let Some(answering) = answering else {
            panic!("unexpected status: 2 (a callout's headers read with none delivered)");
        };
        answering.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    fn call_body(&self, size: usize) -> Option<Vec<u8>> {
        self.0.borrow_mut().call_bodies_read += 1;
        let state = self.0.borrow();
        let answering = state.answering.as_ref().filter(|a| !a.headers.is_empty());
        let Some(answering) = answering else {
            panic!("unexpected status: 2 (a callout's body read with no headers delivered)");
        };
        Some(answering.body.iter().copied().take(size).collect())
    }

    fn shared(&self, key: &str) -> Option<Vec<u8>> {
        self.0.borrow().shared.get(key).cloned()
    }

    fn set_shared(&self, key: &str, value: &[u8]) -> Result<(), Refused> {
        self.0.borrow_mut().shared.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), Refused> {
        let mut state = self.0.borrow_mut();
        if !state.streams.contains_key(&context_id) {
            return Err(Refused(Status::BadArgument));
        }
        state.current = context_id;
        Ok(())
    }

    fn resume_request(&self) -> Result<(), Refused> {
        self.current_stream(|s| s.resumed_requests += 1);
        Ok(())
    }

    fn resume_response(&self) -> Result<(), Refused> {
        self.current_stream(|s| s.resumed_responses += 1);
        Ok(())
    }

    fn now(&self) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(self.0.borrow().now_s))
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.0.borrow().properties.get(&path.join(".")).cloned()
    }

    fn set_property(&self, name: &str, value: &[u8]) -> Result<(), Refused> {
        let mut state = self.0.borrow_mut();
        let key = format!("{}:{name}", state.current);
        state.properties.insert(key, value.to_vec());
        Ok(())
    }

    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, Refused> {
        Ok(self.0.borrow().properties.get("plugin_configuration").cloned())
    }

    fn random(&self) -> u64 {
        let mut state = self.0.borrow_mut();
        state.randoms += 1;
        0x5eed_0000 + state.randoms
    }

    fn define_counter(&self, name: &str) -> Result<u32, Refused> {
        let mut state = self.0.borrow_mut();
        state.counters.push((name.to_string(), 0));
        Ok(state.counters.len() as u32 - 1)
    }

    fn increment(&self, id: u32) -> Result<(), Refused> {
        let mut state = self.0.borrow_mut();
        match state.counters.get_mut(id as usize) {
            Some((_, value)) => {
                *value += 1;
                Ok(())
            }
            None => Err(Refused(Status::NotFound)),
        }
    }
}

//! A strict JSON reader that keeps where every value is in the input.
//!
//! Rewriting a manifest must not reorder, reformat or drop anything it does not change, so the
//! rewrite splices the original bytes at known places instead of re-serializing. This reader
//! gives those places. It refuses what a signed or hashed document must never be ambiguous
//! about: duplicate keys, invalid UTF-8, unpaired surrogates, and anything after the document;
//! and what no manifest needs: nesting deeper than [`MAX_DEPTH`], more values than
//! [`MAX_VALUES`].
//!
//! Reading is linear in the input: each byte is looked at a bounded number of times, and the
//! tree holds at most [`MAX_VALUES`] nodes (about 50 bytes each), so neither time nor memory
//! depends on the shape of the input beyond its size. The one step above linear is the
//! repeated-key check of a large object, `O(m log m)` for `m` members, with `m` below
//! [`MAX_VALUES`].

use crate::slot::fnv1a;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// Deepest nesting of arrays and objects accepted; real manifests use 4.
pub const MAX_DEPTH: usize = 32;

/// Most values (objects, arrays, strings, numbers, literals) and object keys a document may
/// hold. A manifest of 4 MiB (Distribution's limit) of the smallest descriptors there are holds
/// about 230,000 (32,000 layers of 3 keys and 4 values); a document of tinier ones (`[0,0,...]`,
/// or one object of 380,000 short keys) is refused once it passes this, so reading it costs
/// about what reading a manifest of the same size does (`make bench`, `read_4_mib`), and its
/// tree stays within about 12 MiB.
pub const MAX_VALUES: usize = 1 << 18;

/// Objects of up to this many members are searched for a repeated key as each key is read;
/// a larger object has its keys sorted once it is read (by a cheap hash, then by the key, so
/// keys are compared only when their hashes tie), then compared with their neighbours: keys an
/// attacker makes collide cost string comparisons, not a quadratic search.
pub const SEARCHED_MEMBERS: usize = 16;

/// A JSON value and the byte range it occupies in the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Node<'a> {
    /// Bytes of the input this value spans (for objects, from `{` to `}` included).
    pub span: Range<usize>,
    /// The value.
    pub value: Value<'a>,
}

/// A JSON value; strings are decoded (borrowed from the input unless they hold an escape),
/// numbers kept as their text.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number; its text is the node's span of the input (numbers are never decoded, and a
    /// rewrite keeps them as written).
    Number,
    /// A string, unescaped.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Node<'a>>),
    /// An object's members in document order (keys unique).
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        match &self.value {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string value, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON at this byte offset.
    Syntax(usize),
    /// A key appears twice in one object.
    DuplicateKey(String),
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// More than [`MAX_VALUES`] values and keys.
    TooManyValues,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax(at) => write!(f, "invalid JSON at byte {at}"),
            JsonError::DuplicateKey(key) => write!(f, "duplicate key {key:?}"),
            JsonError::TooDeep => write!(f, "nested deeper than {MAX_DEPTH}"),
            JsonError::TooManyValues => write!(f, "more than {MAX_VALUES} values and keys"),
        }
    }
}

/// A key that appears twice in a large object (small ones were searched as they were read).
fn repeated(members: &[(Cow<'_, str>, Node<'_>)]) -> Option<String> {
    if members.len() <= SEARCHED_MEMBERS {
        return None;
    }
    let mut keys: Vec<(u64, &str)> =
        members.iter().map(|(k, _)| (fnv1a(&[k.as_ref()]), k.as_ref())).collect();
    keys.sort_unstable();
    let pair = keys.windows(2).find(|pair| pair.first() == pair.last())?;
    pair.first().map(|(_, key)| key.to_string())
}

/// Reads a whole document.
pub fn parse(input: &[u8]) -> Result<Node<'_>, JsonError> {
    let mut reader = Reader { input, at: 0, values: 0 };
    let node = reader.value(0)?;
    reader.whitespace();
    if reader.at != input.len() {
        return Err(JsonError::Syntax(reader.at));
    }
    Ok(node)
}

struct Reader<'a> {
    input: &'a [u8],
    at: usize,
    /// Values and keys read so far.
    values: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn error<T>(&self) -> Result<T, JsonError> {
        Err(JsonError::Syntax(self.at))
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), JsonError> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            self.error()
        }
    }

    /// Counts a value or a key against [`MAX_VALUES`].
    fn count(&mut self) -> Result<(), JsonError> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(JsonError::TooManyValues);
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Node<'a>, JsonError> {
        self.count()?;
        self.whitespace();
        let start = self.at;
        let value = match self.peek() {
            Some(b'{') => self.object(depth + 1)?,
            Some(b'[') => self.array(depth + 1)?,
            Some(b'"') => Value::String(self.string()?),
            Some(b't') => self.literal(b"true", Value::Bool(true))?,
            Some(b'f') => self.literal(b"false", Value::Bool(false))?,
            Some(b'n') => self.literal(b"null", Value::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return self.error(),
        };
        Ok(Node { span: start..self.at, value })
    }

    fn literal(&mut self, text: &[u8], value: Value<'a>) -> Result<Value<'a>, JsonError> {
        if self.input.get(self.at..self.at + text.len()) == Some(text) {
            self.at += text.len();
            Ok(value)
        } else {
            self.error()
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value<'a>, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.expect(b'{')?;
        let mut members: Vec<(Cow<'a, str>, Node<'a>)> = Vec::new();
        self.whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.whitespace();
            if self.peek() != Some(b'"') {
                return self.error();
            }
            self.count()?;
            let key = self.string()?;
            if members.len() < SEARCHED_MEMBERS && members.iter().any(|(k, _)| *k == key) {
                return Err(JsonError::DuplicateKey(key.into_owned()));
            }
            self.whitespace();
            self.expect(b':')?;
            let value = self.value(depth)?;
            members.push((key, value));
            self.whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    if let Some(key) = repeated(&members) {
                        return Err(JsonError::DuplicateKey(key));
                    }
                    return Ok(Value::Object(members));
                }
                _ => return self.error(),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value<'a>, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                _ => return self.error(),
            }
        }
    }

    fn number(&mut self) -> Result<Value<'a>, JsonError> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.error(),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.error();
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.error();
            }
            self.digits();
        }
        Ok(Value::Number)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.expect(b'"')?;
        // Most strings (every digest, media type and key of a manifest) have no escape: find
        // the closing quote and borrow the bytes.
        let input: &'a [u8] = self.input;
        let rest = input.get(self.at..).unwrap_or_default();
        if let Some(len) = rest.iter().position(|&b| matches!(b, b'"' | b'\\' | 0x00..=0x1f)) {
            if rest.get(len) == Some(&b'"') {
                let text = rest.get(..len).unwrap_or_default();
                let text = std::str::from_utf8(text).map_err(|_| JsonError::Syntax(self.at))?;
                self.at += len + 1;
                return Ok(Cow::Borrowed(text));
            }
        }
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(byte) = self.peek() else { return self.error() };
            match byte {
                b'"' => {
                    self.at += 1;
                    let text = String::from_utf8(out).map_err(|_| JsonError::Syntax(self.at))?;
                    return Ok(Cow::Owned(text));
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.at += 1;
                            let c = self.unicode_escape()?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            continue;
                        }
                        _ => return self.error(),
                    };
                    self.at += 1;
                    out.push(escaped as u8);
                }
                0x00..=0x1f => return self.error(),
                _ => {
                    out.push(byte);
                    self.at += 1;
                }
            }
        }
    }

    /// After `\u`: four hex digits, and a second escape for a surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                if self.input.get(self.at..self.at + 2) != Some(b"\\u") {
                    return self.error();
                }
                self.at += 2;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return self.error();
                }
                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
            }
            0xdc00..=0xdfff => return self.error(),
            _ => first,
        };
        char::from_u32(code).map_or_else(|| self.error(), Ok)
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let text = self.input.get(self.at..self.at + 4).ok_or(JsonError::Syntax(self.at))?;
        let text = std::str::from_utf8(text).map_err(|_| JsonError::Syntax(self.at))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.error();
        }
        self.at += 4;
        u32::from_str_radix(text, 16).map_err(|_| JsonError::Syntax(self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn keeps_spans_order_and_values() {
        let text = br#" {"b": [1, -2.5e3, true, null], "a": {"x": "\u00e9\ud83d\ude00\n"}} "#;
        let doc = parse(text).unwrap();
        assert_eq!(doc.span, 1..text.len() - 1);
        let Value::Object(members) = &doc.value else { panic!() };
        assert_eq!(members.iter().map(|(k, _)| k.as_ref()).collect::<Vec<_>>(), ["b", "a"]);
        let b = doc.get("b").unwrap();
        assert_eq!(&text[b.span.clone()], b"[1, -2.5e3, true, null]");
        assert_eq!(doc.get("a").unwrap().get("x").unwrap().as_str(), Some("é😀\n"));
    }

    #[test]
    fn agrees_with_serde_json_on_what_is_json() {
        let cases: [&[u8]; 16] = [
            b"{}",
            b"[]",
            b"0",
            b"-0.1e+2",
            b"\"\\/\"",
            b"01",
            b"1.",
            b"+1",
            b"[1,]",
            b"{\"a\":1,}",
            b"{'a':1}",
            b"\"\x01\"",
            b"tru",
            b"[1 2]",
            b"\"\\x\"",
            b"\xff",
        ];
        for case in cases {
            let ours = parse(case).is_ok();
            let theirs = serde_json::from_slice::<serde_json::Value>(case).is_ok();
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn refuses_ambiguity_depth_and_trailing_bytes() {
        assert_eq!(parse(br#"{"a": 1, "a": 2}"#), Err(JsonError::DuplicateKey("a".into())));
        assert_eq!(parse(br#"{"a": {"b": 1, "b": 1}}"#), Err(JsonError::DuplicateKey("b".into())));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(deep.as_bytes()).is_ok());
        let deeper = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(deeper.as_bytes()), Err(JsonError::TooDeep));
        let very = "[".repeat(1_000_000);
        assert_eq!(parse(very.as_bytes()), Err(JsonError::TooDeep));
        assert_eq!(parse(b"{} {}"), Err(JsonError::Syntax(3)));
        assert!(parse(br#""\ud800""#).is_err(), "unpaired surrogate");
        assert!(parse(br#""\udc00\ud800""#).is_err());
        assert!(parse(b"\"\xc3\x28\"").is_err(), "invalid UTF-8");
    }

    #[test]
    fn a_manifest_of_4_mib_is_read_and_a_document_of_tiny_values_is_refused() {
        let layer = format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}","size":123456789}}"#,
            "a".repeat(64)
        );
        let layers = (4 << 20) / (layer.len() + 1);
        let manifest =
            format!(r#"{{"schemaVersion":2,"layers":[{}]}}"#, vec![layer; layers].join(","));
        assert!(manifest.len() <= 4 << 20);
        assert!(parse(manifest.as_bytes()).is_ok(), "{layers} layers");
        let zeros = format!("[{}0]", "0,".repeat(2_000_000));
        assert_eq!(parse(zeros.as_bytes()), Err(JsonError::TooManyValues));
        let keys: Vec<String> = (0..380_000).map(|i| format!(r#""k{i}":0"#)).collect();
        let object = format!("{{{}}}", keys.join(","));
        assert_eq!(parse(object.as_bytes()), Err(JsonError::TooManyValues));
        let at_the_limit = format!("[{}0]", "0,".repeat(MAX_VALUES - 2));
        assert!(parse(at_the_limit.as_bytes()).is_ok());
        let past_it = format!("[{}0]", "0,".repeat(MAX_VALUES - 1));
        assert_eq!(parse(past_it.as_bytes()), Err(JsonError::TooManyValues));
    }

    #[test]
    fn a_repeated_key_is_found_in_an_object_of_any_size() {
        let object = |keys: &mut dyn Iterator<Item = String>| {
            let members: Vec<String> = keys.map(|k| format!("\"{k}\":0")).collect();
            format!("{{{}}}", members.join(","))
        };
        for size in [SEARCHED_MEMBERS - 1, SEARCHED_MEMBERS, SEARCHED_MEMBERS + 1, 50_000] {
            let distinct = object(&mut (0..size).map(|i| format!("k{i}")));
            let Value::Object(members) = parse(distinct.as_bytes()).unwrap().value else {
                panic!("an object")
            };
            assert_eq!(members.len(), size);
            // The repeat comes last, and repeats the first key, the middle one, or the last.
            for repeat in [0, size / 2, size - 1] {
                let keys = (0..size).map(|i| format!("k{i}")).chain([format!("k{repeat}")]);
                let text = object(&mut keys.into_iter());
                let want = Err(JsonError::DuplicateKey(format!("k{repeat}")));
                assert_eq!(parse(text.as_bytes()), want, "{size} members, k{repeat} twice");
            }
        }
    }
}

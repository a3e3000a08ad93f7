//! Content digests as the OCI image spec defines them, limited to the algorithms we can vouch for.

use std::fmt;

/// A digest algorithm blobsteer steers. The OCI grammar allows others, but only registered
/// algorithms have a fixed encoding we can validate, so anything else is left to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `sha256`: 64 lowercase hex characters.
    Sha256,
    /// `sha512`: 128 lowercase hex characters.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears in a digest string.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding this algorithm produces.
    pub fn encoded_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// A validated digest borrowed from the request (`sha256:<64 lowercase hex>`). Holding one is proof
/// that the text is safe to place in a URL: it contains only `[a-z0-9:]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest<'a> {
    text: &'a str,
    algorithm: Algorithm,
}

/// Why a string is not a digest we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestError {
    /// No `:` between algorithm and encoded part.
    MissingSeparator,
    /// An algorithm other than sha256 or sha512.
    UnsupportedAlgorithm,
    /// Encoded part of the wrong length for its algorithm.
    WrongLength,
    /// Encoded part with a character other than `[0-9a-f]` (uppercase hex included).
    NotLowercaseHex,
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DigestError::MissingSeparator => "missing ':' between algorithm and encoded part",
            DigestError::UnsupportedAlgorithm => "algorithm is neither sha256 nor sha512",
            DigestError::WrongLength => "encoded part has the wrong length for its algorithm",
            DigestError::NotLowercaseHex => "encoded part is not lowercase hex",
        })
    }
}

impl<'a> Digest<'a> {
    /// Parses `algorithm:encoded`, accepting only sha256 and sha512 in lowercase hex.
    pub fn parse(text: &'a str) -> Result<Self, DigestError> {
        let (name, encoded) = text.split_once(':').ok_or(DigestError::MissingSeparator)?;
        let algorithm = Algorithm::from_name(name).ok_or(DigestError::UnsupportedAlgorithm)?;
        if encoded.len() != algorithm.encoded_len() {
            return Err(DigestError::WrongLength);
        }
        if !encoded.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::NotLowercaseHex);
        }
        Ok(Digest { text, algorithm })
    }

    /// The whole digest, `algorithm:encoded`.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part after the `:`.
    pub fn encoded(&self) -> &'a str {
        let start = self.algorithm.as_str().len() + 1;
        self.text.get(start..).unwrap_or_default()
    }
}

impl fmt::Display for Digest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_sha256_and_sha512() {
        let text = format!("sha256:{HEX64}");
        let d = Digest::parse(&text).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.encoded(), HEX64);
        assert_eq!(d.as_str(), text);
        let long = format!("sha512:{HEX64}{HEX64}");
        assert_eq!(Digest::parse(&long).unwrap().algorithm(), Algorithm::Sha512);
    }

    #[test]
    fn rejects_everything_outside_the_grammar() {
        let upper = format!("sha256:{}", HEX64.to_uppercase());
        let short = format!("sha256:{}", &HEX64[1..]);
        let sha512_short = format!("sha512:{HEX64}");
        let traversal = format!("sha256:../{}", &HEX64[3..]);
        let crlf = format!("sha256:{}\r\n", &HEX64[2..]);
        let cases: [(&str, DigestError); 7] = [
            ("sha256", DigestError::MissingSeparator),
            (&upper, DigestError::NotLowercaseHex),
            (&short, DigestError::WrongLength),
            (&sha512_short, DigestError::WrongLength),
            (&traversal, DigestError::NotLowercaseHex),
            (&crlf, DigestError::NotLowercaseHex),
            ("md5:d41d8cd98f00b204e9800998ecf8427e", DigestError::UnsupportedAlgorithm),
        ];
        for (text, want) in cases {
            assert_eq!(Digest::parse(text), Err(want), "{text:?}");
        }
    }
}

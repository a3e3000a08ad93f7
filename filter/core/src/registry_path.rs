//! The distribution API paths blobsteer acts on, parsed with the OCI grammar.
//!
//! Anything outside the grammar (percent-encoding, dot segments, uppercase, unknown algorithms) is
//! [`RegistryPath::Other`]: the filter leaves it to the upstream, which has the final word.

use crate::digest::Digest;

/// Longest repository name Distribution accepts.
pub const MAX_REPOSITORY_LEN: usize = 255;

/// Longest tag the OCI distribution spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// What a request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryPath<'a> {
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// The repository, e.g. `library/alpine`.
        repository: &'a str,
        /// The blob's digest.
        digest: Digest<'a>,
    },
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// The repository.
        repository: &'a str,
        /// A tag or a digest.
        reference: Reference<'a>,
    },
    /// Anything else, including paths that break the grammar.
    Other,
}

/// How a manifest is referred to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference<'a> {
    /// A tag such as `1.0`.
    Tag(&'a str),
    /// A digest (pinned pull).
    Digest(Digest<'a>),
}

impl<'a> RegistryPath<'a> {
    /// Parses the `:path` pseudo-header. A query string is ignored; a fragment is not expected.
    pub fn parse(path: &'a str) -> Self {
        let path = path.split_once('?').map_or(path, |(before, _)| before);
        let Some(rest) = path.strip_prefix("/v2/") else {
            return RegistryPath::Other;
        };
        let mut tail = rest.rsplitn(3, '/');
        let (Some(last), Some(kind), Some(repository)) = (tail.next(), tail.next(), tail.next())
        else {
            return RegistryPath::Other;
        };
        if !is_repository(repository) {
            return RegistryPath::Other;
        }
        match kind {
            "blobs" => match Digest::parse(last) {
                Ok(digest) => RegistryPath::Blob { repository, digest },
                Err(_) => RegistryPath::Other,
            },
            "manifests" => {
                if let Ok(digest) = Digest::parse(last) {
                    RegistryPath::Manifest { repository, reference: Reference::Digest(digest) }
                } else if is_tag(last) {
                    RegistryPath::Manifest { repository, reference: Reference::Tag(last) }
                } else {
                    RegistryPath::Other
                }
            }
            _ => RegistryPath::Other,
        }
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
/// A repository that passes contains no `..`, no `%`, no control characters: safe in a URL path.
pub fn is_repository(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_REPOSITORY_LEN && name.split('/').all(is_path_component)
}

fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // A run of alphanumerics is required at the start and after every separator.
        let run_start = i;
        while bytes.get(i).is_some_and(|&b| alnum(b)) {
            i += 1;
        }
        if i == run_start {
            return false;
        }
        let sep_start = i;
        match bytes.get(i) {
            None => return true,
            Some(b'.') => i += 1,
            Some(b'_') => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            Some(b'-') => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            Some(_) => return false,
        }
        debug_assert!(i > sep_start);
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= MAX_TAG_LEN
        && bytes.next().is_some_and(word)
        && bytes.all(|b| word(b) || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_blob_paths() {
        let path = format!("/v2/library/alpine/blobs/sha256:{HEX}");
        match RegistryPath::parse(&path) {
            RegistryPath::Blob { repository, digest } => {
                assert_eq!(repository, "library/alpine");
                assert_eq!(digest.encoded(), HEX);
            }
            other => panic!("not a blob: {other:?}"),
        }
        let with_query = format!("/v2/a/blobs/sha256:{HEX}?ns=docker.io");
        assert!(matches!(RegistryPath::parse(&with_query), RegistryPath::Blob { .. }));
        let named_blobs = format!("/v2/x/blobs/y/blobs/sha256:{HEX}");
        assert!(matches!(
            RegistryPath::parse(&named_blobs),
            RegistryPath::Blob { repository: "x/blobs/y", .. }
        ));
    }

    #[test]
    fn parses_manifest_references() {
        assert_eq!(
            RegistryPath::parse("/v2/demo/hello/manifests/1.0"),
            RegistryPath::Manifest { repository: "demo/hello", reference: Reference::Tag("1.0") }
        );
        let by_digest = format!("/v2/demo/manifests/sha256:{HEX}");
        assert!(matches!(
            RegistryPath::parse(&by_digest),
            RegistryPath::Manifest { reference: Reference::Digest(_), .. }
        ));
    }

    #[test]
    fn everything_outside_the_grammar_is_other() {
        let upper = HEX.to_uppercase();
        let long_name = "a".repeat(256);
        let paths = [
            "/".to_string(),
            "/v2/".to_string(),
            "/v2/_catalog".to_string(),
            format!("/v2/blobs/sha256:{HEX}"),
            format!("/v2/a/blobs/sha256:{upper}"),
            format!("/v2/a/blobs/sha256:{HEX}0"),
            format!("/v2/a/blobs/sha256:../{HEX}"),
            format!("/v2/a/blobs/sha256%3a{HEX}"),
            format!("/v2/a/blobs/sha256:{HEX}%0d%0a"),
            format!("/v2/../a/blobs/sha256:{HEX}"),
            format!("/v2/a/../b/blobs/sha256:{HEX}"),
            format!("/v2/a%2fb/blobs/sha256:{HEX}"),
            format!("/v2/A/blobs/sha256:{HEX}"),
            format!("/v2/a//b/blobs/sha256:{HEX}"),
            format!("/v2/a-/blobs/sha256:{HEX}"),
            format!("/v2/a___b/blobs/sha256:{HEX}"),
            format!("/v2/{long_name}/blobs/sha256:{HEX}"),
            format!("/v2/a/blobs/md5:{}", &HEX[..32]),
            "/v2/a/blobs/uploads/".to_string(),
            "/v2/a/blobs/uploads/1234-5678".to_string(),
            "/v2/a/manifests/-bad".to_string(),
            format!("/v2/a/manifests/{}", "t".repeat(129)),
            format!("/x/v2/a/blobs/sha256:{HEX}"),
        ];
        for path in &paths {
            assert_eq!(RegistryPath::parse(path), RegistryPath::Other, "{path}");
        }
    }

    #[test]
    fn repository_grammar() {
        for good in ["a", "a0", "a.b", "a_b", "a__b", "a---b", "library/alpine", "x/y/z-1.2"] {
            assert!(is_repository(good), "{good}");
        }
        for bad in ["", "/", "a/", "/a", ".a", "a.", "a..b", "a._b", "a___b", "a b", "A", "a:b"] {
            assert!(!is_repository(bad), "{bad}");
        }
    }
}

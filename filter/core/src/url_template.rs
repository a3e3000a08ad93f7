//! Blob URL templates such as `https://bucket.s3.eu-west-3.amazonaws.com/containers/images/{digest}`.
//!
//! A template is checked once, at configuration time. At request time only validated parts (a
//! [`Digest`] and a repository that passed the OCI grammar) are placed into it, so a `Location`
//! can never carry CR/LF, `..` or anything else a client typed outside the grammar.

use crate::digest::Digest;
use std::fmt;

/// The placeholders a template may contain, without their braces.
pub const PLACEHOLDERS: [&str; 4] = ["digest", "algorithm", "encoded", "repository"];

/// `{a}, {b}, ...`: how messages list placeholders.
pub fn braced(names: &[&str]) -> String {
    names.iter().map(|name| format!("{{{name}}}")).collect::<Vec<_>>().join(", ")
}

/// A blob URL template, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    text: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Digest,
    Algorithm,
    Encoded,
    Repository,
}

/// Why a template is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// Not `http://` or `https://` followed by a host.
    NotHttp,
    /// Whitespace, control characters, or characters that do not belong in a URL.
    BadCharacter(char),
    /// A `{name}` that is not one of the known placeholders.
    UnknownPlaceholder(String),
    /// A `{` without `}`, or a `}` without `{`.
    UnbalancedBrace,
    /// `{digest}` is required: it is what makes the URL content-addressed.
    MissingDigest,
    /// A `{...}` outside the path: in the host, the query or the fragment (a placeholder in a
    /// fragment never reaches the mirror; one in the host or query is not what the filter
    /// validates a URL for).
    PlaceholderOutsidePath,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::NotHttp => f.write_str("must start with http:// or https:// and a host"),
            TemplateError::BadCharacter(c) => write!(f, "contains the character {c:?}"),
            TemplateError::UnknownPlaceholder(name) => {
                write!(f, "unknown placeholder {{{name}}} (known: {})", braced(&PLACEHOLDERS))
            }
            TemplateError::UnbalancedBrace => f.write_str("has an unbalanced '{' or '}'"),
            TemplateError::MissingDigest => f.write_str("must contain {digest}"),
            TemplateError::PlaceholderOutsidePath => f.write_str(
                "placeholders may only appear in the path (not the host, query or fragment)",
            ),
        }
    }
}

impl UrlTemplate {
    /// Parses and validates a template.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if let Some(c) = text.chars().find(|c| !is_url_char(*c)) {
            return Err(TemplateError::BadCharacter(c));
        }
        let after_scheme = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
            .ok_or(TemplateError::NotHttp)?;
        let host = after_scheme.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') || host.contains('@') {
            return Err(TemplateError::NotHttp);
        }
        // Placeholders are read before their place is checked, so a typo is named as a typo
        // wherever it is.
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    pieces.push(Piece::Literal(rest.to_string()));
                    rest = "";
                }
                Some(at) => {
                    let (literal, brace) = rest.split_at(at);
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(literal.to_string()));
                    }
                    let inner = brace.strip_prefix('{').ok_or(TemplateError::UnbalancedBrace)?;
                    let (name, after) =
                        inner.split_once('}').ok_or(TemplateError::UnbalancedBrace)?;
                    pieces.push(match name {
                        "digest" => Piece::Digest,
                        "algorithm" => Piece::Algorithm,
                        "encoded" => Piece::Encoded,
                        "repository" => Piece::Repository,
                        other if other.contains('{') => return Err(TemplateError::UnbalancedBrace),
                        other => return Err(TemplateError::UnknownPlaceholder(other.to_string())),
                    });
                    rest = after;
                }
            }
        }
        let after_path = after_scheme.get(host.len()..).unwrap_or_default();
        let after_path = after_path.find(['?', '#']).map_or("", |at| &after_path[at..]);
        if host.contains(['{', '}']) || after_path.contains(['{', '}']) {
            return Err(TemplateError::PlaceholderOutsidePath);
        }
        if !pieces.contains(&Piece::Digest) {
            return Err(TemplateError::MissingDigest);
        }
        Ok(UrlTemplate { text: text.to_string(), pieces })
    }

    /// The URL of a blob. Both inputs are validated types or grammar-checked text, so the result
    /// is a well-formed URL built only from the operator's template and safe characters.
    pub fn render(&self, repository: &str, digest: Digest<'_>) -> String {
        let mut url =
            String::with_capacity(self.text.len() + digest.as_str().len() + repository.len());
        for piece in &self.pieces {
            url.push_str(match piece {
                Piece::Literal(text) => text,
                Piece::Digest => digest.as_str(),
                Piece::Algorithm => digest.algorithm().as_str(),
                Piece::Encoded => digest.encoded(),
                Piece::Repository => repository,
            });
        }
        url
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Printable ASCII that may appear in a URL (RFC 3986 unreserved, reserved and `%`), plus braces.
fn is_url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%{}".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn renders_every_placeholder() {
        let t =
            UrlTemplate::parse("https://b.example/{repository}/{algorithm}/{encoded}/{digest}?x=1")
                .unwrap();
        let digest = Digest::parse(D).unwrap();
        assert_eq!(
            t.render("library/alpine", digest),
            format!("https://b.example/library/alpine/sha256/{}/{D}?x=1", &D[7..])
        );
    }

    #[test]
    fn refuses_bad_templates() {
        let cases = [
            ("ftp://x/{digest}", TemplateError::NotHttp),
            ("http:///{digest}", TemplateError::NotHttp),
            ("https://user@x/{digest}", TemplateError::NotHttp),
            ("x/{digest}", TemplateError::NotHttp),
            ("https://x/{encoded}", TemplateError::MissingDigest),
            ("https://x/{digest", TemplateError::UnbalancedBrace),
            ("https://x/digest}", TemplateError::UnbalancedBrace),
            ("https://x/{{digest}}", TemplateError::UnbalancedBrace),
            ("https://x/{region}/{digest}", TemplateError::UnknownPlaceholder("region".into())),
            ("https://{digest}.x/", TemplateError::PlaceholderOutsidePath),
            // A typo is named as such wherever it is.
            ("https://{regoin}.x/{digest}", TemplateError::UnknownPlaceholder("regoin".into())),
            ("https://x/{digest}?v={regoin}", TemplateError::UnknownPlaceholder("regoin".into())),
            ("http://h#{digest}", TemplateError::PlaceholderOutsidePath),
            ("http://h/b?d={digest}", TemplateError::PlaceholderOutsidePath),
            ("http://h/{digest}#{encoded}", TemplateError::PlaceholderOutsidePath),
            ("https://x/{digest}\r\nSet-Cookie: a", TemplateError::BadCharacter('\r')),
            ("https://x/ {digest}", TemplateError::BadCharacter(' ')),
            ("https://x/é/{digest}", TemplateError::BadCharacter('é')),
        ];
        for (text, want) in cases {
            assert_eq!(UrlTemplate::parse(text), Err(want), "{text}");
        }
    }
}

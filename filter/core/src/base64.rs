//! Standard base64 (RFC 4648, with padding), the encoding etcd's JSON gateway uses for keys and
//! values. Decoding is strict: a length that is not a multiple of four, a byte outside the
//! alphabet, padding anywhere but at the end, or bits left over in the last group is refused.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `bytes` in base64.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let [a, b, c] = [0, 1, 2].map(|i| group.get(i).copied().unwrap_or(0));
        let word = u32::from(a) << 16 | u32::from(b) << 8 | u32::from(c);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(symbol(word >> shift));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The bytes `text` encodes, or `None` if it is not strict base64.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let groups = text.len() / 4;
    for (index, group) in text.chunks(4).enumerate() {
        let padding = group.iter().rev().take_while(|&&b| b == b'=').count();
        if padding > 2 || (padding > 0 && index + 1 != groups) {
            return None;
        }
        let mut word = 0u32;
        for &byte in group.iter().take(4 - padding) {
            word = word << 6 | u32::from(value(byte)?);
        }
        word <<= 6 * padding as u32;
        let bytes = [(word >> 16) as u8, (word >> 8) as u8, word as u8];
        let kept = 3 - padding;
        // Bits of the last character that no kept byte uses must be zero (one encoding only).
        if bytes.iter().skip(kept).any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(bytes.get(..kept).unwrap_or_default());
    }
    Some(out)
}

/// The character of the low six bits of `bits`.
fn symbol(bits: u32) -> char {
    char::from(ALPHABET.get((bits & 0x3f) as usize).copied().unwrap_or(b'A'))
}

fn value(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn round_trips_the_rfc_vectors_and_every_length() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).as_deref(), Some(plain.as_bytes()));
        }
        let bytes: Vec<u8> = (0..=255).collect();
        for len in 0..bytes.len() {
            let slice = &bytes[..len];
            assert_eq!(decode(&encode(slice)).as_deref(), Some(slice), "{len} bytes");
        }
    }

    #[test]
    fn refuses_anything_but_strict_base64() {
        for bad in
            ["Zg", "Zg=", "Zg===", "Z===", "Zh==", "Zm9=", "Zg==Zg==", "Zm9v\n", "Zm-v", "Zm_v"]
        {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}

//! A header map as the proxy-wasm ABI serializes it (`proxy_get_header_map_pairs`): one
//! host call brings every header, and the picker reads the few it needs from it in place.
//!
//! The format: the pair count (u32, little-endian), then each pair's key and value
//! lengths (u32 each), then each key and value, each followed by a NUL.

/// The headers of one map, borrowed from the host's serialization.
#[derive(Debug, Default)]
pub struct HeaderMap<'a> {
    pairs: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> HeaderMap<'a> {
    /// The pairs in `bytes`; a map that does not add up (which no host sends) reads as
    /// far as it does.
    pub fn parse(bytes: &'a [u8]) -> HeaderMap<'a> {
        let word = |at: usize| bytes.get(at..at + 4).and_then(|w| w.try_into().ok()).map(u32::from_le_bytes);
        let Some(count) = word(0) else { return HeaderMap::default() };
        let count = count as usize;
        // Each pair takes 8 bytes of lengths: a count beyond that is not believed.
        let count = count.min(bytes.len() / 8);
        let mut pairs = Vec::with_capacity(count);
        let mut data = 4 + count * 8;
        for i in 0..count {
            let (Some(key_len), Some(value_len)) = (word(4 + i * 8), word(8 + i * 8)) else { break };
            let key_end = data.saturating_add(key_len as usize);
            let value_start = key_end.saturating_add(1);
            let value_end = value_start.saturating_add(value_len as usize);
            let (Some(key), Some(value)) = (bytes.get(data..key_end), bytes.get(value_start..value_end)) else { break };
            pairs.push((key, value));
            data = value_end.saturating_add(1);
        }
        HeaderMap { pairs }
    }

    /// The first value of `name`, as bytes (a client may send any). Names match in any
    /// case, as HTTP's do: Envoy's maps hold them in lower case, other hosts need not.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| *v)
    }

    /// The first value of `name` as text; bytes that are not UTF-8 become U+FFFD, which no
    /// path, objective, address or token the picker knows contains.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_the_first_value_of_a_name() {
        let bytes = serialize(&[(b":path", b"/v1/chat/completions"), (b"x-a", b"1"), (b"x-a", b"2"), (b"x-empty", b"")]);
        let map = HeaderMap::parse(&bytes);
        assert_eq!(map.text(":path").as_deref(), Some("/v1/chat/completions"));
        assert_eq!(map.get("x-a"), Some(&b"1"[..]));
        assert_eq!(map.get("x-empty"), Some(&b""[..]));
        assert!(map.contains("x-empty") && !map.contains("x-b"));
        assert_eq!(map.get("X-A"), Some(&b"1"[..]), "names in any case");
    }

    #[test]
    fn values_that_are_not_utf8_are_read_not_refused() {
        let bytes = serialize(&[(b"x-gateway-inference-objective", b"caf\xe9")]);
        assert_eq!(HeaderMap::parse(&bytes).text("x-gateway-inference-objective").as_deref(), Some("caf\u{fffd}"));
    }

    #[test]
    fn a_map_that_does_not_add_up_reads_as_far_as_it_does() {
        let bytes = serialize(&[(b"a", b"1"), (b"b", b"2")]);
        for cut in 0..bytes.len() {
            let _ = HeaderMap::parse(&bytes[..cut]);
        }
        assert_eq!(HeaderMap::parse(&bytes[..bytes.len() - 3]).get("b"), None);
        assert_eq!(HeaderMap::parse(&bytes[..bytes.len() - 3]).get("a"), Some(&b"1"[..]));
        let mut lying = bytes.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let _ = HeaderMap::parse(&lying);
        let mut long = bytes;
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderMap::parse(&long).get("a"), None);
    }
}

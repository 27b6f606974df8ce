//! The proxy-wasm ABI 0.2.1 numbers, as proxy-wasm-cpp-host and the Rust SDK define them.

/// `proxy_status_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

pub const MAP_REQUEST_HEADERS: u32 = 0;
pub const MAP_REQUEST_TRAILERS: u32 = 1;
pub const MAP_RESPONSE_HEADERS: u32 = 2;
pub const MAP_RESPONSE_TRAILERS: u32 = 3;
pub const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
pub const MAP_HTTP_CALL_RESPONSE_TRAILERS: u32 = 7;

pub const BUFFER_REQUEST_BODY: u32 = 0;
pub const BUFFER_RESPONSE_BODY: u32 = 1;
pub const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
pub const BUFFER_VM_CONFIGURATION: u32 = 6;
pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;

pub const ACTION_CONTINUE: u32 = 0;

pub type HeaderMap = Vec<(String, String)>;

/// The ABI's header-map serialization: count, (key length, value length)…, then each key
/// and value followed by a NUL.
pub fn serialize_map(map: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend((map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend((k.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend(k.as_bytes());
        out.push(0);
        out.extend(v.as_bytes());
        out.push(0);
    }
    out
}

pub fn deserialize_map(bytes: &[u8]) -> Option<HeaderMap> {
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let n = word(0)?;
    let mut sizes = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        sizes.push((word(4 + 8 * i)?, word(8 + 8 * i)?));
    }
    let mut at = 4 + 8 * n;
    let mut out = Vec::with_capacity(n);
    for (kl, vl) in sizes {
        let k = std::str::from_utf8(bytes.get(at..at + kl)?).ok()?.to_string();
        at += kl + 1;
        let v = std::str::from_utf8(bytes.get(at..at + vl)?).ok()?.to_string();
        at += vl + 1;
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip() {
        let m = vec![(":path".to_string(), "/v1".to_string()), ("x".to_string(), String::new())];
        assert_eq!(deserialize_map(&serialize_map(&m)), Some(m));
        assert_eq!(deserialize_map(&[1, 0, 0, 0]), None);
    }
}

//! The body reader against serde_json: it accepts what a JSON reader accepts as an object
//! with a string `model`, finds that model, and rejects the rest with the right code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The top-level keys of a JSON object, duplicates included (serde_json's `Value` keeps
/// only the last of two equal keys; the picker refuses such a body).
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

fuzz_target!(|data: &[u8]| {
    let got = epp::request::parse("/v1/chat/completions", data, 4096);
    // Where a conversation's first user message ends, in the prompt and in any bytes: never
    // past the bytes looked at, and just after the message's closing brace (or bracket: serde
    // reads a struct from an array too).
    let prompt = got.as_ref().map_or(&[][..], |b| b.prompt.bytes);
    // The body's one scan finds it where a scan of the prompt's bytes alone does.
    if let Ok(body) = &got {
        assert_eq!(body.prompt.first_user_end, epp::request::first_user_message_end(prompt, prompt.len()), "{data:?}");
    }
    for bytes in [prompt, data] {
        if let Some(end) = epp::request::first_user_message_end(bytes, 512) {
            assert!(end <= bytes.len().min(512) && matches!(bytes[end - 1], b'}' | b']'), "{end} in {bytes:?}");
        }
    }
    let oracle = serde_json::from_slice::<Value>(data);
    match oracle {
        Ok(Value::Object(map)) => {
            let twice = serde_json::from_slice::<Keys>(data).map(|k| k.0.iter().filter(|k| *k == "model").count() > 1).unwrap_or(false);
            match (map.get("model"), &got) {
                _ if twice => assert_eq!(got.as_ref().map_err(|r| r.code), Err("invalid_json"), "two `model` keys"),
                (Some(Value::String(m)), _) if !m.is_empty() => {
                    assert_eq!(got.as_ref().ok().and_then(|b| b.model.as_deref()), Some(m.as_str()), "{got:?}")
                }
                (None | Some(Value::Null), _) => assert_eq!(got.as_ref().map_err(|r| r.code).err(), Some("missing_model"), "{got:?}"),
                (Some(_), _) => assert_eq!(got.as_ref().map_err(|r| r.code).err(), Some("invalid_model"), "{got:?}"),
            }
        }
        Ok(_) => assert_eq!(got.map_err(|r| r.code).err(), Some("invalid_json")),
        // A lone surrogate escape (a high one not followed by a low one reads as "unexpected
        // end of hex escape"), or a number past f64's range (`1e999`), outside `model` is
        // JSON a model server (Python's json) reads; serde_json's Value refuses it, the
        // picker skips it unread.
        Err(e) if ["surrogate", "end of hex escape", "out of range"].iter().any(|m| e.to_string().contains(m)) => {}
        Err(_) => assert!(got.is_err(), "accepted what a JSON reader refuses: {got:?}"),
    }
});

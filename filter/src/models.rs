//! `/v1/models`: the base models and LoRA adapters a server has registered.

use serde::Deserialize;

#[derive(Deserialize)]
struct List {
    data: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    id: String,
    /// vLLM sets `parent` to the base model on LoRA adapters.
    #[serde(default)]
    parent: Option<String>,
}

/// (base models, adapters) of an OpenAI `/v1/models` answer.
pub fn parse(body: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let list: List = serde_json::from_slice(body).map_err(|e| format!("bad /v1/models answer: {e}"))?;
    let mut base = Vec::new();
    let mut adapters = Vec::new();
    for e in list.data {
        match e.parent {
            Some(p) if p != e.id => adapters.push(e.id),
            _ => base.push(e.id),
        }
    }
    // Outside data: at most as many names as a metrics page gives.
    base.truncate(crate::engine::MAX_NAMES);
    adapters.truncate(crate::engine::MAX_NAMES);
    Ok((base, adapters))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn splits_base_models_and_adapters() {
        let body = br#"{"object":"list","data":[
            {"id":"meta-llama/Llama-3.1-8B-Instruct","object":"model","root":"meta-llama/Llama-3.1-8B-Instruct","parent":null},
            {"id":"sql-lora","object":"model","root":"/adapters/sql","parent":"meta-llama/Llama-3.1-8B-Instruct"}]}"#;
        let (base, adapters) = parse(body).unwrap();
        assert_eq!(base, vec!["meta-llama/Llama-3.1-8B-Instruct"]);
        assert_eq!(adapters, vec!["sql-lora"]);
        assert!(parse(b"<html>").is_err());
        assert!(parse(br#"{"data":[{"name":"x"}]}"#).is_err());
    }
}

//! What a checkpoint says about generating with it, read once with the model by every binding:
//! the end-of-sequence set, BOS, the chat template and the sampling a model asks for.
//!
//! Sources, as transformers and llama.cpp read them:
//! - a Hugging Face folder: config.json (`eos_token_id`, `bos_token_id`; in `ModelConfig`),
//!   generation_config.json (`eos_token_id` int or list, `bos_token_id`, `do_sample`,
//!   `temperature`, `top_k`, `top_p`, `min_p`, `repetition_penalty`), tokenizer_config.json
//!   (`eos_token` / `bos_token` by name or `{content}`, `chat_template` a string or a list of
//!   `{name, template}`) and chat_template.jinja (transformers' own file since 4.43, which wins);
//! - a GGUF file: `tokenizer.ggml.eos_token_id`, `eot_token_id` and `eom_token_id` (llama.cpp
//!   ends generation at each), `bos_token_id`, `add_bos_token`, `tokenizer.chat_template`.
//!
//! A value of the wrong type is a Format error naming file and key, never a silent default.

use crate::error::{Error, Result};
use crate::loader::{GgufFile, GgufValue};
use crate::model::ModelConfig;
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Tokens that end generation, sorted and distinct.
    pub eos: Vec<u32>,
    pub bos: Option<u32>,
    /// `encode` puts BOS first when the ids do not start with it (a GGUF file's
    /// `add_bos_token` without an embedded tokenizer.json; a tokenizer.json's post-processor
    /// adds BOS itself).
    pub add_bos: bool,
    pub chat_template: Option<String>,
    /// The BOS and EOS tokens' text, for chat templates.
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Whether the model asks for sampling (generation_config.json `do_sample`); the values
    /// below apply then, as in transformers.
    pub do_sample: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

/// A JSON file's text as an object (an empty text is an empty object: the file is absent).
fn object(file: &str, text: Option<&str>) -> Result<serde_json::Map<String, Value>> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else { return Ok(Default::default()) };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => crate::bail!(Format, "{file} is not a JSON object (it is {})", json_kind(&other)),
        Err(e) => crate::bail!(Format, "{file}: {e}"),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn token_id(file: &str, key: &str, v: &Value, vocab: usize) -> Result<u32> {
    v.as_u64()
        .filter(|&id| (id as usize) < vocab)
        .map(|id| id as u32)
        .ok_or_else(|| Error::Format(format!("{file}: {key} must be a token id below the vocabulary size {vocab}, got {v}")))
}

/// A token given by name (`"</s>"`) or as `{"content": "</s>", ...}`.
fn token_text(file: &str, key: &str, v: Option<&Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => crate::bail!(Format, "{file}: {key} has no string content"),
        },
        Some(other) => crate::bail!(Format, "{file}: {key} must be a token's text, got {}", json_kind(other)),
    }
}

fn number(file: &str, key: &str, v: Option<&Value>) -> Result<Option<f32>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(x) => match x.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f as f32)),
            _ => crate::bail!(Format, "{file}: {key} must be a number, got {x}"),
        },
    }
}

/// The id of a token's text in a tokenizer.json (vocabulary or added tokens).
fn id_in_tokenizer(tokenizer: &Value, text: &str) -> Option<u32> {
    let added = tokenizer
        .get("added_tokens")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|t| t.get("content").and_then(Value::as_str) == Some(text)).and_then(|t| t.get("id")).and_then(Value::as_u64));
    added.or_else(|| tokenizer.get("model")?.get("vocab")?.get(text)?.as_u64()).map(|id| id as u32)
}

impl GenerationDefaults {
    /// A Hugging Face folder's defaults from its files' texts (`None`: the file is absent).
    pub fn from_hf(
        config: &ModelConfig,
        tokenizer_json: Option<&str>,
        generation_config: Option<&str>,
        tokenizer_config: Option<&str>,
        chat_template_file: Option<&str>,
    ) -> Result<GenerationDefaults> {
        let vocab = config.vocab;
        let gen_file = "generation_config.json";
        let tok_file = "tokenizer_config.json";
        let generation = object(gen_file, generation_config)?;
        let tok_cfg = object(tok_file, tokenizer_config)?;
        let mut d = GenerationDefaults { eos: config.eos_tokens.clone(), bos: config.bos_token, ..Default::default() };
        match generation.get("eos_token_id") {
            None | Some(Value::Null) => {}
            Some(Value::Array(ids)) => {
                for v in ids {
                    d.eos.push(token_id(gen_file, "eos_token_id", v, vocab)?);
                }
            }
            Some(v) => d.eos.push(token_id(gen_file, "eos_token_id", v, vocab)?),
        }
        if let Some(v) = generation.get("bos_token_id").filter(|v| !v.is_null()) {
            d.bos = d.bos.or(Some(token_id(gen_file, "bos_token_id", v, vocab)?));
        }
        d.do_sample = match generation.get("do_sample") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => crate::bail!(Format, "{gen_file}: do_sample must be true or false, got {v}"),
        };
        d.temperature = number(gen_file, "temperature", generation.get("temperature"))?;
        d.top_p = number(gen_file, "top_p", generation.get("top_p"))?;
        d.min_p = number(gen_file, "min_p", generation.get("min_p"))?;
        d.repetition_penalty = number(gen_file, "repetition_penalty", generation.get("repetition_penalty"))?;
        d.top_k = match generation.get("top_k") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|&k| k <= u32::MAX as u64)
                    .map(|k| k as usize)
                    .ok_or_else(|| Error::Format(format!("{gen_file}: top_k must be a whole number from 0 to 2^32 - 1, got {v}")))?,
            ),
        };
        // The sampler's own ranges (one home), checked here so a bad file is named at load
        // rather than blamed on the caller at the first generation.
        let sampling = crate::model::sampler::SamplingParams {
            temperature: d.temperature.unwrap_or(0.0),
            top_p: d.top_p.unwrap_or(1.0),
            min_p: d.min_p.unwrap_or(0.0),
            repetition_penalty: d.repetition_penalty.unwrap_or(1.0),
            ..Default::default()
        };
        sampling.validate().map_err(|e| match e {
            Error::InvalidArgument(m) => Error::Format(format!("{gen_file}: {m}")),
            other => other,
        })?;
        d.bos_token = token_text(tok_file, "bos_token", tok_cfg.get("bos_token"))?;
        d.eos_token = token_text(tok_file, "eos_token", tok_cfg.get("eos_token"))?;
        if let (Some(name), Some(tok)) = (&d.eos_token, tokenizer_json) {
            let tok: Value = serde_json::from_str(tok).map_err(|e| Error::Format(format!("tokenizer.json: {e}")))?;
            d.eos.extend(id_in_tokenizer(&tok, name).filter(|&id| (id as usize) < vocab));
        }
        d.chat_template = match (chat_template_file, tok_cfg.get("chat_template")) {
            (Some(t), _) => Some(t.to_string()),
            (None, None | Some(Value::Null)) => None,
            (None, Some(Value::String(t))) => Some(t.clone()),
            (None, Some(Value::Array(list))) => {
                // Several named templates: "default" is the one transformers applies.
                let named = |n: &str| list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(n));
                let t = named("default").and_then(|t| t.get("template")).and_then(Value::as_str);
                Some(t.ok_or_else(|| Error::Format(format!("{tok_file}: chat_template lists no 'default' template")))?.to_string())
            }
            (None, Some(other)) => crate::bail!(Format, "{tok_file}: chat_template must be a string, got {}", json_kind(other)),
        };
        d.finish();
        Ok(d)
    }

    /// A GGUF file's defaults from its metadata.
    pub fn from_gguf(config: &ModelConfig, file: &GgufFile<'_>) -> Result<GenerationDefaults> {
        let vocab = config.vocab;
        let id = |key: &str| -> Result<Option<u32>> {
            match file.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .filter(|&id| (id as usize) < vocab)
                    .map(|id| Some(id as u32))
                    .ok_or_else(|| Error::Format(format!("{key} must be a token id below the vocabulary size {vocab}"))),
            }
        };
        let mut d = GenerationDefaults { eos: config.eos_tokens.clone(), bos: config.bos_token, ..Default::default() };
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            d.eos.extend(id(key)?);
        }
        d.bos = d.bos.or(id("tokenizer.ggml.bos_token_id")?);
        let embedded = file.get("tokenizer.huggingface.json").is_some();
        d.add_bos = !embedded
            && match file.get("tokenizer.ggml.add_bos_token") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| Error::Format("tokenizer.ggml.add_bos_token must be a boolean".into()))?,
            };
        d.chat_template = match file.get("tokenizer.chat_template") {
            None => None,
            Some(GgufValue::String(t)) => Some(t.clone()),
            Some(_) => crate::bail!(Format, "tokenizer.chat_template must be a string"),
        };
        let text = |id: Option<u32>| -> Option<String> {
            match (id, file.get("tokenizer.ggml.tokens")) {
                (Some(id), Some(GgufValue::Array(tokens))) => match tokens.get(id as usize) {
                    Some(GgufValue::String(s)) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            }
        };
        d.bos_token = text(d.bos);
        d.eos_token = text(id("tokenizer.ggml.eos_token_id")?.or(config.eos_tokens.first().copied()));
        d.finish();
        Ok(d)
    }

    fn finish(&mut self) {
        self.eos.sort_unstable();
        self.eos.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        ModelConfig::from_hf_json(
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 16, "eos_token_id": 2, "bos_token_id": 1}"#,
        )
        .unwrap()
    }

    #[test]
    fn hf_files_join_their_eos_and_read_sampling() {
        let tok = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "<s>": 1, "</s>": 2}}, "added_tokens": [{"id": 9, "content": "<|end|>", "special": true}]}"#;
        let gen = r#"{"eos_token_id": [2, 7], "do_sample": true, "temperature": 0.6, "top_k": 20}"#;
        let tc = r#"{"eos_token": {"content": "<|end|>"}, "bos_token": "<s>", "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#;
        let d = GenerationDefaults::from_hf(&config(), Some(tok), Some(gen), Some(tc), None).unwrap();
        assert_eq!(d.eos, vec![2, 7, 9]);
        assert_eq!((d.bos, d.do_sample, d.temperature, d.top_k, d.top_p), (Some(1), true, Some(0.6), Some(20), None));
        assert_eq!(d.chat_template.as_deref(), Some("D"));
        assert_eq!(d.bos_token.as_deref(), Some("<s>"));
        let d = GenerationDefaults::from_hf(&config(), Some(tok), None, Some(tc), Some("J")).unwrap();
        assert_eq!(d.chat_template.as_deref(), Some("J"));
    }

    #[test]
    fn wrong_types_are_errors_naming_file_and_key() {
        let cases = [
            (Some(r#""a string""#), None, "generation_config.json is not a JSON object"),
            (Some(r#"{"top_k": 1e30}"#), None, "top_k"),
            (Some(r#"{"top_k": [1]}"#), None, "top_k"),
            (Some(r#"{"eos_token_id": 4294967297}"#), None, "eos_token_id"),
            (Some(r#"{"do_sample": "yes"}"#), None, "do_sample"),
            // Numbers the sampler refuses, named with their file at load.
            (Some(r#"{"temperature": -1}"#), None, "generation_config.json: temperature must be a finite number >= 0"),
            (Some(r#"{"top_p": 0}"#), None, "generation_config.json: top_p must be in (0, 1]"),
            (Some(r#"{"min_p": 1.5}"#), None, "generation_config.json: min_p must be in [0, 1]"),
            (Some(r#"{"repetition_penalty": 0}"#), None, "generation_config.json: repetition_penalty must be a finite number > 0"),
            (None, Some("[1, 2]"), "tokenizer_config.json is not a JSON object"),
            (None, Some(r#"{"chat_template": 5}"#), "chat_template"),
            (None, Some(r#"{"eos_token": 5}"#), "eos_token"),
        ];
        for (gen, tc, want) in cases {
            let err = GenerationDefaults::from_hf(&config(), None, gen, tc, None).unwrap_err();
            assert!(matches!(&err, Error::Format(m) if m.contains(want)), "{err} (want {want})");
        }
    }
}

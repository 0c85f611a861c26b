//! A float Llama checkpoint in Hugging Face form, the input of binllm's post-training
//! quantizer: config.json, every tensor in float32 under its Hugging Face name, and the
//! tokenizer and generation files to write beside the quantized weights.
//!
//! It is read through the loader's own facts, so PTQ and inference cannot disagree about them:
//! `ModelConfig` (config.json or GGUF metadata, with the same refusals), `names::TENSOR_NAMES`
//! (GGUF <-> Hugging Face names), `load::hf_weight_files` (shard listing, with its guard against
//! names outside the folder), `GenerationDefaults` and `tokenizer::hf_json_from_gguf`.
//! Invariants:
//! - Only float Llama models: BitNet-style or binllm-quantized checkpoints, and models with
//!   sub-norms, are `Unsupported` ("already quantized").
//! - Strict like `load`: a missing or mis-shaped tensor, or one the model does not use, is an
//!   error naming it.
//! - GGUF Q and K rows stored for llama.cpp's interleaved RoPE are un-permuted
//!   (`export::rope_row_order`), so the folder runs with the NeoX RoPE of Hugging Face configs.

use super::config::{LinearKind, ModelConfig, RopeScaling, RopeStyle};
use super::defaults::GenerationDefaults;
use super::export::{reorder_rows, rope_row_order};
use super::load::{hf_weight_files, map_file, read_optional, CARRY_NOTHING};
use super::names::{gguf_name, hf_name, EMBED, LM_HEAD, NORM};
use crate::error::{Error, Result};
use crate::loader::{GgufFile, SafetensorsFile, TensorView};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// (Hugging Face name, numpy-order shape, float32 values), in the model's order.
pub type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// A float model in Hugging Face form.
pub struct FloatSource {
    /// config.json: the folder's own object (less any `quantization_config`), or one written
    /// from GGUF metadata.
    pub config: Map<String, Value>,
    pub tensors: NamedTensors,
    /// (file name, text) of tokenizer.json and the other files a folder keeps beside it.
    pub files: Vec<(String, String)>,
}

impl FloatSource {
    /// config.json's text.
    pub fn config_json(&self) -> String {
        Value::Object(self.config.clone()).to_string()
    }
}

/// The files of a Hugging Face folder that PTQ carries into its output, beside the weights.
const CARRIED_FILES: &[&str] = &["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "chat_template.jinja"];

/// Every tensor a float Llama of config `c` has: (Hugging Face name, shape), in model order.
fn llama_tensors(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, hd) = (c.hidden, c.head_dim);
    let mut out = vec![(EMBED.to_string(), vec![c.vocab, d])];
    if !c.tie_embeddings {
        out.push((LM_HEAD.to_string(), vec![c.vocab, d]));
    }
    out.push((NORM.to_string(), vec![d]));
    for i in 0..c.layers {
        for (part, shape) in [
            ("input_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![c.heads * hd, d]),
            ("self_attn.k_proj.weight", vec![c.kv_heads * hd, d]),
            ("self_attn.v_proj.weight", vec![c.kv_heads * hd, d]),
            ("self_attn.o_proj.weight", vec![d, c.heads * hd]),
            ("post_attention_layernorm.weight", vec![d]),
            ("mlp.gate_proj.weight", vec![c.intermediate, d]),
            ("mlp.up_proj.weight", vec![c.intermediate, d]),
            ("mlp.down_proj.weight", vec![d, c.intermediate]),
        ] {
            out.push((hf_name(Some(i), part), shape));
        }
    }
    out
}

fn already_quantized(path: &Path, what: &str) -> Error {
    Error::Unsupported(format!("{} is already quantized ({what}); quantize starts from a float model", path.display()))
}

/// Refuses what PTQ does not start from: ternary linears, sub-norms, other architectures.
fn require_float_llama(path: &Path, c: &ModelConfig) -> Result<()> {
    if c.linear == LinearKind::BitNet {
        return Err(already_quantized(path, "BitNet-style ternary linears"));
    }
    if c.architecture != "llama" || c.sub_norms.any() {
        crate::bail!(Unsupported, "{}: binllm quantize reads float Llama models (this one is {} with sub-norms)", path.display(), c.architecture);
    }
    Ok(())
}

/// The tensors `wanted` from `by_name`, in float32; `rename` gives each one's name in the file
/// and `rows` its row order (None: as stored). Any tensor of the file left unread is refused.
fn collect(
    by_name: &HashMap<&str, &TensorView<'_>>,
    wanted: Vec<(String, Vec<usize>)>,
    rename: impl Fn(&str) -> String,
    rows: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<NamedTensors> {
    let mut out = Vec::with_capacity(wanted.len());
    let mut read = std::collections::HashSet::new();
    for (name, shape) in wanted {
        let file_name = rename(&name);
        let t = by_name.get(file_name.as_str()).ok_or_else(|| Error::Format(format!("missing tensor '{file_name}'")))?;
        if t.shape != shape {
            crate::bail!(Format, "tensor '{file_name}' has shape {:?}; expected {shape:?}", t.shape);
        }
        let values = t.to_f32()?;
        let values = match rows(&name) {
            Some(order) => reorder_rows(&values, shape[1], Some(&order)),
            None => values,
        };
        read.insert(file_name);
        out.push((name, shape, values));
    }
    let mut extra: Vec<&str> = by_name.keys().copied().filter(|n| !read.contains(*n) && !CARRY_NOTHING.iter().any(|s| n.ends_with(s))).collect();
    if let Some(first) = extra.iter().min().copied() {
        extra.sort();
        crate::bail!(Format, "tensor '{first}' is not used by a float Llama model; binllm refuses tensors it would ignore");
    }
    Ok(out)
}

/// A float in JSON by its shortest decimal form (1e-5, not the f32's 9.99999974e-6).
fn json_f32(x: f32) -> Value {
    x.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
}

/// A token id, or the list of several.
fn json_ids(ids: &[u32]) -> Option<Value> {
    match ids {
        [] => None,
        [one] => Some(Value::from(*one)),
        many => Some(Value::from(many.to_vec())),
    }
}

fn from_folder(path: &Path) -> Result<FloatSource> {
    let config_path = path.join("config.json");
    let text = read_optional(&config_path)?
        .ok_or_else(|| Error::Io(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} has no config.json", path.display()))))?;
    let mut config: Map<String, Value> = match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => crate::bail!(Format, "{} is not a JSON object", config_path.display()),
        Err(e) => crate::bail!(Format, "{}: {e}", config_path.display()),
    };
    let method = config.get("quantization_config").and_then(|q| q.get("quant_method")).and_then(Value::as_str);
    let quantized = match method {
        Some(m @ ("bitnet" | "binllm")) => Some(m.to_string()),
        _ if config.get("model_type").and_then(Value::as_str) == Some("bitnet") => Some("bitnet".to_string()),
        _ => None,
    };
    if let Some(what) = quantized {
        return Err(already_quantized(path, &what));
    }
    let c = ModelConfig::from_hf_json(&text)?;
    require_float_llama(path, &c)?;
    let maps = hf_weight_files(path)?.iter().map(|p| map_file(p)).collect::<Result<Vec<_>>>()?;
    let files = maps.iter().map(|m| SafetensorsFile::parse(m)).collect::<Result<Vec<_>>>()?;
    let mut by_name = HashMap::new();
    for f in &files {
        for t in &f.tensors {
            if by_name.insert(t.name.as_str(), t).is_some() {
                crate::bail!(Format, "tensor '{}' appears in more than one file", t.name);
            }
        }
    }
    let tensors = collect(&by_name, llama_tensors(&c), |n| n.to_string(), |_| None)?;
    let mut carried = Vec::new();
    for name in CARRIED_FILES {
        if let Some(text) = read_optional(&path.join(name))? {
            carried.push((name.to_string(), text));
        }
    }
    if !carried.iter().any(|(n, _)| n == "tokenizer.json") {
        return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} has no tokenizer.json", path.display()))));
    }
    config.remove("quantization_config");
    Ok(FloatSource { config, tensors, files: carried })
}

/// The config and tensors of a GGUF file in Hugging Face form.
fn gguf_model(path: &Path, file: &GgufFile<'_>) -> Result<(ModelConfig, Map<String, Value>, NamedTensors)> {
    let c = ModelConfig::from_gguf(file)?;
    require_float_llama(path, &c)?;
    if let RopeScaling::FreqFactors(_) = c.rope_scaling {
        crate::bail!(
            Unsupported,
            "{}: RoPE frequency factors (rope_freqs.weight) have no Hugging Face config.json form; quantize this model from its Hugging Face folder",
            path.display()
        );
    }
    let by_name = file.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let interleaved = c.rope_style == RopeStyle::Interleaved;
    let rows = |name: &str| match name.rsplit_once("self_attn.") {
        Some((_, "q_proj.weight")) if interleaved => Some(rope_row_order(c.heads, c.head_dim, RopeStyle::Interleaved, RopeStyle::NeoX)),
        Some((_, "k_proj.weight")) if interleaved => Some(rope_row_order(c.kv_heads, c.head_dim, RopeStyle::Interleaved, RopeStyle::NeoX)),
        _ => None,
    };
    let rename = |name: &str| match name.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) {
        Some((i, part)) => gguf_name(i.parse().ok(), part),
        None => gguf_name(None, name),
    };
    let tensors = collect(&by_name, llama_tensors(&c), rename, rows)?;
    let mut config = Map::new();
    let mut set = |k: &str, v: Value| {
        config.insert(k.to_string(), v);
    };
    set("architectures", Value::from(vec!["LlamaForCausalLM"]));
    set("model_type", Value::from("llama"));
    set("hidden_size", Value::from(c.hidden));
    set("intermediate_size", Value::from(c.intermediate));
    set("num_hidden_layers", Value::from(c.layers));
    set("num_attention_heads", Value::from(c.heads));
    set("num_key_value_heads", Value::from(c.kv_heads));
    set("head_dim", Value::from(c.head_dim));
    set("hidden_act", Value::from(c.activation.name()));
    set("max_position_embeddings", Value::from(c.max_positions));
    set("rms_norm_eps", json_f32(c.rms_eps));
    set("rope_theta", json_f32(c.rope_theta));
    if let RopeScaling::Linear { factor } = c.rope_scaling {
        set("rope_scaling", serde_json::json!({"rope_type": "linear", "factor": json_f32(factor)}));
    }
    set("vocab_size", Value::from(c.vocab));
    set("tie_word_embeddings", Value::from(c.tie_embeddings));
    set("torch_dtype", Value::from("float16"));
    if let Some(bos) = c.bos_token {
        set("bos_token_id", Value::from(bos));
    }
    if let Some(eos) = json_ids(&c.eos_tokens) {
        set("eos_token_id", eos);
    }
    Ok((c, config, tensors))
}

fn from_gguf(path: &Path, bytes: &[u8]) -> Result<FloatSource> {
    let file = GgufFile::parse(bytes)?;
    let (c, config, tensors) = gguf_model(path, &file)?;
    let defaults = GenerationDefaults::from_gguf(&c, &file)?;
    let mut tokenizer_config = Map::new();
    for (key, v) in [("chat_template", &defaults.chat_template), ("bos_token", &defaults.bos_token), ("eos_token", &defaults.eos_token)] {
        if let Some(v) = v {
            tokenizer_config.insert(key.to_string(), Value::from(v.as_str()));
        }
    }
    let pretty = |m: Map<String, Value>| serde_json::to_string_pretty(&Value::Object(m)).expect("a JSON map serializes");
    let mut files =
        vec![("tokenizer.json".to_string(), crate::tokenizer::hf_json_from_gguf(&file)?), ("tokenizer_config.json".to_string(), pretty(tokenizer_config))];
    if let Some(eos) = json_ids(&defaults.eos) {
        let mut generation = Map::new();
        generation.insert("eos_token_id".to_string(), eos);
        if let Some(bos) = defaults.bos {
            generation.insert("bos_token_id".to_string(), Value::from(bos));
        }
        files.push(("generation_config.json".to_string(), pretty(generation)));
    }
    Ok(FloatSource { config, tensors, files })
}

/// Reads the float Llama model at `path` (a Hugging Face folder or a GGUF file) in Hugging
/// Face form.
pub fn read_float_source(path: &Path) -> Result<FloatSource> {
    if path.is_dir() {
        return from_folder(path);
    }
    if !path.exists() {
        return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} does not exist", path.display()))));
    }
    let bytes = map_file(path)?;
    if !bytes.starts_with(b"GGUF") {
        crate::bail!(Unsupported, "{}: binllm quantize reads Hugging Face folders and GGUF files", path.display());
    }
    from_gguf(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{DType, GgufValue, GgufWriter};

    /// A llama GGUF file (hidden 8, 2 heads of 4, 1 KV head, intermediate 12, vocab 5): every
    /// value of a tensor is its row number (from 1) plus its element's position / 1000, so that row
    /// orders can be read back. `extra` adds tensors (name, length).
    fn gguf(extra: &[(&str, usize)]) -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", GgufValue::String("llama".into()));
        for (k, v) in [
            ("embedding_length", 8),
            ("block_count", 1),
            ("feed_forward_length", 12),
            ("attention.head_count", 2),
            ("attention.head_count_kv", 1),
            ("vocab_size", 5),
        ] {
            w.add_metadata(&format!("llama.{k}"), GgufValue::U32(v));
        }
        w.add_metadata("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5));
        let mut add = |name: &str, shape: &[usize]| {
            let cols = shape.get(1).copied().unwrap_or(1);
            let data: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| (i / cols + 1) as f32 + (i % cols) as f32 / 1000.0).collect();
            w.add_tensor(name, DType::F32, shape, data.iter().flat_map(|x| x.to_le_bytes()).collect()).unwrap();
        };
        add("token_embd.weight", &[5, 8]);
        add("output_norm.weight", &[8]);
        for (name, shape) in [("attn_norm", vec![8]), ("attn_q", vec![8, 8]), ("attn_k", vec![4, 8]), ("attn_v", vec![4, 8]), ("attn_output", vec![8, 8])] {
            add(&format!("blk.0.{name}.weight"), &shape);
        }
        for (name, shape) in [("ffn_norm", vec![8]), ("ffn_gate", vec![12, 8]), ("ffn_up", vec![12, 8]), ("ffn_down", vec![8, 12])] {
            add(&format!("blk.0.{name}.weight"), &shape);
        }
        for (name, len) in extra {
            add(name, &[*len]);
        }
        w.to_bytes().unwrap()
    }

    #[test]
    fn gguf_reads_back_in_hugging_face_form() {
        let bytes = gguf(&[]);
        let (_, config, tensors) = gguf_model(Path::new("m.gguf"), &GgufFile::parse(&bytes).unwrap()).unwrap();
        assert_eq!(config["num_key_value_heads"], 1);
        assert_eq!(config["head_dim"], 4);
        assert_eq!(config["tie_word_embeddings"], true);
        assert_eq!(config["rms_norm_eps"].as_f64(), Some(1e-5));
        let names: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(names[..3], ["model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"]);
        let rows = |name: &str| -> Vec<f32> {
            let (_, shape, v) = tensors.iter().find(|t| t.0 == name).unwrap();
            v.chunks(shape[1]).map(|r| r[0]).collect()
        };
        // Per head of 4 rows, llama.cpp stores rows (0, 2, 1, 3) of the Hugging Face order.
        assert_eq!(rows("model.layers.0.self_attn.q_proj.weight"), [1.0, 3.0, 2.0, 4.0, 5.0, 7.0, 6.0, 8.0]);
        assert_eq!(rows("model.layers.0.self_attn.k_proj.weight"), [1.0, 3.0, 2.0, 4.0]);
        assert_eq!(rows("model.layers.0.self_attn.v_proj.weight"), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(rows("model.layers.0.mlp.down_proj.weight").len(), 8);
    }

    #[test]
    fn gguf_tensors_the_model_does_not_use_are_refused_by_name() {
        let bytes = gguf(&[("blk.0.attn_q.bias", 8)]);
        match gguf_model(Path::new("m.gguf"), &GgufFile::parse(&bytes).unwrap()) {
            Err(Error::Format(m)) => assert!(m.contains("blk.0.attn_q.bias"), "{m}"),
            other => panic!("expected a Format error, got {:?}", other.err()),
        }
        let bytes = gguf(&[("rope_freqs.weight", 2)]);
        let freq = gguf_model(Path::new("m.gguf"), &GgufFile::parse(&bytes).unwrap());
        assert!(matches!(freq, Err(Error::Unsupported(m)) if m.contains("rope_freqs")));
    }
}

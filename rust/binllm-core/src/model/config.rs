//! Model hyper-parameters, read from a Hugging Face `config.json` or from GGUF metadata.
//!
//! Everything that changes the math (activation, sub-norms, RoPE pairing, whether linears are
//! ternary with int8 activations) is read from the file's own fields, never guessed from a
//! model's name.

use crate::error::{Error, Result};
use crate::loader::{GgufFile, GgufValue};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SiLU-gated MLP (Llama): `silu(gate) * up`.
    Silu,
    /// Squared ReLU gate (BitNet b1.58 2B4T): `relu(gate)^2 * up`.
    Relu2,
}

impl Activation {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "relu2" | "relu_squared" | "squared_relu" => Ok(Activation::Relu2),
            other => crate::bail!(Unsupported, "activation '{other}' (binllm runs silu and relu2)"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Relu2 => "relu2",
        }
    }
}

/// Which dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (i, i + head_dim / 2): Hugging Face's rotate-half (GPT-NeoX).
    NeoX,
    /// Pairs (2i, 2i + 1): llama.cpp's "normal" RoPE, as stored in GGUF llama files whose Q and
    /// K rows were permuted by the converter.
    Interleaved,
}

/// How the decoder's linear layers compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKind {
    /// Float weights and activations.
    Float,
    /// BitNet b1.58: ternary weights, per-token int8 activations.
    BitNet,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// "bitnet" or "llama": names the tensor layout and defaults, not the math.
    pub architecture: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    pub activation: Activation,
    /// BitNet's `attn_sub_norm` (before o_proj) and `ffn_sub_norm` (before down_proj).
    pub sub_norms: bool,
    pub tie_embeddings: bool,
    pub linear: LinearKind,
    pub bos_token: Option<u32>,
    pub eos_tokens: Vec<u32>,
}

/// Upper bounds on dimensions: far above any real model, low enough that a hostile header
/// cannot make binllm allocate absurd amounts before the tensors are checked.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 4096;

impl ModelConfig {
    /// Checks that the dimensions fit together.
    pub fn validate(&self) -> Result<()> {
        let dims = [
            ("hidden_size", self.hidden),
            ("intermediate_size", self.intermediate),
            ("num_attention_heads", self.heads),
            ("num_key_value_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab),
        ];
        for (name, v) in dims {
            if v == 0 || v > MAX_DIM {
                crate::bail!(Format, "{name} = {v} is out of range (1..={MAX_DIM})");
            }
        }
        if self.layers == 0 || self.layers > MAX_LAYERS {
            crate::bail!(Format, "num_hidden_layers = {} is out of range (1..={MAX_LAYERS})", self.layers);
        }
        if self.heads % self.kv_heads != 0 {
            crate::bail!(Format, "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", self.heads, self.kv_heads);
        }
        if self.head_dim % 2 != 0 {
            crate::bail!(Format, "head_dim ({}) must be even for RoPE", self.head_dim);
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            crate::bail!(Format, "rope_theta must be positive, got {}", self.rope_theta);
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            crate::bail!(Format, "rms_norm_eps must be non-negative, got {}", self.rms_eps);
        }
        if self.max_positions == 0 {
            crate::bail!(Format, "max_position_embeddings must be positive");
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json` (LlamaForCausalLM, BitNetForCausalLM and kin).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Format(format!("config.json is not valid JSON: {e}")))?;
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| v.get("model_type").and_then(Value::as_str))
            .unwrap_or("")
            .to_string();
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let architecture = match (arch_name.as_str(), model_type) {
            ("BitNetForCausalLM", _) | (_, "bitnet") => "bitnet",
            ("LlamaForCausalLM", _) | ("BitnetForCausalLM", _) | (_, "llama") => "llama",
            (a, t) => crate::bail!(Unsupported, "architecture '{a}' (model_type '{t}'); binllm runs BitNetForCausalLM and LlamaForCausalLM"),
        };
        let uint = |key: &str| -> Result<usize> {
            v.get(key)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| Error::Format(format!("config.json has no integer '{key}'")))
        };
        let hidden = uint("hidden_size")?;
        let heads = uint("num_attention_heads")?;
        let kv_heads = v.get("num_key_value_heads").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(heads);
        let head_dim = v
            .get("head_dim")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(if heads > 0 { hidden / heads } else { 0 });
        let act_name = v.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        // BitNet-style linears, as the real checkpoints mark them: a quantization_config with
        // quant_method "bitnet" (microsoft/bitnet-b1.58-2B-4T), the BitNet architecture itself
        // (its "-bf16" checkpoints hold latent weights and no quantization_config), or 1bitLLM's
        // "BitnetForCausalLM" with weight_bits 1 on a llama model_type.
        let quant_method = v.get("quantization_config").and_then(|q| q.get("quant_method")).and_then(Value::as_str);
        let weight_bits = v.get("weight_bits").and_then(Value::as_u64);
        let linear = match (quant_method, weight_bits) {
            (Some("bitnet"), _) | (None, Some(1)) => LinearKind::BitNet,
            // binllm's own PTQ folders: listed modules are read by `load` as stored; the rest
            // load as the architecture's linears do without a quantization_config.
            (Some("binllm"), _) if architecture == "bitnet" || arch_name == "BitnetForCausalLM" => LinearKind::BitNet,
            (Some("binllm"), _) => LinearKind::Float,
            (Some(other), _) => crate::bail!(Unsupported, "quantization_config.quant_method '{other}' (binllm reads 'bitnet', 'binllm' or none)"),
            (None, Some(bits)) => crate::bail!(Unsupported, "weight_bits = {bits} (binllm runs 1-bit/ternary BitNet weights or float)"),
            (None, None) if architecture == "bitnet" || arch_name == "BitnetForCausalLM" => LinearKind::BitNet,
            (None, None) => LinearKind::Float,
        };
        let eos_tokens = match v.get("eos_token_id") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
            Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            None => vec![],
        };
        let cfg = ModelConfig {
            architecture: architecture.to_string(),
            hidden,
            intermediate: uint("intermediate_size")?,
            layers: uint("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            vocab: uint("vocab_size")?,
            max_positions: v.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(2048) as usize,
            rope_theta: v.get("rope_theta").and_then(Value::as_f64).unwrap_or(10000.0) as f32,
            rope_style: RopeStyle::NeoX,
            rms_eps: v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6) as f32,
            activation: Activation::from_name(act_name)?,
            sub_norms: architecture == "bitnet",
            tie_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(architecture == "bitnet"),
            linear,
            bos_token: v.get("bos_token_id").and_then(Value::as_u64).map(|x| x as u32),
            eos_tokens,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`general.architecture` = llama or bitnet, llama.cpp's keys).
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Self> {
        let arch = file
            .get("general.architecture")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| Error::Format("GGUF has no general.architecture".into()))?
            .to_string();
        let (architecture, activation, sub_norms) = match arch.as_str() {
            "llama" => ("llama", Activation::Silu, false),
            // llama.cpp's "bitnet" graph: sub-norms and a SiLU gate; binllm's own files may
            // override the activation with binllm.activation (relu2 for 2B4T-style models).
            "bitnet" => ("bitnet", Activation::Silu, true),
            other => crate::bail!(Unsupported, "GGUF architecture '{other}' (binllm runs llama and bitnet)"),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let uint = |k: &str| -> Result<usize> {
            file.get(&key(k))
                .and_then(GgufValue::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| Error::Format(format!("GGUF metadata has no integer '{}'", key(k))))
        };
        let hidden = uint("embedding_length")?;
        let heads = uint("attention.head_count")?;
        let kv_heads = file.get(&key("attention.head_count_kv")).and_then(GgufValue::as_u64).map(|x| x as usize).unwrap_or(heads);
        let head_dim = file
            .get(&key("attention.key_length"))
            .and_then(GgufValue::as_u64)
            .map(|x| x as usize)
            .unwrap_or(if heads > 0 { hidden / heads } else { 0 });
        let vocab = match file.get(&key("vocab_size")).and_then(GgufValue::as_u64) {
            Some(n) => n as usize,
            None => file
                .get("tokenizer.ggml.tokens")
                .and_then(GgufValue::as_array)
                .map(|a| a.len())
                .ok_or_else(|| Error::Format("GGUF has neither a vocab_size nor tokenizer.ggml.tokens".into()))?,
        };
        let activation = match file.get("binllm.activation").and_then(GgufValue::as_str) {
            Some(name) => Activation::from_name(name)?,
            None => activation,
        };
        // llama.cpp's own RoPE choice per architecture: "normal" (interleaved pairs, Q/K rows
        // permuted by its converter) for llama, NeoX for bitnet, whose converter does not permute.
        let rope_style = match file.get("binllm.rope_style").and_then(GgufValue::as_str) {
            Some("neox") => RopeStyle::NeoX,
            Some("interleaved") => RopeStyle::Interleaved,
            None if architecture == "bitnet" => RopeStyle::NeoX,
            None => RopeStyle::Interleaved,
            Some(other) => crate::bail!(Unsupported, "binllm.rope_style '{other}'"),
        };
        let has_output = file.tensor("output.weight").is_some();
        // binllm writes "binllm.linear_kind" = "float" for float models with some packed
        // (PTQ) linears: their F16 linears must stay float.
        let float_linears = file.get("binllm.linear_kind").and_then(GgufValue::as_str) == Some("float");
        let linear = if float_linears {
            LinearKind::Float
        } else if file.tensor("blk.0.attn_q.weight").map(|t| t.dtype.is_ternary()).unwrap_or(false) || architecture == "bitnet" {
            LinearKind::BitNet
        } else {
            LinearKind::Float
        };
        let token = |k: &str| file.get(k).and_then(GgufValue::as_u64).map(|x| x as u32);
        let cfg = ModelConfig {
            architecture: architecture.to_string(),
            hidden,
            intermediate: uint("feed_forward_length")?,
            layers: uint("block_count")?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            max_positions: file.get(&key("context_length")).and_then(GgufValue::as_u64).unwrap_or(2048) as usize,
            rope_theta: file.get(&key("rope.freq_base")).and_then(GgufValue::as_f64).unwrap_or(10000.0) as f32,
            rope_style,
            rms_eps: file.get(&key("attention.layer_norm_rms_epsilon")).and_then(GgufValue::as_f64).unwrap_or(1e-5) as f32,
            activation,
            sub_norms,
            tie_embeddings: !has_output,
            linear,
            bos_token: token("tokenizer.ggml.bos_token_id"),
            eos_tokens: token("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

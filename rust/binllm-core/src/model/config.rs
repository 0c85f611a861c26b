//! Model hyper-parameters, read from a Hugging Face `config.json` or from GGUF metadata.
//!
//! Everything that changes the math (activation, sub-norms, RoPE base, pairing and scaling,
//! whether linears are ternary with int8 activations) is read from the file's own fields, never
//! guessed from a model's name. Loading is strict: a key that would change the computation in a
//! way binllm does not implement (biases, partial rotary, sliding windows, logit soft-capping,
//! multipliers, an unknown RoPE scaling type, an unknown key of a GGUF architecture's namespace)
//! is an `Unsupported` error naming the key and its value, never a silent default.
//!
//! The families read here, and how each declares itself:
//! - `BitNetForCausalLM` / `model_type` bitnet (microsoft/bitnet-b1.58-2B-4T, packed or bf16):
//!   relu2, sub-norms `attn_sub_norm` / `ffn_sub_norm`, NeoX RoPE.
//! - `BitnetForCausalLM` with `model_type` llama and `weight_bits` 1 (1bitLLM/bitnet_b1_58-*):
//!   Llama with SubLN sub-norms named `inner_attn_ln` / `ffn_layernorm`, latent weights.
//! - `LlamaForCausalLM`, float or with `quantization_config.quant_method` bitnet (Falcon3
//!   1.58-bit, HF1BitLLM/Llama3-8B-1.58).
//! - GGUF architectures `llama`, `bitnet` (llama.cpp), `bitnet-25` and `bitnet-b1.58`
//!   (bitnet.cpp's BitNet b1.58 2B4T: relu2, sub-norms, NeoX RoPE, optional untied output).

use super::names::{gguf_name, LM_HEAD};
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
            other => crate::bail!(Unsupported, "activation {other:?} (binllm runs silu and relu2)"),
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

/// How RoPE frequencies are stretched for long contexts. Every kind ends as one divisor per
/// rotated pair (`rope_inv_freq`), which is also how GGUF stores Llama-3 scaling
/// (`rope_freqs.weight`, llama.cpp's freq factors).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers' and llama.cpp's `linear`).
    Linear {
        factor: f32,
    },
    /// Llama 3.1's band-wise scaling (transformers' `_compute_llama3_parameters`).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_positions: usize,
    },
    /// One divisor per frequency, as stored (GGUF `rope_freqs.weight`).
    FreqFactors(Vec<f32>),
}

impl RopeScaling {
    /// A short description for `binllm info`.
    pub fn describe(&self) -> String {
        match self {
            RopeScaling::None => "none".into(),
            RopeScaling::Linear { factor } => format!("linear (factor {factor})"),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => format!(
                "llama3 (factor {factor}, low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}, original context {original_max_positions})"
            ),
            RopeScaling::FreqFactors(f) => format!("per-frequency factors ({} values, rope_freqs.weight)", f.len()),
        }
    }
}

/// How the decoder's linear layers compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKind {
    /// Float weights and activations.
    Float,
    /// BitNet b1.58: ternary weights, per-token int8 activations.
    BitNet,
}

/// What a packed checkpoint's `weight_scale` is, by transformers' `linear_class`: `BitLinear`
/// divides the layer's output by it (it stores 1 / mean|W|: Falcon3-1.58bit, HF1BitLLM, TII's
/// onebitllms), `AutoBitLinear` multiplies by it (it stores mean|W|: microsoft/bitnet-b1.58-2B-4T,
/// whose config names `autobitlinear` with `quantization_mode` offline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightScale {
    Divide,
    Multiply,
}

/// Where a model keeps its sub-norms (the RMSNorms before o_proj and down_proj), by family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubNorms {
    None,
    /// BitNet b1.58 2B4T: `self_attn.attn_sub_norm`, `mlp.ffn_sub_norm` (GGUF `attn_sub_norm`,
    /// `ffn_sub_norm`).
    BitNet,
    /// 1bitLLM's SubLN: `self_attn.inner_attn_ln`, `mlp.ffn_layernorm` (llama.cpp's converter
    /// maps them to the same GGUF names as BitNet's).
    OneBitLlm,
}

impl SubNorms {
    pub fn any(self) -> bool {
        self != SubNorms::None
    }
    /// Hugging Face tensor names (attention side, MLP side), without the layer prefix.
    pub fn hf_names(self) -> Option<(&'static str, &'static str)> {
        match self {
            SubNorms::None => None,
            SubNorms::BitNet => Some(("self_attn.attn_sub_norm.weight", "mlp.ffn_sub_norm.weight")),
            SubNorms::OneBitLlm => Some(("self_attn.inner_attn_ln.weight", "mlp.ffn_layernorm.weight")),
        }
    }
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
    pub rope_scaling: RopeScaling,
    pub rms_eps: f32,
    pub activation: Activation,
    /// The RMSNorms before o_proj and down_proj, and their tensor names.
    pub sub_norms: SubNorms,
    pub tie_embeddings: bool,
    pub linear: LinearKind,
    /// How packed Hugging Face linears apply their `weight_scale`.
    pub weight_scale: WeightScale,
    pub bos_token: Option<u32>,
    pub eos_tokens: Vec<u32>,
}

/// Upper bounds on dimensions: far above any real model, low enough that a hostile header
/// cannot make binllm allocate absurd amounts before the tensors are checked.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 4096;

/// The sizes `validate` bounds, by their Hugging Face names (its messages use them), with the
/// GGUF keys (`{arch}.KEY`) that hold them.
const SIZE_BOUNDS: [(&str, &str, usize); 7] = [
    ("hidden_size", "embedding_length", MAX_DIM),
    ("intermediate_size", "feed_forward_length", MAX_DIM),
    ("num_attention_heads", "attention.head_count", MAX_DIM),
    ("num_key_value_heads", "attention.head_count_kv", MAX_DIM),
    ("head_dim", "attention.key_length", MAX_DIM),
    ("vocab_size", "vocab_size", MAX_DIM),
    ("num_hidden_layers", "block_count", MAX_LAYERS),
];

/// `validate`'s range check of the size `name` (a Hugging Face name; others pass).
fn check_bounds(name: &str, value: u64) -> std::result::Result<(), String> {
    match SIZE_BOUNDS.iter().find(|bound| bound.0 == name) {
        Some(&(_, _, max)) if value == 0 || value > max as u64 => Err(format!("{name} = {value} is out of range (1..={max})")),
        _ => Ok(()),
    }
}

/// A size read from a file (a u64 in GGUF and JSON) as a usize no larger than `limit`
/// (`usize::MAX`; a parameter so that tests run wasm32's on any host). A larger value would
/// wrap (on wasm32, 2^32 + 256 became 256) and is refused: with `validate`'s message where it
/// bounds the size `name`, the words a 64-bit build gives for the same value (every bound is
/// far below 2^32), else as too large for this build.
fn size_within(name: &str, value: u64, limit: u64) -> std::result::Result<usize, String> {
    if value <= limit {
        return usize::try_from(value).map_err(|_| format!("{name} = {value} does not fit in usize"));
    }
    check_bounds(name, value)?;
    Err(format!("{name} = {value} is more than this build's {}-bit sizes hold", 64 - limit.leading_zeros()))
}

/// [`size_within`] this build's sizes.
fn size(name: &str, value: u64) -> std::result::Result<usize, String> {
    size_within(name, value, usize::MAX as u64)
}

/// Keys of a GGUF architecture's namespace (`{arch}.KEY`) that binllm reads or that do not
/// change the computation. Any other key there is refused: llama.cpp puts exactly the math of
/// an architecture under its name.
const GGUF_ARCH_KEYS: &[&str] = &[
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "rope.scaling.finetuned",
    "vocab_size",
    "hidden_activation",
    "expert_count",
    "expert_used_count",
];

/// binllm's own GGUF keys (written by `binllm convert`).
const GGUF_BINLLM_KEYS: &[&str] = &["binllm.activation", "binllm.rope_style", "binllm.linear_kind"];

/// Keys of a Hugging Face `quantization_config` with `quant_method` "bitnet" (transformers'
/// `BitNetQuantConfig`); see `bitnet_quantization`.
const BITNET_QUANT_KEYS: &[&str] = &["quant_method", "linear_class", "quantization_mode", "use_rms_norm", "rms_norm_eps", "modules_to_not_convert"];

impl ModelConfig {
    /// Checks that the dimensions fit together.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("hidden_size", self.hidden),
            ("intermediate_size", self.intermediate),
            ("num_attention_heads", self.heads),
            ("num_key_value_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab),
            ("num_hidden_layers", self.layers),
        ];
        for (name, v) in sizes {
            check_bounds(name, v as u64).map_err(Error::Format)?;
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            crate::bail!(Format, "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", self.heads, self.kv_heads);
        }
        if !self.head_dim.is_multiple_of(2) {
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
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                if !(factor.is_finite() && *factor > 0.0) {
                    crate::bail!(Format, "RoPE scaling factor must be positive, got {factor}");
                }
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => {
                if !(factor.is_finite()
                    && *factor > 0.0
                    && low_freq_factor.is_finite()
                    && high_freq_factor.is_finite()
                    && high_freq_factor > low_freq_factor
                    && *low_freq_factor > 0.0)
                {
                    crate::bail!(
                        Format,
                        "llama3 RoPE scaling needs factor > 0 and 0 < low_freq_factor < high_freq_factor, got {factor}, {low_freq_factor}, {high_freq_factor}"
                    );
                }
                if *original_max_positions == 0 {
                    crate::bail!(Format, "llama3 RoPE scaling needs original_max_position_embeddings > 0");
                }
            }
            RopeScaling::FreqFactors(f) => {
                if f.len() != self.head_dim / 2 {
                    crate::bail!(Format, "rope_freqs.weight has {} values; RoPE over head_dim {} needs {}", f.len(), self.head_dim, self.head_dim / 2);
                }
                if let Some(bad) = f.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                    crate::bail!(Format, "rope_freqs.weight holds {bad}; frequency factors must be positive");
                }
            }
        }
        Ok(())
    }

    /// RoPE's angle per position for each rotated pair i (0..head_dim / 2), in float32 as
    /// transformers computes it: `theta^(-2i / head_dim)`, then the scaling's divisor.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let hd = self.head_dim;
        // The power in f64, rounded once: the same on every platform (see `model::exp_f32`),
        // and the f32 that transformers' float32 `pow` gives wherever that is correctly rounded.
        let base: Vec<f32> = (0..hd / 2).map(|i| 1.0 / (self.rope_theta as f64).powf(((2 * i) as f32 / hd as f32) as f64) as f32).collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::FreqFactors(div) => base.iter().zip(div).map(|(f, d)| f / d).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => {
                let old = *original_max_positions as f32;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// llama.cpp's form of any RoPE scaling: one divisor per frequency (`rope_freqs.weight`),
    /// or None when there is no scaling.
    pub fn rope_freq_factors(&self) -> Option<Vec<f32>> {
        if self.rope_scaling == RopeScaling::None {
            return None;
        }
        let plain = ModelConfig { rope_scaling: RopeScaling::None, ..self.clone() }.rope_inv_freq();
        Some(plain.iter().zip(self.rope_inv_freq()).map(|(p, s)| p / s).collect())
    }

    /// Reads a Hugging Face `config.json` (the families in the module docs).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Format(format!("config.json is not valid JSON: {e}")))?;
        let c = HfConfig(v.as_object().ok_or_else(|| Error::Format("config.json is not a JSON object".into()))?);
        let arch_name = match c.0.get("architectures") {
            None | Some(Value::Null) => String::new(),
            Some(Value::Array(a)) if a.len() <= 1 => a.first().map(|x| c.str_of("architectures[0]", x)).transpose()?.unwrap_or_default().to_string(),
            Some(other) => crate::bail!(Unsupported, "config.json: architectures = {other} (binllm runs one architecture per model)"),
        };
        let model_type = c.str("model_type")?.unwrap_or("");
        let architecture = match (arch_name.as_str(), model_type) {
            ("BitNetForCausalLM", _) | ("", "bitnet") => "bitnet",
            ("LlamaForCausalLM" | "BitnetForCausalLM", _) | ("", "llama") => "llama",
            (a, t) => crate::bail!(
                Unsupported,
                "config.json: architecture {a:?} (model_type {t:?}); binllm runs BitNetForCausalLM, BitnetForCausalLM (1bitLLM) and LlamaForCausalLM"
            ),
        };
        let bitnet_arch = architecture == "bitnet";
        // 1bitLLM's remote code (`BitnetForCausalLM` on a llama model_type): SubLN norms in every
        // layer, BitLinear with `weight_bits` / `input_bits`.
        let onebitllm = arch_name == "BitnetForCausalLM";
        c.refuse_unimplemented()?;

        let hidden = c.required_uint("hidden_size")?;
        let heads = c.required_uint("num_attention_heads")?;
        let kv_heads = c.uint("num_key_value_heads")?.unwrap_or(heads);
        let head_dim = c.uint("head_dim")?.unwrap_or(hidden.checked_div(heads).unwrap_or(0));
        // transformers' defaults per config class (BitNetConfig / LlamaConfig).
        let act_name = c.str("hidden_act")?.unwrap_or(if bitnet_arch { "relu2" } else { "silu" });
        let (rope_theta, rope_scaling) = c.rope(if bitnet_arch { 500000.0 } else { 10000.0 })?;

        let quant = c.0.get("quantization_config").filter(|q| !q.is_null());
        let quant_method = match quant {
            None => None,
            Some(q) => Some(
                q.get("quant_method")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::Format("config.json: quantization_config has no string quant_method".into()))?,
            ),
        };
        let weight_bits = c.uint("weight_bits")?;
        if let Some(bits) = c.uint("input_bits")? {
            if bits != 8 {
                crate::bail!(Unsupported, "config.json: input_bits = {bits} (binllm quantizes activations to 8 bits, as BitNet b1.58 does)");
            }
        }
        let mut weight_scale = WeightScale::Divide;
        let linear = match (quant_method, weight_bits) {
            (Some(_), Some(bits)) => {
                crate::bail!(Unsupported, "config.json has both weight_bits ({bits}) and a quantization_config; binllm reads one or the other")
            }
            (Some("bitnet"), None) => {
                weight_scale = bitnet_quantization(quant.expect("quant_method came from it"))?;
                LinearKind::BitNet
            }
            (None, Some(1)) => LinearKind::BitNet,
            (None, Some(bits)) => crate::bail!(Unsupported, "weight_bits = {bits} (binllm runs 1-bit/ternary BitNet weights or float)"),
            // binllm's own PTQ folders: listed modules are read by `load` as stored; the rest
            // load as the architecture's linears do without a quantization_config.
            (Some("binllm"), None) if bitnet_arch || onebitllm => LinearKind::BitNet,
            (Some("binllm"), None) => LinearKind::Float,
            (Some(other), None) => crate::bail!(Unsupported, "quantization_config.quant_method '{other}' (binllm reads 'bitnet', 'binllm' or none)"),
            (None, None) if bitnet_arch || onebitllm => LinearKind::BitNet,
            (None, None) => LinearKind::Float,
        };
        let sub_norms = if bitnet_arch {
            SubNorms::BitNet
        } else if onebitllm {
            SubNorms::OneBitLlm
        } else {
            SubNorms::None
        };
        let eos_tokens = match c.0.get("eos_token_id") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a.iter().map(|x| c.token_of("eos_token_id", x)).collect::<Result<_>>()?,
            Some(x) => vec![c.token_of("eos_token_id", x)?],
        };
        let bos_token = match c.0.get("bos_token_id") {
            None | Some(Value::Null) => None,
            Some(x) => Some(c.token_of("bos_token_id", x)?),
        };
        let cfg = ModelConfig {
            architecture: architecture.to_string(),
            hidden,
            intermediate: c.required_uint("intermediate_size")?,
            layers: c.required_uint("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            vocab: c.required_uint("vocab_size")?,
            max_positions: c.uint("max_position_embeddings")?.unwrap_or(2048),
            rope_theta,
            rope_style: RopeStyle::NeoX,
            rope_scaling,
            rms_eps: c.float("rms_norm_eps")?.unwrap_or(if bitnet_arch { 1e-5 } else { 1e-6 }) as f32,
            activation: Activation::from_name(act_name).map_err(|e| e.at("config.json: hidden_act"))?,
            sub_norms,
            tie_embeddings: c.bool("tie_word_embeddings")?.unwrap_or(bitnet_arch),
            linear,
            weight_scale,
            bos_token,
            eos_tokens,
        };
        cfg.validate().map_err(|e| match e {
            Error::Format(m) => Error::Format(format!("config.json: {m}")),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`general.architecture` = llama, bitnet, bitnet-25 or bitnet-b1.58;
    /// llama.cpp's keys).
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Self> {
        let arch =
            file.get("general.architecture").and_then(GgufValue::as_str).ok_or_else(|| Error::Format("GGUF has no general.architecture".into()))?.to_string();
        let (architecture, activation, sub_norms) = match arch.as_str() {
            "llama" => ("llama", Activation::Silu, SubNorms::None),
            // llama.cpp's "bitnet" graph (1bitLLM's models): sub-norms and a SiLU gate; binllm's
            // own files may override the activation with binllm.activation (relu2 for
            // 2B4T-style models).
            "bitnet" => ("bitnet", Activation::Silu, SubNorms::BitNet),
            // bitnet.cpp's graph for BitNet b1.58 2B4T (LLM_FFN_RELU_SQR, sub-norms, NeoX).
            "bitnet-25" | "bitnet-b1.58" => ("bitnet", Activation::Relu2, SubNorms::BitNet),
            other => crate::bail!(Unsupported, "GGUF architecture {other:?} (binllm runs llama, bitnet, bitnet-25 and bitnet-b1.58)"),
        };
        let prefix = format!("{arch}.");
        for (k, v) in &file.metadata {
            if let Some(rest) = k.strip_prefix(&prefix) {
                let harmless_zero = matches!(rest, "expert_count" | "expert_used_count") && v.as_u64() == Some(0);
                if !GGUF_ARCH_KEYS.contains(&rest) || (rest.starts_with("expert") && !harmless_zero) {
                    crate::bail!(Unsupported, "GGUF metadata '{k}' = {} changes the model in a way binllm does not implement", short(v));
                }
            } else if k.starts_with("binllm.") && !GGUF_BINLLM_KEYS.contains(&k.as_str()) {
                crate::bail!(Unsupported, "GGUF metadata '{k}' = {} is not a key this binllm knows", short(v));
            }
        }
        let key = |k: &str| format!("{arch}.{k}");
        let uint = |k: &str| -> Result<Option<usize>> {
            match file.get(&key(k)) {
                None => Ok(None),
                Some(v) => {
                    let x = v.as_u64().ok_or_else(|| Error::Format(format!("GGUF metadata '{}' must be an integer, got {}", key(k), short(v))))?;
                    let name = SIZE_BOUNDS.iter().find(|bound| bound.1 == k).map_or_else(|| key(k), |bound| bound.0.to_string());
                    size(&name, x).map(Some).map_err(Error::Format)
                }
            }
        };
        let float = |k: &str| -> Result<Option<f64>> {
            match file.get(&key(k)) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::Format(format!("GGUF metadata '{}' must be a number, got {}", key(k), short(v)))),
            }
        };
        let required = |k: &str| uint(k)?.ok_or_else(|| Error::Format(format!("GGUF metadata has no integer '{}'", key(k))));
        let hidden = required("embedding_length")?;
        let heads = required("attention.head_count")?;
        let kv_heads = uint("attention.head_count_kv")?.unwrap_or(heads);
        let head_dim = uint("attention.key_length")?.unwrap_or(hidden.checked_div(heads).unwrap_or(0));
        for k in ["attention.value_length", "rope.dimension_count"] {
            if let Some(x) = uint(k)? {
                if x != head_dim {
                    crate::bail!(
                        Unsupported,
                        "GGUF metadata '{}' = {x} differs from the head size {head_dim} (binllm rotates and attends over whole heads)",
                        key(k)
                    );
                }
            }
        }
        let vocab = match uint("vocab_size")? {
            Some(n) => n,
            None => file
                .get("tokenizer.ggml.tokens")
                .and_then(GgufValue::as_array)
                .map(|a| a.len())
                .ok_or_else(|| Error::Format("GGUF has neither a vocab_size nor tokenizer.ggml.tokens".into()))?,
        };
        // The activation as llama.cpp's newer graphs read it (`{arch}.hidden_activation`), or as
        // binllm writes it; both at once must agree.
        let named = |k: &str| -> Result<Option<Activation>> {
            match file.get(k) {
                None => Ok(None),
                Some(v) => Activation::from_name(v.as_str().ok_or_else(|| Error::Format(format!("GGUF metadata '{k}' must be a string")))?)
                    .map(Some)
                    .map_err(|e| e.at(&format!("GGUF metadata '{k}'"))),
            }
        };
        let activation = match (named(&key("hidden_activation"))?, named("binllm.activation")?) {
            (Some(a), Some(b)) if a != b => {
                crate::bail!(Format, "GGUF metadata '{}' ({}) and binllm.activation ({}) disagree", key("hidden_activation"), a.name(), b.name())
            }
            (a, b) => a.or(b).unwrap_or(activation),
        };
        // llama.cpp's own RoPE choice per architecture: "normal" (interleaved pairs, Q/K rows
        // permuted by its converter) for llama, NeoX for the bitnet family, whose converters do
        // not permute.
        let rope_style = match file.get("binllm.rope_style").and_then(GgufValue::as_str) {
            Some("neox") => RopeStyle::NeoX,
            Some("interleaved") => RopeStyle::Interleaved,
            None if architecture == "bitnet" => RopeStyle::NeoX,
            None => RopeStyle::Interleaved,
            Some(other) => crate::bail!(Unsupported, "binllm.rope_style '{other}'"),
        };
        let scaling_type = file
            .get(&key("rope.scaling.type"))
            .map(|v| v.as_str().ok_or_else(|| Error::Format(format!("GGUF metadata '{}' must be a string", key("rope.scaling.type")))))
            .transpose()?;
        let mut rope_scaling = match scaling_type {
            None | Some("none") => RopeScaling::None,
            Some("linear") => {
                let factor =
                    float("rope.scaling.factor")?.ok_or_else(|| Error::Format(format!("linear RoPE scaling without '{}'", key("rope.scaling.factor"))))?;
                RopeScaling::Linear { factor: factor as f32 }
            }
            Some(other) => crate::bail!(
                Unsupported,
                "GGUF metadata '{}' = '{other}' (binllm implements none, linear, and Llama-3 frequency factors)",
                key("rope.scaling.type")
            ),
        };
        if let Some(t) = file.tensor("rope_freqs.weight") {
            if rope_scaling != RopeScaling::None {
                crate::bail!(Unsupported, "GGUF has both {} scaling and rope_freqs.weight", rope_scaling.describe());
            }
            if t.shape.len() != 1 {
                crate::bail!(Format, "rope_freqs.weight has shape {:?}; expected one value per rotated pair", t.shape);
            }
            rope_scaling = RopeScaling::FreqFactors(t.to_f32()?);
        }
        let has_output = file.tensor(&gguf_name(None, LM_HEAD)).is_some();
        // binllm writes "binllm.linear_kind" = "float" for float models with some packed
        // (PTQ) linears: their F16 linears must stay float.
        let float_linears = file.get("binllm.linear_kind").and_then(GgufValue::as_str) == Some("float");
        let linear = if float_linears {
            LinearKind::Float
        } else if file.tensor(&gguf_name(Some(0), "self_attn.q_proj.weight")).map(|t| t.dtype.is_ternary()).unwrap_or(false) || architecture == "bitnet" {
            LinearKind::BitNet
        } else {
            LinearKind::Float
        };
        let token = |k: &str| -> Result<Option<u32>> {
            match file.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| Error::Format(format!("GGUF metadata '{k}' must be a token id, got {}", short(v)))),
            }
        };
        let cfg = ModelConfig {
            architecture: architecture.to_string(),
            hidden,
            intermediate: required("feed_forward_length")?,
            layers: required("block_count")?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            max_positions: uint("context_length")?.unwrap_or(2048),
            rope_theta: float("rope.freq_base")?.unwrap_or(10000.0) as f32,
            rope_style,
            rope_scaling,
            rms_eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
            activation,
            sub_norms,
            tie_embeddings: !has_output,
            linear,
            weight_scale: WeightScale::Divide,
            bos_token: token("tokenizer.ggml.bos_token_id")?,
            eos_tokens: token("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A GGUF value for an error message, cut short.
fn short(v: &GgufValue) -> String {
    let s = match v {
        GgufValue::String(s) => format!("'{s}'"),
        GgufValue::Array(a) => format!("an array of {}", a.len()),
        other => other.as_f64().map(|x| x.to_string()).or_else(|| other.as_bool().map(|b| b.to_string())).unwrap_or_else(|| "?".into()),
    };
    s.chars().take(80).collect()
}

/// A JSON value for an error message, cut short.
fn short_json(v: &Value) -> String {
    v.to_string().chars().take(80).collect()
}

/// transformers' `BitNetQuantConfig`: what binllm implements of it. `linear_class` bitlinear
/// (packed uint8 weights, inverted `weight_scale`) and autobitlinear (its "online" mode holds
/// latent float weights, ternarized here on load exactly as each call would) both compute BitNet
/// b1.58's linear; `use_rms_norm` (an RMSNorm inside every linear) is not implemented.
fn bitnet_quantization(q: &Value) -> Result<WeightScale> {
    let Some(q) = q.as_object() else {
        crate::bail!(Format, "config.json: quantization_config is not an object");
    };
    for (k, v) in q {
        if !BITNET_QUANT_KEYS.contains(&k.as_str()) {
            crate::bail!(Unsupported, "config.json: quantization_config.{k} = {} is not part of BitNet quantization as binllm knows it", short_json(v));
        }
    }
    let scale = match q.get("linear_class") {
        None | Some(Value::Null) => WeightScale::Divide,
        Some(Value::String(s)) if s == "bitlinear" => WeightScale::Divide,
        Some(Value::String(s)) if s == "autobitlinear" => WeightScale::Multiply,
        Some(other) => {
            crate::bail!(Unsupported, "config.json: quantization_config.linear_class = {} (binllm runs bitlinear and autobitlinear)", short_json(other))
        }
    };
    match q.get("quantization_mode") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "offline" || s == "online" => {}
        Some(other) => crate::bail!(Unsupported, "config.json: quantization_config.quantization_mode = {}", short_json(other)),
    }
    match q.get("use_rms_norm") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(other) => crate::bail!(
            Unsupported,
            "config.json: quantization_config.use_rms_norm = {} (an RMSNorm inside each linear layer is not implemented)",
            short_json(other)
        ),
    }
    match q.get("modules_to_not_convert") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.iter().all(|m| m.as_str() == Some("lm_head")) => {}
        Some(other) => {
            crate::bail!(Unsupported, "config.json: quantization_config.modules_to_not_convert = {} (binllm keeps only lm_head in float)", short_json(other))
        }
    }
    Ok(scale)
}

/// Typed, strict access to a `config.json` object: a key of the wrong type is an error naming
/// it, never a default.
struct HfConfig<'v>(&'v serde_json::Map<String, Value>);

impl<'v> HfConfig<'v> {
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    fn str_of(&self, name: &str, v: &'v Value) -> Result<&'v str> {
        v.as_str().ok_or_else(|| Error::Format(format!("config.json: {name} must be a string, got {}", short_json(v))))
    }
    fn str(&self, key: &str) -> Result<Option<&'v str>> {
        self.get(key).map(|v| self.str_of(key, v)).transpose()
    }
    fn uint(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                let x = v.as_u64().ok_or_else(|| Error::Format(format!("config.json: {key} must be a non-negative integer, got {}", short_json(v))))?;
                size(key, x).map_err(|m| Error::Format(format!("config.json: {m}")))
            })
            .transpose()
    }
    fn required_uint(&self, key: &str) -> Result<usize> {
        self.uint(key)?.ok_or_else(|| Error::Format(format!("config.json has no integer '{key}'")))
    }
    fn float_of(name: &str, v: &Value) -> Result<f64> {
        v.as_f64().ok_or_else(|| Error::Format(format!("config.json: {name} must be a number, got {}", short_json(v))))
    }
    fn float(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| Self::float_of(key, v)).transpose()
    }
    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| Error::Format(format!("config.json: {key} must be true or false, got {}", short_json(v))))).transpose()
    }
    fn token_of(&self, name: &str, v: &Value) -> Result<u32> {
        v.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| Error::Format(format!("config.json: {name} must be a token id, got {}", short_json(v))))
    }

    /// Keys that change the computation in ways binllm does not implement, with the values that
    /// mean "off" (the only ones accepted).
    fn refuse_unimplemented(&self) -> Result<()> {
        let off = |v: &Value, what: &[Value]| what.contains(v);
        let checks: &[(&str, &[Value], &str)] = &[
            ("attention_bias", &[Value::Bool(false)], "biases on q/k/v/o"),
            ("mlp_bias", &[Value::Bool(false)], "biases on the MLP"),
            ("attn_logit_softcapping", &[], "attention logit soft-capping"),
            ("final_logit_softcapping", &[], "output logit soft-capping"),
            ("qk_layernorm", &[Value::Bool(false)], "norms on q and k"),
            ("rope_interleaved", &[Value::Bool(false)], "interleaved RoPE pairs in a Hugging Face checkpoint"),
            ("parallel_attn", &[Value::Bool(false)], "parallel attention and MLP"),
            ("use_qk_norm", &[Value::Bool(false)], "norms on q and k"),
            ("num_local_experts", &[serde_json::json!(0)], "mixture of experts"),
            ("num_experts", &[serde_json::json!(0)], "mixture of experts"),
        ];
        for (key, accepted, what) in checks {
            if let Some(v) = self.get(key) {
                if !off(v, accepted) {
                    crate::bail!(Unsupported, "config.json: {key} = {} ({what} is not implemented)", short_json(v));
                }
            }
        }
        // Multipliers (Granite, muP-style models) and partial rotary: 1 is the identity.
        for key in ["partial_rotary_factor", "embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling", "logit_scale"] {
            if let Some(v) = self.get(key) {
                if Self::float_of(key, v)? != 1.0 {
                    crate::bail!(Unsupported, "config.json: {key} = {} is not implemented", short_json(v));
                }
            }
        }
        if let Some(v) = self.get("sliding_window") {
            if self.bool("use_sliding_window")? != Some(false) {
                crate::bail!(Unsupported, "config.json: sliding_window = {} (sliding-window attention is not implemented)", short_json(v));
            }
        }
        if let Some(v) = self.get("layer_types") {
            let full = v.as_array().is_some_and(|a| a.iter().all(|t| t.as_str() == Some("full_attention")));
            if !full {
                crate::bail!(Unsupported, "config.json: layer_types = {} (binllm runs full attention in every layer)", short_json(v));
            }
        }
        Ok(())
    }

    /// RoPE base and scaling from transformers >= 5's `rope_parameters`, or the older top-level
    /// `rope_theta` and `rope_scaling`. Both forms at once must agree.
    fn rope(&self, default_theta: f64) -> Result<(f32, RopeScaling)> {
        let params = match self.get("rope_parameters") {
            None => None,
            Some(Value::Object(p)) if p.contains_key("full_attention") && p.len() == 1 => p.get("full_attention").and_then(Value::as_object),
            Some(Value::Object(p)) => Some(p),
            Some(other) => crate::bail!(Format, "config.json: rope_parameters must be an object, got {}", short_json(other)),
        };
        let params = match params {
            Some(p) => Some(p),
            None if self.get("rope_parameters").is_some() => crate::bail!(Format, "config.json: rope_parameters.full_attention must be an object"),
            None => None,
        };
        let top_theta = self.float("rope_theta")?;
        let param_theta =
            params.and_then(|p| p.get("rope_theta")).filter(|v| !v.is_null()).map(|v| Self::float_of("rope_parameters.rope_theta", v)).transpose()?;
        let theta = match (top_theta, param_theta) {
            (Some(a), Some(b)) if a != b => crate::bail!(Format, "config.json: rope_theta ({a}) and rope_parameters.rope_theta ({b}) disagree"),
            (a, b) => a.or(b).unwrap_or(default_theta),
        };
        if let Some(p) = params {
            if let Some(v) = p.get("partial_rotary_factor").filter(|v| !v.is_null()) {
                if Self::float_of("rope_parameters.partial_rotary_factor", v)? != 1.0 {
                    crate::bail!(Unsupported, "config.json: rope_parameters.partial_rotary_factor = {} is not implemented", short_json(v));
                }
            }
        }
        let (scaling, name) = match (params, self.get("rope_scaling")) {
            (Some(p), _) => (Some(p), "rope_parameters"),
            (None, Some(Value::Object(s))) => (Some(s), "rope_scaling"),
            (None, Some(other)) => crate::bail!(Format, "config.json: rope_scaling must be an object, got {}", short_json(other)),
            (None, None) => (None, "rope_scaling"),
        };
        let Some(s) = scaling else {
            return Ok((theta as f32, RopeScaling::None));
        };
        let kind = s.get("rope_type").or_else(|| s.get("type")).filter(|v| !v.is_null());
        let kind = kind.map(|k| self.str_of(&format!("{name}.rope_type"), k)).transpose()?.unwrap_or("default");
        let num = |k: &str| -> Result<f64> {
            let v = s.get(k).filter(|v| !v.is_null()).ok_or_else(|| Error::Format(format!("config.json: {name} of type '{kind}' has no '{k}'")))?;
            Self::float_of(&format!("{name}.{k}"), v)
        };
        let rope_scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: num("factor")? as f32 },
            "llama3" => {
                let original = num("original_max_position_embeddings")?;
                if !(original >= 1.0 && original.fract() == 0.0 && original <= u32::MAX as f64) {
                    crate::bail!(Format, "config.json: {name}.original_max_position_embeddings must be a positive integer, got {original}");
                }
                RopeScaling::Llama3 {
                    factor: num("factor")? as f32,
                    low_freq_factor: num("low_freq_factor")? as f32,
                    high_freq_factor: num("high_freq_factor")? as f32,
                    original_max_positions: original as usize,
                }
            }
            other => crate::bail!(Unsupported, "config.json: {name} type '{other}' (binllm implements default, linear and llama3 RoPE)"),
        };
        Ok((theta as f32, rope_scaling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = r#""architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100"#;

    fn llama(extra: &str) -> Result<ModelConfig> {
        let sep = if extra.is_empty() { "" } else { ", " };
        ModelConfig::from_hf_json(&format!("{{{LLAMA}{sep}{extra}}}"))
    }

    fn refused(extra: &str, needle: &str) {
        match llama(extra) {
            Err(Error::Unsupported(m)) | Err(Error::Format(m)) => assert!(m.contains(needle), "'{m}' lacks '{needle}'"),
            Err(e) => panic!("wrong error kind for {extra}: {e}"),
            Ok(_) => panic!("accepted {extra}; expected an error naming '{needle}'"),
        }
    }

    #[test]
    fn transformers_5_rope_parameters_equal_a_top_level_rope_theta() {
        let old = llama(r#""rope_theta": 500000.0"#).unwrap();
        let new = llama(r#""rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}"#).unwrap();
        assert_eq!(old, new);
        assert_eq!(new.rope_theta, 500000.0);
        assert_eq!(new.rope_scaling, RopeScaling::None);
        refused(r#""rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}"#, "disagree");
    }

    #[test]
    fn defaults_follow_the_config_class() {
        assert_eq!(llama("").unwrap().rope_theta, 10000.0);
        let bitnet =
            ModelConfig::from_hf_json(&format!("{{{}}}", LLAMA.replace("LlamaForCausalLM", "BitNetForCausalLM").replace("\"llama\"", "\"bitnet\""))).unwrap();
        assert_eq!((bitnet.rope_theta, bitnet.activation, bitnet.sub_norms, bitnet.rms_eps), (500000.0, Activation::Relu2, SubNorms::BitNet, 1e-5));
    }

    #[test]
    fn onebitllm_declares_its_sub_norms() {
        let c = llama(r#""weight_bits": 1, "input_bits": 8"#).unwrap();
        assert_eq!((c.linear, c.sub_norms), (LinearKind::BitNet, SubNorms::None));
        let one = ModelConfig::from_hf_json(&format!("{{{}, \"weight_bits\": 1, \"input_bits\": 8}}", LLAMA.replace("LlamaForCausalLM", "BitnetForCausalLM")))
            .unwrap();
        assert_eq!((one.linear, one.sub_norms), (LinearKind::BitNet, SubNorms::OneBitLlm));
        refused(r#""weight_bits": 1, "input_bits": 4"#, "input_bits = 4");
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let c = llama(r#""rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}"#).unwrap();
        let plain = llama(r#""rope_theta": 500000.0"#).unwrap().rope_inv_freq();
        let scaled = c.rope_inv_freq();
        // head_dim 16: wavelengths 2 pi / f run from 6.3 to ~2.6e5; 64 / 4 = 16 and 64 / 1 = 64
        // bound the smoothed band.
        for (p, s) in plain.iter().zip(&scaled) {
            let wavelen = 2.0 * std::f32::consts::PI / p;
            if wavelen < 16.0 {
                assert_eq!(p, s);
            } else if wavelen > 64.0 {
                assert_eq!(p / 8.0, *s);
            } else {
                assert!(*s < *p && *s > p / 8.0);
            }
        }
        assert!(plain.iter().zip(&scaled).any(|(p, s)| p != s));
        // The same scaling in llama.cpp's form gives the same frequencies back.
        let factors = c.rope_freq_factors().unwrap();
        let back = ModelConfig { rope_scaling: RopeScaling::FreqFactors(factors), ..c.clone() }.rope_inv_freq();
        for (a, b) in back.iter().zip(&scaled) {
            assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");
        }
        let linear = llama(r#""rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}"#).unwrap();
        assert_eq!(linear.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        assert_eq!(linear.rope_inv_freq()[1], llama("").unwrap().rope_inv_freq()[1] / 4.0);
    }

    #[test]
    fn keys_that_change_the_math_are_refused_by_name() {
        refused(r#""rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#, "yarn");
        refused(r#""rope_scaling": {"type": "dynamic", "factor": 2.0}"#, "dynamic");
        refused(r#""rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0}"#, "longrope");
        refused(r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#, "original_max_position_embeddings");
        refused(r#""attention_bias": true"#, "attention_bias");
        refused(r#""mlp_bias": true"#, "mlp_bias");
        refused(r#""partial_rotary_factor": 0.5"#, "partial_rotary_factor");
        refused(r#""sliding_window": 4096"#, "sliding_window");
        refused(r#""final_logit_softcapping": 30.0"#, "final_logit_softcapping");
        refused(r#""logits_scaling": 8.0"#, "logits_scaling");
        refused(r#""layer_types": ["sliding_attention", "full_attention"]"#, "layer_types");
        refused(r#""quantization_config": {"quant_method": "bitnet", "use_rms_norm": true}"#, "use_rms_norm");
        refused(r#""quantization_config": {"quant_method": "bitnet", "modules_to_not_convert": ["model.layers.0.mlp.down_proj"]}"#, "modules_to_not_convert");
        refused(r#""quantization_config": {"quant_method": "bitnet", "weight_group_size": 128}"#, "weight_group_size");
        refused(r#""quantization_config": {"quant_method": "gptq"}"#, "gptq");
        // Off values are accepted.
        llama(r#""attention_bias": false, "mlp_bias": false, "sliding_window": null, "partial_rotary_factor": 1.0, "rope_scaling": null, "pretraining_tp": 1"#)
            .unwrap();
        llama(r#""quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online", "use_rms_norm": false, "rms_norm_eps": 1e-6, "modules_to_not_convert": ["lm_head"]}"#).unwrap();
    }

    #[test]
    fn values_of_the_wrong_type_are_errors_not_defaults() {
        refused(r#""max_position_embeddings": -1"#, "max_position_embeddings");
        refused(r#""rope_theta": "big""#, "rope_theta");
        refused(r#""eos_token_id": 4294967297"#, "eos_token_id");
        refused(r#""eos_token_id": [1, "two"]"#, "eos_token_id");
        refused(r#""tie_word_embeddings": "yes""#, "tie_word_embeddings");
        refused(r#""hidden_act": "gelu""#, "gelu");
        assert!(matches!(ModelConfig::from_hf_json("[1, 2]"), Err(Error::Format(_))));
    }

    /// `refused`, also checking which kind of error: a malformed file or an unsupported one.
    fn refused_as(extra: &str, needle: &str, unsupported: bool) {
        match llama(extra) {
            Err(Error::Unsupported(m)) if unsupported => assert!(m.contains(needle), "'{m}' lacks '{needle}'"),
            Err(Error::Format(m)) if !unsupported => assert!(m.contains(needle), "'{m}' lacks '{needle}'"),
            other => panic!("{extra}: expected {} naming '{needle}', got {other:?}", if unsupported { "Unsupported" } else { "Format" }),
        }
    }

    #[test]
    fn a_llama_config_reads_every_field_and_its_defaults() {
        let c = llama("").unwrap();
        let want = ModelConfig {
            architecture: "llama".into(),
            hidden: 64,
            intermediate: 96,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 16, // hidden / heads
            vocab: 100,
            max_positions: 2048,
            rope_theta: 10000.0,
            rope_style: RopeStyle::NeoX,
            rope_scaling: RopeScaling::None,
            rms_eps: 1e-6,
            activation: Activation::Silu,
            sub_norms: SubNorms::None,
            tie_embeddings: false,
            linear: LinearKind::Float,
            weight_scale: WeightScale::Divide,
            bos_token: None,
            eos_tokens: vec![],
        };
        assert_eq!(c, want);
        let given = llama(
            r#""head_dim": 32, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": [2, 3], "hidden_act": "relu2", "rope_theta": 500000"#,
        )
        .unwrap();
        assert_eq!(
            (given.head_dim, given.max_positions, given.rms_eps, given.tie_embeddings, given.bos_token, given.eos_tokens, given.activation, given.rope_theta),
            (32, 256, 1e-5, true, Some(1), vec![2, 3], Activation::Relu2, 500000.0)
        );
        // One eos id as a number; nulls are "not given".
        let one = llama(r#""eos_token_id": 7, "bos_token_id": null, "num_key_value_heads": null, "architectures": null"#).unwrap();
        assert_eq!((one.eos_tokens, one.bos_token, one.kv_heads, one.architecture.as_str()), (vec![7], None, 4, "llama"));
    }

    #[test]
    fn the_architecture_comes_from_architectures_or_model_type() {
        let only_type = ModelConfig::from_hf_json(&format!("{{{}}}", LLAMA.replace(r#""architectures": ["LlamaForCausalLM"], "#, ""))).unwrap();
        assert_eq!(only_type.architecture, "llama");
        let bitnet = LLAMA.replace(r#""architectures": ["LlamaForCausalLM"], "model_type": "llama""#, r#""model_type": "bitnet""#);
        let bitnet = ModelConfig::from_hf_json(&format!("{{{bitnet}}}")).unwrap();
        assert_eq!((bitnet.architecture.as_str(), bitnet.linear, bitnet.tie_embeddings), ("bitnet", LinearKind::BitNet, true));
        for (architectures, needle) in [
            (r#"["MistralForCausalLM"]"#, "MistralForCausalLM"),
            (r#"["LlamaForCausalLM", "BitNetForCausalLM"]"#, "one architecture"),
            (r#""LlamaForCausalLM""#, "one architecture"),
        ] {
            let text = format!("{{{}}}", LLAMA.replace(r#"["LlamaForCausalLM"]"#, architectures));
            assert!(matches!(ModelConfig::from_hf_json(&text), Err(Error::Unsupported(m)) if m.contains(needle)), "{architectures}");
        }
        let text = format!("{{{}}}", LLAMA.replace(r#"["LlamaForCausalLM"]"#, "[7]"));
        assert!(matches!(ModelConfig::from_hf_json(&text), Err(Error::Format(m)) if m.contains("architectures[0] must be a string")));
    }

    #[test]
    fn the_linear_kind_follows_weight_bits_or_quantization_config() {
        let bitnet = llama(r#""quantization_config": {"quant_method": "bitnet"}"#).unwrap();
        assert_eq!((bitnet.linear, bitnet.weight_scale), (LinearKind::BitNet, WeightScale::Divide));
        let auto = llama(r#""quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear"}"#).unwrap();
        assert_eq!(auto.weight_scale, WeightScale::Multiply);
        // binllm's own PTQ folders: the listed modules are read as stored.
        assert_eq!(llama(r#""quantization_config": {"quant_method": "binllm"}"#).unwrap().linear, LinearKind::Float);
        assert_eq!(llama(r#""quantization_config": null"#).unwrap().linear, LinearKind::Float);
        refused_as(r#""weight_bits": 1, "quantization_config": {"quant_method": "bitnet"}"#, "one or the other", true);
        refused_as(r#""weight_bits": 2"#, "weight_bits = 2", true);
        refused_as(r#""quantization_config": {"bits": 4}"#, "no string quant_method", false);
        refused_as(r#""quantization_config": {"quant_method": "bitnet", "linear_class": "lowrank"}"#, "linear_class", true);
        refused_as(r#""quantization_config": {"quant_method": "bitnet", "quantization_mode": "dynamic"}"#, "quantization_mode", true);
    }

    #[test]
    fn each_dimension_check_refuses_by_name() {
        for key in ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size"] {
            refused_as(
                &format!(r#""{key}": 0"#).replace(r#""num_attention_heads": 0"#, r#""num_attention_heads": 0, "head_dim": 16"#),
                &format!("{key} = 0 is out of range"),
                false,
            );
        }
        refused_as(&format!(r#""head_dim": {}"#, MAX_DIM + 2), &format!("head_dim = {} is out of range", MAX_DIM + 2), false);
        refused_as(&format!(r#""vocab_size": {}"#, MAX_DIM + 1), "vocab_size", false);
        refused_as(r#""num_hidden_layers": 0"#, "num_hidden_layers = 0 is out of range", false);
        refused_as(&format!(r#""num_hidden_layers": {}"#, MAX_LAYERS + 1), "num_hidden_layers", false);
        refused_as(r#""num_key_value_heads": 3"#, "multiple of num_key_value_heads (3)", false);
        refused_as(r#""head_dim": 15"#, "head_dim (15) must be even", false);
        refused_as(r#""rms_norm_eps": -1e-6"#, "rms_norm_eps must be non-negative", false);
        refused_as(r#""max_position_embeddings": 0"#, "config.json: max_position_embeddings must be positive", false);
        refused_as(r#""hidden_size": 1.5"#, "hidden_size must be a non-negative integer", false);
        refused_as(r#""hidden_size": "64""#, "hidden_size must be a non-negative integer", false);
    }

    #[test]
    fn sizes_too_large_for_usize_are_refused_as_a_64_bit_build_refuses_them() {
        // wasm32's usize, on any host: 2^32 + 256 must not wrap to 256.
        let wasm32 = u32::MAX as u64;
        let native = llama(&format!(r#""hidden_size": {}"#, (1u64 << 32) + 256)).unwrap_err().to_string();
        let message = size_within("hidden_size", (1 << 32) + 256, wasm32).unwrap_err();
        assert!(native.ends_with(&format!("config.json: {message}")), "{native} / {message}");
        assert_eq!(message, "hidden_size = 4294967552 is out of range (1..=1048576)");
        assert_eq!(size_within("num_hidden_layers", 1 << 32, wasm32).unwrap_err(), "num_hidden_layers = 4294967296 is out of range (1..=4096)");
        // A size without a bound (the context) fits natively and is refused by name on wasm32.
        assert_eq!(
            size_within("bitnet.context_length", (1 << 32) + 1, wasm32).unwrap_err(),
            "bitnet.context_length = 4294967297 is more than this build's 32-bit sizes hold"
        );
        assert_eq!(size_within("max_position_embeddings", u32::MAX as u64, wasm32), Ok(u32::MAX as usize));
        if usize::BITS == 64 {
            assert_eq!(llama(&format!(r#""max_position_embeddings": {}"#, (1u64 << 32) + 1)).unwrap().max_positions as u64, (1 << 32) + 1);
        }
    }

    #[test]
    fn rope_settings_that_cannot_work_are_refused() {
        refused_as(r#""rope_theta": 0"#, "rope_theta must be positive", false);
        refused_as(r#""rope_theta": -10000.0"#, "rope_theta must be positive", false);
        refused_as(r#""rope_scaling": {"rope_type": "linear", "factor": 0.0}"#, "factor must be positive", false);
        refused_as(r#""rope_scaling": {"rope_type": "linear"}"#, "has no 'factor'", false);
        refused_as(r#""rope_scaling": 4"#, "rope_scaling must be an object", false);
        refused_as(r#""rope_parameters": "default""#, "rope_parameters must be an object", false);
        refused_as(r#""rope_parameters": {"full_attention": 1}"#, "full_attention must be an object", false);
        refused_as(r#""rope_scaling": {"rope_type": 8}"#, "rope_scaling.rope_type must be a string", false);
        let llama3 =
            |factors: &str, original: &str| format!(r#""rope_scaling": {{"rope_type": "llama3", {factors}, "original_max_position_embeddings": {original}}}"#);
        refused_as(&llama3(r#""factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0"#, "64"), "low_freq_factor < high_freq_factor", false);
        refused_as(&llama3(r#""factor": 8.0, "low_freq_factor": 0.0, "high_freq_factor": 4.0"#, "64"), "low_freq_factor < high_freq_factor", false);
        refused_as(
            &llama3(r#""factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0"#, "0"),
            "original_max_position_embeddings must be a positive integer",
            false,
        );
        refused_as(
            &llama3(r#""factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0"#, "64.5"),
            "original_max_position_embeddings must be a positive integer",
            false,
        );
        refused_as(r#""rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}"#, "partial_rotary_factor", true);
        // GGUF's form: one positive factor per rotated pair.
        let c = llama("").unwrap();
        let with = |f: Vec<f32>| ModelConfig { rope_scaling: RopeScaling::FreqFactors(f), ..c.clone() }.validate();
        assert!(with(vec![1.0; 8]).is_ok());
        assert!(matches!(with(vec![1.0; 7]), Err(Error::Format(m)) if m.contains("needs 8")));
        assert!(matches!(with([vec![1.0; 7], vec![f32::NAN]].concat()), Err(Error::Format(m)) if m.contains("must be positive")));
    }

    /// An unsupported architecture or activation names config.json and its key, and shows a
    /// hostile value escaped (a NUL or newline stays inside the one line).
    #[test]
    fn unsupported_values_name_the_file_and_are_escaped() {
        let v: Value = serde_json::from_str(&format!("{{{LLAMA}}}")).unwrap();
        let mut gelu = v.as_object().unwrap().clone();
        gelu.insert("hidden_act".into(), Value::String("gelu\u{0}\n".into()));
        let mut gpt2 = v.as_object().unwrap().clone();
        gpt2.insert("architectures".into(), serde_json::json!(["GPT2\nLMHeadModel"]));
        for (m, needle) in [(gelu, "config.json: hidden_act: activation \"gelu\\0\\n\""), (gpt2, "config.json: architecture \"GPT2\\nLMHeadModel\"")] {
            match ModelConfig::from_hf_json(&Value::Object(m).to_string()) {
                Err(Error::Unsupported(msg)) => {
                    assert!(msg.contains(needle), "'{msg}' lacks '{needle}'");
                    assert!(!msg.contains('\n') && !msg.contains('\0'), "{msg:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn files_that_are_not_a_config_are_refused() {
        for (text, needle) in [
            ("", "not valid JSON"),
            ("{", "not valid JSON"),
            ("\"llama\"", "not a JSON object"),
            ("null", "not a JSON object"),
            ("{}", "config.json: architecture \"\""),
        ] {
            match ModelConfig::from_hf_json(text) {
                Err(Error::Format(m)) | Err(Error::Unsupported(m)) => assert!(m.contains(needle), "{text:?}: '{m}' lacks '{needle}'"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"] {
            let text = format!("{{{LLAMA}}}");
            let v: Value = serde_json::from_str(&text).unwrap();
            let mut m = v.as_object().unwrap().clone();
            m.remove(key);
            let err = ModelConfig::from_hf_json(&Value::Object(m).to_string()).unwrap_err();
            assert!(matches!(&err, Error::Format(m) if m.contains(&format!("has no integer '{key}'"))), "{key}: {err}");
        }
    }
}

//! From validated tensors to a `Model`: Hugging Face folders (config.json + safetensors) and
//! GGUF files. Tensor names, shapes and types are checked against the config; a missing or
//! mis-shaped tensor is an error naming it.
//!
//! Linear weights become packed `t2` matrices when the model is BitNet-style:
//! - HF packed checkpoints (uint8 [out/4, in], 4 codes per byte, `weight_scale` = 1/mean|W| for
//!   `BitLinear`, mean|W| for `AutoBitLinear`),
//! - HF latent float checkpoints, ternarized on load with absmean per tensor,
//! - GGUF TQ1_0 / TQ2_0 / I2_S tensors (exact codes and scales; 256-blocks whose scales differ
//!   within a row become `PerGroup(256)` scales).
//!
//! Embeddings, norms and the output layer keep a float storage (`FloatStorage`).
//!
//! binllm's post-training-quantized folders (`quantization_config.quant_method = "binllm"`) list
//! modules stored ready for the kernels; every other module loads as above. For a listed
//! module P (`"layers": {P: {"format": "t2" | "b1" | "t1.6" | "q8", "group_size": G}}`):
//! - packed formats: `P.weight` U8 [n, row_bytes], `PackedMatrix`'s bytes exactly;
//!   `P.weight_scale` F32/F16/BF16 [] or [1] (per tensor), [n] (per row, or OneBit's row side
//!   with `P.weight_col_scale` [k]) or [n, ceil(k / G)] (per group, G given); optional
//!   `P.weight_row_offset` [n].
//! - q8: `P.weight` I8 [n, k], `P.weight_scale` [n, ceil(k / 32)] (`Linear::Q8`); embeddings
//!   (`model.embed_tokens`) and `lm_head` included.

use super::config::{LinearKind, ModelConfig, RopeScaling, WeightScale};
use super::names::{gguf_name, hf_name, EMBED, LM_HEAD, NORM};
use super::{FloatStorage, KvType, Layer, Linear, Model};
use crate::error::{Error, Result};
use crate::formats::{PackedMatrix, ScaleKind, WeightFormat};
use crate::loader::{DType, GgufFile, SafetensorsFile, TensorView};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// Where each tensor lives, by the naming scheme of its file format.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Naming {
    HuggingFace,
    Gguf,
}

struct Tensors<'t, 'a> {
    by_name: HashMap<&'t str, &'t TensorView<'a>>,
    naming: Naming,
    /// The file each tensor came from, when the caller named its files: errors about a tensor
    /// start with it (a sharded folder has several).
    files: HashMap<&'t str, &'t str>,
    config: &'t ModelConfig,
    /// Modules stored ready for the kernels (binllm PTQ folders), by module path.
    quantized: HashMap<String, QuantizedModule>,
    /// Which of them were read, so that a listed module the model lacks is an error.
    used: RefCell<HashSet<String>>,
    /// Every tensor the model read: the rest must be on `CARRY_NOTHING` (strict loading).
    consumed: RefCell<HashSet<String>>,
    /// The output layer's storage when the host asked for one (`LoadOptions::output_storage`):
    /// the matrix is re-stored as soon as it is read, so the file's copy is gone before the
    /// layers are (a wasm32 memory never shrinks below its peak).
    output_storage: Option<FloatStorage>,
}

/// Tensors that checkpoints carry but that hold nothing the model needs, by name suffix: the
/// RoPE frequencies some transformers versions saved as buffers (binllm computes them from
/// the config, which is what transformers itself does on load). Any other tensor the model
/// does not read is an error naming it.
pub(crate) const CARRY_NOTHING: &[&str] = &[".rotary_emb.inv_freq"];

/// How a module of a binllm PTQ folder is stored (`quantization_config.layers`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum QuantizedModule {
    Packed { format: WeightFormat, group_size: Option<usize> },
    Q8,
}

/// The modules listed by `quantization_config` when its `quant_method` is "binllm".
fn quantized_modules(config_json: &str) -> Result<HashMap<String, QuantizedModule>> {
    let v: serde_json::Value = serde_json::from_str(config_json).map_err(|e| Error::Format(format!("config.json is not valid JSON: {e}")))?;
    let Some(q) = v.get("quantization_config").filter(|q| q.get("quant_method").and_then(|m| m.as_str()) == Some("binllm")) else {
        return Ok(HashMap::new());
    };
    let layers = match q.get("layers") {
        Some(serde_json::Value::Object(layers)) => layers,
        None => return Ok(HashMap::new()),
        Some(_) => crate::bail!(Format, "quantization_config.layers must be an object of module path -> {{\"format\": ...}}"),
    };
    let mut out = HashMap::new();
    for (path, spec) in layers {
        let what = format!("quantization_config.layers['{path}']");
        let format = spec.get("format").and_then(|f| f.as_str()).ok_or_else(|| Error::Format(format!("{what} has no string 'format'")))?;
        let group_size = match spec.get("group_size") {
            None | Some(serde_json::Value::Null) => None,
            Some(g) => match g.as_u64() {
                Some(g) if g > 0 => Some(usize::try_from(g).map_err(|_| Error::Format(format!("{what}: group_size {g} is too large")))?),
                _ => crate::bail!(Format, "{what}: group_size must be a positive integer, got {g}"),
            },
        };
        let module = match (format, WeightFormat::from_name(format)) {
            ("q8", _) if group_size.is_none() => QuantizedModule::Q8,
            ("q8", _) => crate::bail!(Format, "{what}: q8 has fixed blocks of {}; group_size does not apply", super::linear::Q8_BLOCK),
            (_, Some(format)) => QuantizedModule::Packed { format, group_size },
            (other, None) => crate::bail!(Format, "{what}: unknown format '{other}' (binllm stores t2, t1.6, b1 or q8)"),
        };
        out.insert(path.clone(), module);
    }
    Ok(out)
}

impl<'t, 'a> Tensors<'t, 'a> {
    /// The file's name of tensor `hf_part` (a Hugging Face name, without the layer prefix).
    fn name(&self, layer: Option<usize>, hf_part: &str) -> String {
        match self.naming {
            Naming::HuggingFace => hf_name(layer, hf_part),
            Naming::Gguf => gguf_name(layer, hf_part),
        }
    }

    /// "FILE: " for the file tensor `name` came from, or "" when the files are unnamed.
    fn file_of(&self, name: &str) -> String {
        self.files.get(name).map(|f| format!("{f}: ")).unwrap_or_default()
    }

    fn get(&self, name: &str) -> Result<&'t TensorView<'a>> {
        self.optional(name).ok_or_else(|| {
            // Named files: the error names them all, as no one of them has the tensor.
            let mut files: Vec<&str> = self.files.values().copied().collect();
            files.sort_unstable();
            files.dedup();
            let files = if files.is_empty() { String::new() } else { format!("{}: ", files.join(", ")) };
            Error::Format(format!("{files}missing tensor '{name}'"))
        })
    }

    /// A tensor that may be absent; reading it marks it consumed.
    fn optional(&self, name: &str) -> Option<&'t TensorView<'a>> {
        let t = self.by_name.get(name).copied()?;
        self.consumed.borrow_mut().insert(name.to_string());
        Some(t)
    }

    /// Strict loading: every tensor of the checkpoint was read, or carries nothing.
    fn check_all_consumed(&self) -> Result<()> {
        let consumed = self.consumed.borrow();
        let mut extra: Vec<&str> = self.by_name.keys().copied().filter(|n| !consumed.contains(*n) && !CARRY_NOTHING.iter().any(|s| n.ends_with(s))).collect();
        if extra.is_empty() {
            return Ok(());
        }
        extra.sort();
        let more = if extra.len() > 1 { format!(" (and {} more)", extra.len() - 1) } else { String::new() };
        crate::bail!(
            Format,
            "{}tensor '{}'{more} is not used by this model ({} {}); binllm refuses tensors it would ignore",
            self.file_of(extra[0]),
            extra[0],
            self.config.architecture,
            if self.config.sub_norms.any() { "with sub-norms" } else { "without sub-norms" }
        )
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.numel() != len {
            crate::bail!(Format, "{}tensor '{name}' has shape {:?}; expected {len} values", self.file_of(name), t.shape);
        }
        t.to_f32()
    }

    fn matrix_f32(&self, name: &str, n: usize, k: usize) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.shape != [n, k] {
            crate::bail!(Format, "{}tensor '{name}' has shape {:?}; expected [{n}, {k}]", self.file_of(name), t.shape);
        }
        t.to_f32()
    }

    /// The stored form of weight `name` when a binllm PTQ folder lists its module.
    fn quantized_module(&self, name: &str) -> Option<(String, QuantizedModule)> {
        let path = name.strip_suffix(".weight")?;
        let module = *self.quantized.get(path)?;
        self.used.borrow_mut().insert(path.to_string());
        Some((path.to_string(), module))
    }

    /// A module of a binllm PTQ folder (module docs), shape (n, k).
    fn stored_linear(&self, path: &str, module: QuantizedModule, n: usize, k: usize) -> Result<Linear> {
        let weight_name = format!("{path}.weight");
        let t = self.get(&weight_name)?;
        let scale_name = format!("{path}.weight_scale");
        let scale = self.get(&scale_name)?;
        let float_values = |t: &TensorView<'_>, name: &str| -> Result<Vec<f32>> {
            if !matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) {
                crate::bail!(Format, "{}tensor '{name}' is {}; scales and offsets must be F32, F16 or BF16", self.file_of(name), t.dtype.name());
            }
            let v = t.to_f32()?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                crate::bail!(Format, "{}tensor '{name}' holds a non-finite value ({}) at index {i}", self.file_of(name), v[i]);
            }
            Ok(v)
        };
        let QuantizedModule::Packed { format, group_size } = module else {
            let blocks = k.div_ceil(super::linear::Q8_BLOCK);
            if t.dtype != DType::I8 || t.shape != [n, k] {
                crate::bail!(Format, "{}q8 tensor '{weight_name}' is {} {:?}; expected I8 [{n}, {k}]", self.file_of(&weight_name), t.dtype.name(), t.shape);
            }
            if scale.shape != [n, blocks] {
                crate::bail!(
                    Format,
                    "{}tensor '{scale_name}' has shape {:?}; q8 needs [{n}, {blocks}] (one scale per {} weights of a row)",
                    self.file_of(&scale_name),
                    scale.shape,
                    super::linear::Q8_BLOCK
                );
            }
            let scales = float_values(scale, &scale_name)?;
            let q = t.data.iter().map(|&b| b as i8).collect();
            return Ok(Linear::Q8 { q, scales, n, k });
        };
        let row_bytes = format.row_bytes(k);
        if t.dtype != DType::U8 || t.shape != [n, row_bytes] {
            crate::bail!(
                Format,
                "{}packed tensor '{weight_name}' is {} {:?}; format {} with shape ({n}, {k}) needs U8 [{n}, {row_bytes}] ({} weights per 64-byte block, rows padded)",
                self.file_of(&weight_name),
                t.dtype.name(),
                t.shape,
                format.name(),
                format.spec().block_weights
            );
        }
        let col_name = format!("{path}.weight_col_scale");
        let col = match self.optional(&col_name) {
            Some(c) if c.shape != [k] => crate::bail!(Format, "{}tensor '{col_name}' has shape {:?}; expected [{k}]", self.file_of(&col_name), c.shape),
            Some(c) => Some(float_values(c, &col_name)?),
            None => None,
        };
        let values = float_values(scale, &scale_name)?;
        let kind = match (scale.shape.as_slice(), group_size, col) {
            ([] | [1], None, None) => ScaleKind::PerTensor(values[0]),
            ([] | [1], None, Some(col)) => ScaleKind::OneBit { row: vec![values[0]; n], col },
            ([rows], None, None) if *rows == n => ScaleKind::PerRow(values),
            ([rows], None, Some(col)) if *rows == n => ScaleKind::OneBit { row: values, col },
            ([rows, groups], Some(group), None) if *rows == n && *groups == k.div_ceil(group) => ScaleKind::PerGroup { group, scales: values },
            (_, Some(group), Some(_)) => crate::bail!(Format, "module '{path}' has group_size {group} and '{col_name}'; column scales apply to per-tensor or per-row scales only"),
            (shape, Some(group), None) => crate::bail!(
                Format,
                "{}tensor '{scale_name}' has shape {shape:?}; group_size {group} needs [{n}, {}] (rows x ceil({k} / {group}) groups)",
                self.file_of(&scale_name),
                k.div_ceil(group)
            ),
            (shape, None, _) => crate::bail!(
                Format,
                "{}tensor '{scale_name}' has shape {shape:?}; expected [] or [1] (per tensor) or [{n}] (per row), or [{n}, groups] with group_size in quantization_config",
                self.file_of(&scale_name)
            ),
        };
        // t2's field 3 is no ternary code (a low and a high bit both set).
        if format == WeightFormat::Ternary2 && t.data.iter().any(|&b| b & (b >> 1) & 0x55 != 0) {
            crate::bail!(Format, "{}packed tensor '{weight_name}' holds the 2-bit field 3, which is not a t2 code", self.file_of(&weight_name));
        }
        let in_file = |e: Error| match e {
            Error::InvalidArgument(m) => Error::Format(format!("module '{path}': {m}")),
            other => other,
        };
        let mut matrix = PackedMatrix::from_packed(format, n, k, t.data.to_vec(), kind).map_err(in_file)?;
        let offset_name = format!("{path}.weight_row_offset");
        if let Some(o) = self.optional(&offset_name) {
            if o.shape != [n] {
                crate::bail!(Format, "{}tensor '{offset_name}' has shape {:?}; expected [{n}]", self.file_of(&offset_name), o.shape);
            }
            matrix = matrix.with_row_offset(float_values(o, &offset_name)?).map_err(in_file)?;
        }
        Ok(Linear::Packed(matrix))
    }

    /// A decoder linear layer of shape (n out, k in).
    fn linear(&self, name: &str, n: usize, k: usize) -> Result<Linear> {
        if let Some((path, module)) = self.quantized_module(name) {
            return self.stored_linear(&path, module, n, k);
        }
        let t = self.get(name)?;
        let bitnet = self.config.linear == LinearKind::BitNet;
        if t.dtype.is_ternary() {
            if t.shape != [n, k] {
                crate::bail!(Format, "{}tensor '{name}' has shape {:?}; expected [{n}, {k}]", self.file_of(name), t.shape);
            }
            return match t.to_ternary() {
                Ok(tt) => {
                    let first = tt.row_scales.first().copied().unwrap_or(1.0);
                    let scale = if tt.row_scales.iter().all(|&s| s == first) { ScaleKind::PerTensor(first) } else { ScaleKind::PerRow(tt.row_scales) };
                    Ok(Linear::Packed(PackedMatrix::pack(WeightFormat::Ternary2, &tt.codes, n, k, scale)?))
                }
                // 256-blocks whose scales differ within a row (llama.cpp's own quantizer):
                // one scale group per block.
                Err(Error::Unsupported(_)) => {
                    let tt = t.to_ternary_block_scaled()?;
                    let scale = ScaleKind::PerGroup { group: tt.block_len, scales: tt.block_scales };
                    PackedMatrix::pack(WeightFormat::Ternary2, &tt.codes, n, k, scale)
                        .map(Linear::Packed)
                        .map_err(|e| Error::Format(format!("{}tensor '{name}': {e}", self.file_of(name))))
                }
                Err(e) => Err(e),
            };
        }
        if bitnet && t.dtype == DType::U8 && self.naming == Naming::HuggingFace {
            return self.hf_packed_linear(name, t, n, k);
        }
        if bitnet {
            let w = self.matrix_f32(name, n, k)?;
            // A GGUF float tensor of a BitNet model holds code * scale already (llama.cpp's
            // converter and binllm's F16 fallback write it so): keep those codes and that scale.
            // Re-quantizing with absmean would give scale * mean|code| instead.
            if self.naming == Naming::Gguf {
                if let Some((codes, scale)) = exact_ternary(&w) {
                    return Ok(Linear::Packed(PackedMatrix::pack(WeightFormat::Ternary2, &codes, n, k, ScaleKind::PerTensor(scale))?));
                }
            }
            let (codes, scale) = absmean_ternary(&w);
            return Ok(Linear::Packed(PackedMatrix::pack(WeightFormat::Ternary2, &codes, n, k, ScaleKind::PerTensor(scale))?));
        }
        self.float_matrix(name, n, k)
    }

    /// A float-valued matrix kept about as compact as in the file (see `FloatStorage`), or the
    /// stored form a binllm PTQ folder lists for it (embeddings, output layer).
    fn float_matrix(&self, name: &str, n: usize, k: usize) -> Result<Linear> {
        if let Some((path, module)) = self.quantized_module(name) {
            return self.stored_linear(&path, module, n, k);
        }
        let t = self.get(name)?;
        if t.dtype == DType::Q6_K && t.shape == [n, k] && k.is_multiple_of(crate::kernels::q6k::Q6K_WEIGHTS) {
            // Kept as the file's blocks (6.56 bits a weight), not widened to 8-bit ones.
            return Linear::q6k(t.bytes()?.into_owned(), n, k);
        }
        let storage = match t.dtype {
            DType::F32 | DType::F64 => FloatStorage::F32,
            DType::F16 | DType::BF16 => FloatStorage::F16,
            _ => FloatStorage::Q8,
        };
        if storage == FloatStorage::F16 {
            // Straight to f16, never through an f32 copy (twice the bytes: for a 128256 x 2560
            // embedding, 1.3 GB that a wasm32 memory would keep after the load).
            if t.shape != [n, k] {
                crate::bail!(Format, "{}tensor '{name}' has shape {:?}; expected [{n}, {k}]", self.file_of(name), t.shape);
            }
            return Ok(Linear::half(t.to_f16()?, n, k));
        }
        Ok(Linear::float(self.matrix_f32(name, n, k)?, n, k, storage))
    }

    /// transformers' packed BitNet layout (microsoft/bitnet-b1.58-2B-4T, Falcon3-1.58bit,
    /// HF1BitLLM): uint8 [n/4, k]; bits 2i..2i+1 of packed row r hold output row i * (n/4) + r,
    /// value = field - 1; `weight_scale` [1] divides or multiplies by `linear_class`
    /// (`WeightScale`).
    fn hf_packed_linear(&self, name: &str, t: &TensorView<'a>, n: usize, k: usize) -> Result<Linear> {
        if !n.is_multiple_of(4) || t.shape != [n / 4, k] {
            crate::bail!(Format, "{}packed tensor '{name}' has shape {:?}; expected [{}, {k}] (4 rows per byte)", self.file_of(name), t.shape, n / 4);
        }
        let scale_name = name.strip_suffix(".weight").map(|p| format!("{p}.weight_scale")).unwrap_or_default();
        let stored = self.vector(&scale_name, 1)?[0];
        if !(stored.is_finite() && stored > 0.0) {
            crate::bail!(Format, "{}tensor '{scale_name}' must be a positive number, got {stored}", self.file_of(&scale_name));
        }
        let quarter = n / 4;
        let mut codes = vec![0i8; n * k];
        for (r, row) in t.data.chunks_exact(k).enumerate() {
            for (c, &byte) in row.iter().enumerate() {
                for i in 0..4 {
                    let field = (byte >> (2 * i)) & 3;
                    if field == 3 {
                        crate::bail!(Format, "{}packed tensor '{name}' holds the invalid 2-bit value 3 (row {r}, column {c})", self.file_of(name));
                    }
                    codes[(i * quarter + r) * k + c] = field as i8 - 1;
                }
            }
        }
        let scale = match self.config.weight_scale {
            WeightScale::Divide => 1.0 / stored,
            WeightScale::Multiply => stored,
        };
        Ok(Linear::Packed(PackedMatrix::pack(WeightFormat::Ternary2, &codes, n, k, ScaleKind::PerTensor(scale))?))
    }

    fn build(&self) -> Result<Model> {
        let c = self.config;
        let (d, hd) = (c.hidden, c.head_dim);
        let output = |m: Linear| match self.output_storage {
            Some(storage) if m.float_storage() != Some(storage) => m.restored(storage),
            _ => Ok(m),
        };
        let embed = self.float_matrix(&self.name(None, EMBED), c.vocab, d)?;
        let (embed, lm_head) =
            if c.tie_embeddings { (output(embed)?, None) } else { (embed, Some(output(self.float_matrix(&self.name(None, LM_HEAD), c.vocab, d)?)?)) };
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let n = |p: &str| self.name(Some(i), p);
            let sub = |attn_side: bool, len: usize| -> Result<Option<Vec<f32>>> {
                let Some((attn, ffn)) = c.sub_norms.hf_names() else { return Ok(None) };
                self.vector(&n(if attn_side { attn } else { ffn }), len).map(Some)
            };
            layers.push(Layer {
                attn_norm: self.vector(&n("input_layernorm.weight"), d)?,
                q: self.linear(&n("self_attn.q_proj.weight"), c.heads * hd, d)?,
                k: self.linear(&n("self_attn.k_proj.weight"), c.kv_heads * hd, d)?,
                v: self.linear(&n("self_attn.v_proj.weight"), c.kv_heads * hd, d)?,
                o: self.linear(&n("self_attn.o_proj.weight"), d, c.heads * hd)?,
                attn_sub_norm: sub(true, c.heads * hd)?,
                ffn_norm: self.vector(&n("post_attention_layernorm.weight"), d)?,
                gate: self.linear(&n("mlp.gate_proj.weight"), c.intermediate, d)?,
                up: self.linear(&n("mlp.up_proj.weight"), c.intermediate, d)?,
                down: self.linear(&n("mlp.down_proj.weight"), d, c.intermediate)?,
                ffn_sub_norm: sub(false, c.intermediate)?,
            });
        }
        let used = self.used.borrow();
        let mut unused: Vec<&String> = self.quantized.keys().filter(|p| !used.contains(*p)).collect();
        if !unused.is_empty() {
            unused.sort();
            crate::bail!(Format, "quantization_config lists module '{}', which is not a linear layer or embedding of this model", unused[0]);
        }
        let norm = self.vector(&self.name(None, NORM), d)?;
        if matches!(c.rope_scaling, RopeScaling::FreqFactors(_)) {
            // Read by `ModelConfig::from_gguf`.
            self.get("rope_freqs.weight")?;
        }
        drop(used);
        self.check_all_consumed()?;
        Ok(Model { config: c.clone(), embed, layers, norm, lm_head, act_quant: true, kv_type: KvType::F16 })
    }
}

/// BitNet b1.58 weight quantization: codes `clamp(round(W / mean|W|), -1, 1)` (mean clamped at
/// 1e-5, round half to even as torch does) and the per-tensor scale mean|W|.
pub fn absmean_ternary(w: &[f32]) -> (Vec<i8>, f32) {
    let mean = (w.iter().map(|v| v.abs() as f64).sum::<f64>() / w.len().max(1) as f64) as f32;
    let inv = 1.0 / mean.max(1e-5);
    let codes = w.iter().map(|v| (v * inv).round_ties_even().clamp(-1.0, 1.0) as i8).collect();
    (codes, 1.0 / inv)
}

/// `Some((codes, s))` when every value of `w` is 0 or +-s for one s > 0 (an already ternary
/// tensor stored as floats); None otherwise.
pub fn exact_ternary(w: &[f32]) -> Option<(Vec<i8>, f32)> {
    let s = w.iter().find(|v| **v != 0.0)?.abs();
    if !(s.is_finite() && s > 0.0) {
        return None;
    }
    let mut codes = Vec::with_capacity(w.len());
    for &v in w {
        codes.push(if v == 0.0 {
            0
        } else if v == s {
            1
        } else if v == -s {
            -1
        } else {
            return None;
        });
    }
    Some((codes, s))
}

impl Model {
    /// A model from a Hugging Face folder's config.json text and its safetensors files.
    pub fn from_hf(config_json: &str, files: &[SafetensorsFile<'_>]) -> Result<Model> {
        Model::from_hf_named(config_json, files, &[])
    }

    /// `from_hf` with the files' names (`names[i]` is `files[i]`'s, or none at all): an error
    /// about a tensor names the file it came from.
    pub fn from_hf_named(config_json: &str, files: &[SafetensorsFile<'_>], names: &[String]) -> Result<Model> {
        Model::build_hf(config_json, files, names, None)
    }

    fn build_hf(config_json: &str, files: &[SafetensorsFile<'_>], names: &[String], output_storage: Option<FloatStorage>) -> Result<Model> {
        let config = ModelConfig::from_hf_json(config_json)?;
        let mut by_name = HashMap::new();
        let mut file_of = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for t in &f.tensors {
                if by_name.insert(t.name.as_str(), t).is_some() {
                    crate::bail!(Format, "tensor '{}' appears in more than one file", t.name);
                }
                if let Some(name) = names.get(i) {
                    file_of.insert(t.name.as_str(), name.as_str());
                }
            }
        }
        let quantized = quantized_modules(config_json)?;
        Tensors {
            by_name,
            naming: Naming::HuggingFace,
            files: file_of,
            config: &config,
            quantized,
            used: RefCell::default(),
            consumed: RefCell::default(),
            output_storage,
        }
        .build()
    }

    /// A model from a parsed GGUF file.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Model> {
        Model::build_gguf(file, None)
    }

    fn build_gguf(file: &GgufFile<'_>, output_storage: Option<FloatStorage>) -> Result<Model> {
        let config = ModelConfig::from_gguf(file)?;
        let by_name = file.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let files = HashMap::new(); // one file: the caller that opened it names it (`Error::in_file`)
        Tensors {
            by_name,
            naming: Naming::Gguf,
            files,
            config: &config,
            quantized: HashMap::new(),
            used: RefCell::default(),
            consumed: RefCell::default(),
            output_storage,
        }
        .build()
    }
}

/// How a loaded model is stored and run, chosen by each host at load: int8 activations for
/// BitNet-style linears (`act_quant`, off only for float reference runs), the output layer's
/// storage, the ternary linears' packed format, the KV cache's type. The default keeps what
/// the checkpoint holds and caches keys and values as f16.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadOptions {
    pub act_quant: bool,
    pub output_storage: Option<FloatStorage>,
    pub ternary_format: Option<WeightFormat>,
    pub kv_type: KvType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { act_quant: true, output_storage: None, ternary_format: None, kv_type: KvType::F16 }
    }
}

impl LoadOptions {
    /// The options as hosts name them: `output_type` f32 / f16 / q8_0 / q6_k, `ternary_format`
    /// t2 / t1.6, `kv_type` f16 / f32.
    pub fn from_names(act_quant: bool, output_type: Option<&str>, ternary_format: Option<&str>, kv_type: Option<&str>) -> Result<Self> {
        let output_storage = output_type.map(FloatStorage::from_name).transpose()?;
        let ternary_format = match ternary_format {
            None => None,
            Some(name) => Some(
                WeightFormat::from_name(name)
                    .filter(|f| f.is_ternary())
                    .ok_or_else(|| Error::InvalidArgument(format!("ternary_format '{name}' (binllm stores ternary linears as t2 or t1.6)")))?,
            ),
        };
        let kv_type = kv_type.map(KvType::from_name).transpose()?.unwrap_or(KvType::F16);
        Ok(LoadOptions { act_quant, output_storage, ternary_format, kv_type })
    }

    /// A model from a parsed GGUF file, stored and run as these options say (`apply`), its
    /// output layer re-stored as it is read.
    pub fn gguf(&self, file: &GgufFile<'_>) -> Result<Model> {
        self.apply(Model::build_gguf(file, self.output_storage)?)
    }

    /// `Model::from_hf_named`, stored and run as these options say (`apply`), its output layer
    /// re-stored as it is read.
    pub fn hf(&self, config_json: &str, files: &[SafetensorsFile<'_>], names: &[String]) -> Result<Model> {
        self.apply(Model::build_hf(config_json, files, names, self.output_storage)?)
    }

    /// `model` stored and run as these options say, its weights on huge pages where the
    /// operating system has them (`Model::use_huge_pages`).
    pub fn apply(&self, mut model: Model) -> Result<Model> {
        if let Some(storage) = self.output_storage {
            model.set_output_storage(storage)?;
        }
        if let Some(format) = self.ternary_format {
            model.set_ternary_format(format)?;
        }
        model.act_quant = self.act_quant;
        model.kv_type = self.kv_type;
        model.use_huge_pages();
        Ok(model)
    }
}

/// The safetensors files that a Hugging Face folder's `model.safetensors.index.json` (its text)
/// names, sorted and distinct: the one shard listing of the native loader, PTQ and the browser
/// worker. A name that could leave the folder (a path separator, or a leading '.') is refused.
pub fn index_shard_names(index_json: &str) -> Result<Vec<String>> {
    const INDEX: &str = "model.safetensors.index.json";
    let v: serde_json::Value = serde_json::from_str(index_json).map_err(|e| Error::Format(format!("{INDEX}: {e}")))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Format(format!("{INDEX} has no weight_map object")))?;
    let mut files = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let Some(f) = file.as_str() else { crate::bail!(Format, "{INDEX} maps '{tensor}' to {file}, not a file name") };
        if f.contains('/') || f.contains('\\') || f.starts_with('.') || f.is_empty() {
            crate::bail!(Format, "{INDEX} names a file outside the folder: '{f}'");
        }
        files.push(f.to_string());
    }
    files.sort();
    files.dedup();
    Ok(files)
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use crate::model::defaults::GenerationDefaults;
    use std::path::{Path, PathBuf};

    /// Memory-maps a file read-only. The map is dropped once the model is built, so only the
    /// packed weights stay resident.
    pub fn map_file(path: &Path) -> Result<memmap2::Mmap> {
        // Opening a FIFO blocks until a writer comes: only regular files are models.
        let meta = std::fs::metadata(path).map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
        if !meta.is_file() {
            crate::bail!(Format, "{} is not a regular file", path.display());
        }
        let f = std::fs::File::open(path).map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
        // SAFETY: the map is read-only and lives only while the model is being built; a file
        // truncated meanwhile by another process could fault, as with any mmap reader.
        unsafe { memmap2::Mmap::map(&f) }.map_err(Error::Io)
    }

    /// The safetensors files of a Hugging Face folder (single file or sharded index).
    pub fn hf_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index)?;
            let names = index_shard_names(&text).map_err(|e| Error::Format(format!("{}: {e}", dir.display())))?;
            return Ok(names.iter().map(|f| dir.join(f)).collect());
        }
        crate::bail!(Format, "{} has neither model.safetensors nor model.safetensors.index.json", dir.display())
    }

    /// A model with what generation needs beside it (`load_with_defaults`).
    pub struct Loaded {
        pub model: Model,
        /// The tokenizer as a Hugging Face tokenizer.json: the folder's file, or the one a
        /// GGUF file's metadata describes (`tokenizer::hf_json_from_gguf`); `None` for a
        /// folder without one.
        pub tokenizer_json: Option<String>,
        pub defaults: GenerationDefaults,
    }

    /// A text file of a model folder, `None` when absent; only regular files are read (a FIFO
    /// would block).
    pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))),
            Ok(m) if !m.is_file() => crate::bail!(Format, "{} is not a regular file", path.display()),
            Ok(_) => std::fs::read_to_string(path).map(Some).map_err(|e| Error::Format(format!("{}: {e}", path.display()))),
        }
    }

    /// Loads a model from a Hugging Face folder or a `.gguf` file with its tokenizer and
    /// generation defaults, each file read and parsed once, stored and run as `options` say.
    pub fn load_with_defaults(path: &Path, options: &LoadOptions) -> Result<Loaded> {
        if path.is_dir() {
            let model = load_path(path, options)?;
            let text = |name: &str| read_optional(&path.join(name));
            let tokenizer_json = text("tokenizer.json")?;
            let defaults = GenerationDefaults::from_hf(
                &model.config,
                tokenizer_json.as_deref(),
                text("generation_config.json")?.as_deref(),
                text("tokenizer_config.json")?.as_deref(),
                text("chat_template.jinja")?.as_deref(),
            )?;
            Ok(Loaded { model, tokenizer_json, defaults })
        } else {
            let m = map_file(path)?;
            (|| {
                let file = GgufFile::parse(&m)?;
                let model = options.gguf(&file)?;
                let tokenizer_json = Some(crate::tokenizer::hf_json_from_gguf(&file)?);
                let defaults = GenerationDefaults::from_gguf(&model.config, &file)?;
                Ok(Loaded { model, tokenizer_json, defaults })
            })()
            .map_err(|e: Error| e.in_file(path))
        }
    }

    /// Loads a model from a Hugging Face folder or a `.gguf` file, stored and run as `options`
    /// say.
    pub fn load_path(path: &Path, options: &LoadOptions) -> Result<Model> {
        if path.is_dir() {
            let config_path = path.join("config.json");
            let config =
                std::fs::read_to_string(&config_path).map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", config_path.display()))))?;
            let paths = hf_weight_files(path)?;
            let maps = paths.iter().map(|p| map_file(p)).collect::<Result<Vec<_>>>()?;
            let files = maps.iter().zip(&paths).map(|(m, p)| SafetensorsFile::parse(m).map_err(|e| e.in_file(p))).collect::<Result<Vec<_>>>()?;
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            options.hf(&config, &files, &names)
        } else {
            let m = map_file(path)?;
            GgufFile::parse(&m).and_then(|f| options.gguf(&f)).map_err(|e| e.in_file(path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny llama (hidden 64, 2 heads of 32, 1 KV head, intermediate 96, vocab 16).
    const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "vocab_size": 16, "tie_word_embeddings": false, "quantization_config": {"quant_method": "binllm", "layers": LAYERS}}"#;

    type Tensor = (String, &'static str, Vec<usize>, Vec<u8>);

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn float(name: &str, shape: &[usize], value: f32) -> Tensor {
        (name.to_string(), "F32", shape.to_vec(), f32s(&vec![value; shape.iter().product()]))
    }

    /// Every tensor of the tiny llama in f32, except those `stored` replaces.
    fn tensors(stored: Vec<Tensor>) -> Vec<Tensor> {
        let p = "model.layers.0.";
        let mut all = vec![
            float("model.embed_tokens.weight", &[16, 64], 0.01),
            float("lm_head.weight", &[16, 64], 0.02),
            float("model.norm.weight", &[64], 1.0),
            float(&format!("{p}input_layernorm.weight"), &[64], 1.0),
            float(&format!("{p}post_attention_layernorm.weight"), &[64], 1.0),
        ];
        for (m, n, k) in [
            ("self_attn.q_proj", 64, 64),
            ("self_attn.k_proj", 32, 64),
            ("self_attn.v_proj", 32, 64),
            ("self_attn.o_proj", 64, 64),
            ("mlp.gate_proj", 96, 64),
            ("mlp.up_proj", 96, 64),
            ("mlp.down_proj", 64, 96),
        ] {
            all.push(float(&format!("{p}{m}.weight"), &[n, k], 0.03));
        }
        all.retain(|t| !stored.iter().any(|s| s.0 == t.0));
        all.extend(stored);
        all
    }

    fn safetensors(tensors: &[Tensor]) -> Vec<u8> {
        let mut data = Vec::new();
        let mut header = serde_json::Map::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
        }
        let header = serde_json::Value::Object(header).to_string();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&data);
        out
    }

    fn load(layers: &str, stored: Vec<Tensor>) -> Result<Model> {
        let bytes = safetensors(&tensors(stored));
        let file = SafetensorsFile::parse(&bytes)?;
        Model::from_hf(&CONFIG.replace("LAYERS", layers), &[file])
    }

    const Q: &str = "model.layers.0.self_attn.q_proj";
    const GATE: &str = "model.layers.0.mlp.gate_proj";

    /// q_proj as t2 with groups of 256 over k = 64 (one group): 64 rows of 64 bytes.
    fn q_t2(row_bytes: usize, scales: Vec<usize>, scale_values: Vec<f32>) -> Vec<Tensor> {
        vec![
            (format!("{Q}.weight"), "U8", vec![64, row_bytes], vec![0b0110_0101; 64 * row_bytes]),
            (format!("{Q}.weight_scale"), "F32", scales, f32s(&scale_values)),
        ]
    }

    #[test]
    fn load_options_are_named_checked_and_applied() {
        assert_eq!(LoadOptions::from_names(true, None, None, None).unwrap(), LoadOptions::default());
        let named = LoadOptions::from_names(false, Some("q8_0"), Some("t1.6"), Some("f32")).unwrap();
        assert_eq!(
            named,
            LoadOptions { act_quant: false, output_storage: Some(FloatStorage::Q8), ternary_format: Some(WeightFormat::Ternary1_6), kv_type: KvType::F32 }
        );
        assert!(matches!(LoadOptions::from_names(true, None, Some("b1"), None), Err(Error::InvalidArgument(m)) if m.contains("t2 or t1.6")));
        assert!(LoadOptions::from_names(true, Some("f8"), None, None).is_err());
        assert!(matches!(LoadOptions::from_names(true, None, None, Some("q8_0")), Err(Error::InvalidArgument(m)) if m.contains("f16 or f32")));
        let options = LoadOptions { ternary_format: None, ..named };
        let model = options.apply(load("{}", vec![]).unwrap()).unwrap();
        assert!(!model.act_quant);
        assert!(matches!(model.lm_head, Some(Linear::Q8 { .. })));
        assert_eq!(model.new_cache(8).kv_type(), KvType::F32);
        // Re-stored as it is read (`LoadOptions::hf`): the same model as re-stored afterwards.
        let bytes = safetensors(&tensors(vec![]));
        let early = options.hf(&CONFIG.replace("LAYERS", "{}"), &[SafetensorsFile::parse(&bytes).unwrap()], &[]).unwrap();
        assert_eq!((early.output_storage(), early.nbytes(), early.act_quant), ("q8", model.nbytes(), false));
        let ids = [1, 5, 9];
        let logits = |m: &Model| m.forward(&ids, &mut m.new_cache(4), true).unwrap();
        assert_eq!(logits(&early), logits(&model));
    }

    #[test]
    fn tensor_summary_lists_every_linear_in_model_order() {
        let model = load("{}", vec![]).unwrap();
        let rows = model.tensor_summary();
        let kinds: Vec<&str> = rows.iter().map(|t| t.kind).collect();
        assert_eq!(kinds, ["embedding", "attention", "attention", "attention", "attention", "mlp", "mlp", "mlp", "output"]);
        assert_eq!(rows[2], crate::model::TensorSummary { kind: "attention", storage: "f32", parameters: 32 * 64, bytes: 32 * 64 * 4 });
        // Only the three norm vectors (final, input, post-attention) are left out.
        assert_eq!(rows.iter().map(|t| t.bytes).sum::<usize>() + 3 * 64 * 4, model.nbytes());
    }

    #[test]
    fn shard_listing_is_sorted_distinct_and_stays_in_the_folder() {
        let names = index_shard_names(r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}}"#).unwrap();
        assert_eq!(names, ["m-1.safetensors", "m-2.safetensors"]);
        for (index, needle) in [
            (r#"{"weight_map": {"a": "../outside.safetensors"}}"#, "outside the folder: '../outside.safetensors'"),
            (r#"{"weight_map": {"a": "sub/m.safetensors"}}"#, "outside the folder"),
            (r#"{"weight_map": {"a": "sub\\m.safetensors"}}"#, "outside the folder: 'sub\\m"),
            (r#"{"weight_map": {"a": ".hidden"}}"#, "outside the folder"),
            (r#"{"weight_map": {"a": 3}}"#, "not a file name"),
            (r#"{"metadata": {}}"#, "no weight_map"),
            ("[", "model.safetensors.index.json"),
        ] {
            match index_shard_names(index) {
                Err(Error::Format(m)) => assert!(m.contains(needle), "'{m}' lacks '{needle}'"),
                other => panic!("{index}: expected a Format error, got {other:?}"),
            }
        }
    }

    #[test]
    fn reads_listed_modules_as_stored() {
        let mut stored = q_t2(64, vec![64, 1], (0..64).map(|i| i as f32 * 0.1).collect());
        stored.push((format!("{GATE}.weight"), "U8", vec![96, 64], vec![0xA5; 96 * 64]));
        stored.push((format!("{GATE}.weight_scale"), "F32", vec![96], f32s(&[0.5; 96])));
        stored.push((format!("{GATE}.weight_col_scale"), "F32", vec![64], f32s(&[2.0; 64])));
        stored.push((format!("{GATE}.weight_row_offset"), "F32", vec![96], f32s(&[-0.25; 96])));
        stored.push(("model.embed_tokens.weight".into(), "I8", vec![16, 64], vec![3u8; 16 * 64]));
        stored.push(("model.embed_tokens.weight_scale".into(), "F32", vec![16, 2], f32s(&[0.5; 32])));
        let layers = format!(r#"{{"{Q}": {{"format": "t2", "group_size": 256}}, "{GATE}": {{"format": "b1"}}, "model.embed_tokens": {{"format": "q8"}}}}"#);
        let model = load(&layers, stored).unwrap();
        let Linear::Packed(q) = &model.layers[0].q else { panic!("q_proj not packed") };
        assert_eq!(q.scale(), &ScaleKind::PerGroup { group: 256, scales: (0..64).map(|i| i as f32 * 0.1).collect() });
        let Linear::Packed(gate) = &model.layers[0].gate else { panic!("gate_proj not packed") };
        assert!(matches!(gate.scale(), ScaleKind::OneBit { .. }));
        assert_eq!(gate.row_offset(), Some(&[-0.25f32; 96][..]));
        let mut row = Vec::new();
        gate.decode_row_f32(0, &mut row);
        // 0xA5 = bits 0, 2, 5, 7 set: plane 0 (weight 0) is +1, plane 1 (weight 64) is -1.
        assert_eq!(row[0], 0.5 * 2.0 - 0.25);
        assert_eq!(row[63], 0.5 * 2.0 - 0.25);
        assert_eq!(gate.unpack()[..2], [1, 1]);
        let Linear::Q8 { q, scales, .. } = &model.embed else { panic!("embeddings not q8") };
        assert_eq!((q[0], scales.len()), (3, 32));
        assert!(matches!(model.layers[0].k, Linear::Float { .. }));
    }

    fn rejects(layers: &str, stored: Vec<Tensor>, needle: &str) {
        match load(layers, stored) {
            Err(Error::Format(m)) => assert!(m.contains(needle), "'{m}' lacks '{needle}'"),
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(_) => panic!("accepted; expected an error with '{needle}'"),
        }
    }

    #[test]
    fn a_missing_tensor_names_the_files_it_is_missing_from() {
        let mut all = tensors(vec![]);
        all.retain(|t| t.0 != "model.norm.weight");
        let (a, b) = all.split_at(all.len() / 2);
        let (a, b) = (safetensors(a), safetensors(b));
        let files = [SafetensorsFile::parse(&a).unwrap(), SafetensorsFile::parse(&b).unwrap()];
        let names = ["m-2.safetensors".to_string(), "m-1.safetensors".to_string()];
        let e = Model::from_hf_named(&CONFIG.replace("LAYERS", "{}"), &files, &names).err().expect("a missing tensor loads").to_string();
        assert!(e.contains("m-1.safetensors, m-2.safetensors: missing tensor 'model.norm.weight'"), "{e}");
        // Unnamed files (one GGUF, bytes from a host): whoever opened the file names it.
        let e = Model::from_hf(&CONFIG.replace("LAYERS", "{}"), &files).err().expect("a missing tensor loads").to_string();
        assert_eq!(e, "malformed model file: missing tensor 'model.norm.weight'");
    }

    #[test]
    fn rejects_malformed_stored_modules() {
        let t2 = format!(r#"{{"{Q}": {{"format": "t2"}}}}"#);
        let grouped = format!(r#"{{"{Q}": {{"format": "t2", "group_size": 256}}}}"#);
        rejects(&t2, q_t2(63, vec![1], vec![1.0]), "needs U8 [64, 64]");
        rejects(&t2, q_t2(64, vec![63], vec![1.0; 63]), "expected [] or [1]");
        rejects(&t2, q_t2(64, vec![1], vec![f32::NAN]), "non-finite");
        rejects(&t2, q_t2(64, vec![64], [vec![1.0; 63], vec![f32::INFINITY]].concat()), "non-finite");
        rejects(&grouped, q_t2(64, vec![64, 2], vec![1.0; 128]), "group_size 256 needs [64, 1]");
        rejects(&format!(r#"{{"{Q}": {{"format": "t2", "group_size": 100}}}}"#), q_t2(64, vec![64, 1], vec![1.0; 64]), "multiple");
        rejects(&format!(r#"{{"{Q}": {{"format": "t3"}}}}"#), q_t2(64, vec![1], vec![1.0]), "unknown format 't3'");
        rejects(&format!(r#"{{"{Q}": {{"format": "t2", "group_size": -1}}}}"#), q_t2(64, vec![1], vec![1.0]), "positive integer");
        rejects(r#"{"model.layers.7.self_attn.q_proj": {"format": "t2"}}"#, vec![], "model.layers.7.self_attn.q_proj");
        let mut field3 = q_t2(64, vec![1], vec![1.0]);
        field3[0].3[100] = 0b0000_0011;
        rejects(&t2, field3, "field 3");
        let ternary_onebit = [q_t2(64, vec![64], vec![1.0; 64]), vec![(format!("{Q}.weight_col_scale"), "F32", vec![64], f32s(&[1.0; 64]))]].concat();
        rejects(&t2, ternary_onebit, "binary format only");
        let q8 = r#"{"lm_head": {"format": "q8"}}"#;
        rejects(
            q8,
            vec![("lm_head.weight".into(), "I8", vec![16, 64], vec![0; 1024]), ("lm_head.weight_scale".into(), "F32", vec![16, 3], f32s(&[1.0; 48]))],
            "[16, 2]",
        );
        rejects(
            q8,
            vec![("lm_head.weight".into(), "U8", vec![16, 64], vec![0; 1024]), ("lm_head.weight_scale".into(), "F32", vec![16, 2], f32s(&[1.0; 32]))],
            "expected I8",
        );
        rejects(q8, vec![], "lm_head.weight_scale");
    }
}

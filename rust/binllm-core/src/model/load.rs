//! From validated tensors to a `Model`: Hugging Face folders (config.json + safetensors) and
//! GGUF files. Tensor names, shapes and types are checked against the config; a missing or
//! mis-shaped tensor is an error naming it.
//!
//! Linear weights become packed `t2` matrices when the model is BitNet-style:
//! - HF packed checkpoints (uint8 [out/4, in], 4 codes per byte, `weight_scale` = 1/mean|W|),
//! - HF latent float checkpoints, ternarized on load with absmean per tensor,
//! - GGUF TQ1_0 / TQ2_0 / I2_S tensors (exact codes and scales).
//! Embeddings, norms and the output layer stay f32.

use super::config::{LinearKind, ModelConfig};
use super::{FloatStorage, Layer, Linear, Model};
use crate::error::{Error, Result};
use crate::formats::{PackedMatrix, ScaleKind, WeightFormat};
use crate::loader::{DType, GgufFile, SafetensorsFile, TensorView};
use std::collections::HashMap;

/// Where each tensor lives, by the naming scheme of its file format.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Naming {
    HuggingFace,
    Gguf,
}

struct Tensors<'t, 'a> {
    by_name: HashMap<&'t str, &'t TensorView<'a>>,
    naming: Naming,
    config: &'t ModelConfig,
}

impl<'t, 'a> Tensors<'t, 'a> {
    fn name(&self, layer: Option<usize>, part: &str) -> String {
        match (self.naming, layer) {
            (Naming::HuggingFace, None) => part.to_string(),
            (Naming::HuggingFace, Some(i)) => format!("model.layers.{i}.{part}"),
            (Naming::Gguf, None) => part.to_string(),
            (Naming::Gguf, Some(i)) => format!("blk.{i}.{part}"),
        }
    }

    fn get(&self, name: &str) -> Result<&'t TensorView<'a>> {
        self.by_name.get(name).copied().ok_or_else(|| Error::Format(format!("missing tensor '{name}'")))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.numel() != len {
            crate::bail!(Format, "tensor '{name}' has shape {:?}; expected {len} values", t.shape);
        }
        t.to_f32()
    }

    fn matrix_f32(&self, name: &str, n: usize, k: usize) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.shape != [n, k] {
            crate::bail!(Format, "tensor '{name}' has shape {:?}; expected [{n}, {k}]", t.shape);
        }
        t.to_f32()
    }

    /// A decoder linear layer of shape (n out, k in).
    fn linear(&self, name: &str, n: usize, k: usize) -> Result<Linear> {
        let t = self.get(name)?;
        let bitnet = self.config.linear == LinearKind::BitNet;
        if t.dtype.is_ternary() {
            if t.shape != [n, k] {
                crate::bail!(Format, "tensor '{name}' has shape {:?}; expected [{n}, {k}]", t.shape);
            }
            return match t.to_ternary() {
                Ok(tt) => {
                    let first = tt.row_scales.first().copied().unwrap_or(1.0);
                    let scale = if tt.row_scales.iter().all(|&s| s == first) {
                        ScaleKind::PerTensor(first)
                    } else {
                        ScaleKind::PerRow(tt.row_scales)
                    };
                    Ok(Linear::Packed(PackedMatrix::pack(WeightFormat::Ternary2, &tt.codes, n, k, scale)?))
                }
                // Per-block scales that differ within a row: exact, in float.
                Err(Error::Unsupported(_)) => Ok(Linear::Float { w: t.to_f32()?, n, k }),
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

    /// A float-valued matrix kept about as compact as in the file (see `FloatStorage`).
    fn float_matrix(&self, name: &str, n: usize, k: usize) -> Result<Linear> {
        let storage = match self.get(name)?.dtype {
            DType::F32 | DType::F64 => FloatStorage::F32,
            DType::F16 | DType::BF16 => FloatStorage::F16,
            _ => FloatStorage::Q8,
        };
        Ok(Linear::float(self.matrix_f32(name, n, k)?, n, k, storage))
    }

    /// microsoft/bitnet-b1.58-2B-4T layout: uint8 [n/4, k]; bits 2i..2i+1 of packed row r hold
    /// output row i * (n/4) + r, value = field - 1; `weight_scale` is 1 / mean|W|.
    fn hf_packed_linear(&self, name: &str, t: &TensorView<'a>, n: usize, k: usize) -> Result<Linear> {
        if n % 4 != 0 || t.shape != [n / 4, k] {
            crate::bail!(Format, "packed tensor '{name}' has shape {:?}; expected [{}, {k}] (4 rows per byte)", t.shape, n / 4);
        }
        let scale_name = name.strip_suffix(".weight").map(|p| format!("{p}.weight_scale")).unwrap_or_default();
        let inv = self.vector(&scale_name, 1)?[0];
        if !(inv.is_finite() && inv > 0.0) {
            crate::bail!(Format, "tensor '{scale_name}' must be a positive number, got {inv}");
        }
        let quarter = n / 4;
        let mut codes = vec![0i8; n * k];
        for (r, row) in t.data.chunks_exact(k).enumerate() {
            for (c, &byte) in row.iter().enumerate() {
                for i in 0..4 {
                    let field = (byte >> (2 * i)) & 3;
                    if field == 3 {
                        crate::bail!(Format, "packed tensor '{name}' holds the invalid 2-bit value 3 (row {r}, column {c})");
                    }
                    codes[(i * quarter + r) * k + c] = field as i8 - 1;
                }
            }
        }
        Ok(Linear::Packed(PackedMatrix::pack(WeightFormat::Ternary2, &codes, n, k, ScaleKind::PerTensor(1.0 / inv))?))
    }

    fn build(&self) -> Result<Model> {
        let c = self.config;
        let (d, hd) = (c.hidden, c.head_dim);
        let (embed_name, norm_name, head_name) = match self.naming {
            Naming::HuggingFace => ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"),
            Naming::Gguf => ("token_embd.weight", "output_norm.weight", "output.weight"),
        };
        let embed = self.float_matrix(embed_name, c.vocab, d)?;
        let lm_head = if c.tie_embeddings { None } else { Some(self.float_matrix(head_name, c.vocab, d)?) };
        let hf = self.naming == Naming::HuggingFace;
        let part = |hf_name: &'static str, gguf_name: &'static str| if hf { hf_name } else { gguf_name };
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let n = |p: &str| self.name(Some(i), p);
            let sub = |p: &str, len: usize| -> Result<Option<Vec<f32>>> {
                if c.sub_norms {
                    self.vector(&n(p), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: self.vector(&n(part("input_layernorm.weight", "attn_norm.weight")), d)?,
                q: self.linear(&n(part("self_attn.q_proj.weight", "attn_q.weight")), c.heads * hd, d)?,
                k: self.linear(&n(part("self_attn.k_proj.weight", "attn_k.weight")), c.kv_heads * hd, d)?,
                v: self.linear(&n(part("self_attn.v_proj.weight", "attn_v.weight")), c.kv_heads * hd, d)?,
                o: self.linear(&n(part("self_attn.o_proj.weight", "attn_output.weight")), d, c.heads * hd)?,
                attn_sub_norm: sub(part("self_attn.attn_sub_norm.weight", "attn_sub_norm.weight"), c.heads * hd)?,
                ffn_norm: self.vector(&n(part("post_attention_layernorm.weight", "ffn_norm.weight")), d)?,
                gate: self.linear(&n(part("mlp.gate_proj.weight", "ffn_gate.weight")), c.intermediate, d)?,
                up: self.linear(&n(part("mlp.up_proj.weight", "ffn_up.weight")), c.intermediate, d)?,
                down: self.linear(&n(part("mlp.down_proj.weight", "ffn_down.weight")), d, c.intermediate)?,
                ffn_sub_norm: sub(part("mlp.ffn_sub_norm.weight", "ffn_sub_norm.weight"), c.intermediate)?,
            });
        }
        Ok(Model { config: c.clone(), embed, layers, norm: self.vector(norm_name, d)?, lm_head, act_quant: true })
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
        let config = ModelConfig::from_hf_json(config_json)?;
        let mut by_name = HashMap::new();
        for f in files {
            for t in &f.tensors {
                if by_name.insert(t.name.as_str(), t).is_some() {
                    crate::bail!(Format, "tensor '{}' appears in more than one file", t.name);
                }
            }
        }
        Tensors { by_name, naming: Naming::HuggingFace, config: &config }.build()
    }

    /// A model from a parsed GGUF file.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Model> {
        let config = ModelConfig::from_gguf(file)?;
        let by_name = file.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        Tensors { by_name, naming: Naming::Gguf, config: &config }.build()
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use std::path::{Path, PathBuf};

    /// Memory-maps a file read-only. The map is dropped once the model is built, so only the
    /// packed weights stay resident.
    pub fn map_file(path: &Path) -> Result<memmap2::Mmap> {
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
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Format(format!("{}: {e}", index.display())))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Format(format!("{} has no weight_map", index.display())))?;
            let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            files.sort();
            files.dedup();
            let mut out = Vec::new();
            for f in files {
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    crate::bail!(Format, "{} names a file outside the folder: '{f}'", index.display());
                }
                out.push(dir.join(f));
            }
            return Ok(out);
        }
        crate::bail!(Format, "{} has neither model.safetensors nor model.safetensors.index.json", dir.display())
    }

    /// Loads a model from a Hugging Face folder or a `.gguf` file.
    pub fn load_path(path: &Path) -> Result<Model> {
        if path.is_dir() {
            let config_path = path.join("config.json");
            let config = std::fs::read_to_string(&config_path)
                .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", config_path.display()))))?;
            let maps = hf_weight_files(path)?.iter().map(|p| map_file(p)).collect::<Result<Vec<_>>>()?;
            let files = maps.iter().map(|m| SafetensorsFile::parse(m)).collect::<Result<Vec<_>>>()?;
            Model::from_hf(&config, &files)
        } else {
            let m = map_file(path)?;
            Model::from_gguf(&GgufFile::parse(&m)?)
        }
    }
}

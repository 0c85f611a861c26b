//! Writing a loaded `Model` as a GGUF v3 file that llama.cpp loads, and that binllm reads back
//! to the same numbers.
//!
//! The llama.cpp architecture follows the model's math: sub-norms -> "bitnet" (llama.cpp's
//! graph: NeoX RoPE, SiLU, `attn_sub_norm` / `ffn_sub_norm`, output tied to `token_embd`),
//! otherwise "llama" (interleaved RoPE, SiLU). Invariants:
//! - RoPE: llama.cpp's "llama" pairs dimensions (2i, 2i + 1) and expects Q/K rows permuted the
//!   way its converter does (`LlamaModel.permute`); "bitnet" pairs (i, i + head_dim / 2) and its
//!   converter does not permute. When the model's pairing differs from the target's, the Q and
//!   K rows are permuted (or un-permuted) here, and `binllm.rope_style` records the pairing.
//! - Ternary linears keep their exact codes; each 256-weight block carries its scale as fp16:
//!   the per-tensor or per-row scale repeated, or its group's scale (`PerGroup`, groups of
//!   whole 256-blocks). A row length that is not a multiple of 256, groups that split a block,
//!   or row offsets fall back to F16 (the decoded weights), and the report says so.
//! - Float linears become F16; norms stay F32; embeddings and a separate output layer are F16.
//! - Nothing here knows about tokenizers: the caller passes `tokenizer.*` metadata.

use super::config::{Activation, LinearKind, RopeStyle};
use super::names::{gguf_name, EMBED, LM_HEAD, NORM};
use super::{Linear, Model};
use crate::error::{Error, Result};
use crate::formats::ScaleKind;
use crate::loader::{f32_to_f16_bytes, quantize_q6_k, quantize_q8_0, quantize_tq1_0, quantize_tq2_0, DType, GgufFile, GgufValue, GgufWriter};

/// Storage type of the decoder's linear layers in the written file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportType {
    Tq2_0,
    Tq1_0,
    F16,
}

impl ExportType {
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "tq2_0" => Ok(ExportType::Tq2_0),
            "tq1_0" => Ok(ExportType::Tq1_0),
            "f16" => Ok(ExportType::F16),
            other => crate::bail!(InvalidArgument, "unknown GGUF type '{other}'; choose tq2_0, tq1_0 or f16"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ExportType::Tq2_0 => "tq2_0",
            ExportType::Tq1_0 => "tq1_0",
            ExportType::F16 => "f16",
        }
    }
    /// llama.cpp's `llama_ftype` for `general.file_type`.
    fn llama_ftype(self) -> u32 {
        match self {
            ExportType::Tq2_0 => 37,
            ExportType::Tq1_0 => 36,
            ExportType::F16 => 1,
        }
    }
}

/// Storage of the token embeddings (and of a separate output layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingType {
    F16,
    Q8_0,
    Q6K,
}

impl EmbeddingType {
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "f16" => Ok(EmbeddingType::F16),
            "q8_0" => Ok(EmbeddingType::Q8_0),
            "q6_k" => Ok(EmbeddingType::Q6K),
            other => crate::bail!(InvalidArgument, "unknown embedding type '{other}'; choose f16, q8_0 or q6_k"),
        }
    }
}

pub struct ExportOptions {
    pub linear_type: ExportType,
    pub embedding_type: EmbeddingType,
    /// `general.name`.
    pub name: String,
    /// Written after the model's own keys (a key given here replaces the model's value):
    /// `tokenizer.*` and anything else the caller wants to carry.
    pub metadata: Vec<(String, GgufValue)>,
}

/// What was written, and every place the file differs from what was asked for.
#[derive(Clone, Debug, Default)]
pub struct ExportReport {
    pub architecture: String,
    pub rope_style: &'static str,
    /// Whether Q and K rows were reordered to match llama.cpp's RoPE pairing.
    pub permuted_qk: bool,
    /// (name, storage type, numpy-order shape) of every tensor, in file order.
    pub tensors: Vec<(String, DType, Vec<usize>)>,
    /// Linear layers written as F16 instead of the ternary type asked for, with the reason.
    pub fallbacks: Vec<String>,
    /// Things llama.cpp will do differently from binllm, or cannot do, with this file.
    pub warnings: Vec<String>,
    /// Largest relative change of a ternary scale when stored as fp16 (0 when exact).
    pub max_scale_rounding: f32,
}

/// Target pairing of llama.cpp's graph for each architecture.
fn llama_cpp_rope(architecture: &str) -> RopeStyle {
    if architecture == "bitnet" {
        RopeStyle::NeoX
    } else {
        RopeStyle::Interleaved
    }
}

/// New row order for the Q or K rows of `heads` heads of `head_dim` rows each:
/// `out[r] = old[order[r]]`. NeoX -> interleaved is llama.cpp's `LlamaModel.permute`
/// (within a head, row 2i + j takes row j * head_dim / 2 + i); interleaved -> NeoX undoes it.
pub(crate) fn rope_row_order(heads: usize, head_dim: usize, from: RopeStyle, to: RopeStyle) -> Vec<usize> {
    let half = head_dim / 2;
    let mut order = Vec::with_capacity(heads * head_dim);
    for h in 0..heads {
        for r in 0..head_dim {
            let within = match (from, to) {
                (RopeStyle::NeoX, RopeStyle::Interleaved) => (r % 2) * half + r / 2,
                (RopeStyle::Interleaved, RopeStyle::NeoX) => 2 * (r % half) + r / half,
                _ => r,
            };
            order.push(h * head_dim + within);
        }
    }
    order
}

pub(crate) fn reorder_rows<T: Copy>(data: &[T], row_len: usize, order: Option<&[usize]>) -> Vec<T> {
    match order {
        None => data.to_vec(),
        Some(order) => order.iter().flat_map(|&r| data[r * row_len..(r + 1) * row_len].iter().copied()).collect(),
    }
}

fn f16_bytes_checked(name: &str, x: &[f32]) -> Result<Vec<u8>> {
    if let Some(v) = x.iter().find(|v| !v.is_finite() || v.abs() > 65504.0) {
        crate::bail!(InvalidArgument, "tensor '{name}' holds {v}, which does not fit in F16");
    }
    Ok(f32_to_f16_bytes(x))
}

struct Exporter<'m> {
    model: &'m Model,
    opts: &'m ExportOptions,
    writer: GgufWriter,
    report: ExportReport,
}

impl Exporter<'_> {
    fn tensor(&mut self, name: &str, dtype: DType, shape: &[usize], data: Vec<u8>) -> Result<()> {
        self.writer.add_tensor(name, dtype, shape, data)?;
        self.report.tensors.push((name.to_string(), dtype, shape.to_vec()));
        Ok(())
    }

    fn vector(&mut self, name: &str, v: &[f32]) -> Result<()> {
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(name, DType::F32, &[v.len()], data)
    }

    /// Embeddings or a float output layer: F16, Q8_0 or Q6_K, each only for rows of whole
    /// blocks; a Q6_K row of another length is written as Q8_0 (as llama.cpp's quantizer does),
    /// a Q8_0 one as F16, each reported in `fallbacks`.
    fn embedding(&mut self, name: &str, w: &[f32], n: usize, k: usize) -> Result<()> {
        if self.opts.embedding_type == EmbeddingType::Q6K {
            if k.is_multiple_of(256) {
                return self.tensor(name, DType::Q6_K, &[n, k], quantize_q6_k(w, n, k)?);
            }
            self.report.fallbacks.push(format!("{name}: row length {k} is not a multiple of 256; written as Q8_0, not Q6_K"));
        }
        if matches!(self.opts.embedding_type, EmbeddingType::Q8_0 | EmbeddingType::Q6K) {
            if k.is_multiple_of(32) {
                return self.tensor(name, DType::Q8_0, &[n, k], quantize_q8_0(w, n, k)?);
            }
            self.report.fallbacks.push(format!("{name}: row length {k} is not a multiple of 32; written as F16, not Q8_0"));
        }
        let data = f16_bytes_checked(name, w)?;
        self.tensor(name, DType::F16, &[n, k], data)
    }

    /// A linear layer of shape (n, k), rows reordered by `order` (Q and K only).
    fn linear(&mut self, name: &str, l: &Linear, order: Option<&[usize]>) -> Result<()> {
        let (n, k) = l.shape();
        let want = match self.opts.linear_type {
            ExportType::Tq2_0 => Some(DType::TQ2_0),
            ExportType::Tq1_0 => Some(DType::TQ1_0),
            ExportType::F16 => None,
        };
        if let (Some(dtype), Linear::Packed(p)) = (want, l) {
            let group_fits = match p.scale() {
                ScaleKind::PerGroup { group, .. } => group % 256 == 0,
                _ => true,
            };
            if p.format().is_ternary() && k % 256 == 0 && group_fits && p.row_offset().is_none() {
                // One fp16 scale per 256-block: its group's (or the row's) scale.
                let per_row = k / 256;
                let scales: Vec<f32> = (0..n).flat_map(|r| (0..per_row).map(move |b| p.scale_at(r, b * 256))).collect();
                for &s in &scales {
                    let stored = half::f16::from_f32(s).to_f32();
                    if s != 0.0 {
                        self.report.max_scale_rounding = self.report.max_scale_rounding.max(((stored - s) / s).abs());
                    }
                }
                let codes = reorder_rows(&p.unpack(), k, order);
                let scales = reorder_rows(&scales, per_row, order);
                let data = if dtype == DType::TQ2_0 { quantize_tq2_0(&codes, n, k, &scales) } else { quantize_tq1_0(&codes, n, k, &scales) }
                    .map_err(|e| Error::InvalidArgument(format!("tensor '{name}': {e}")))?;
                return self.tensor(name, dtype, &[n, k], data);
            }
            let why = if p.row_offset().is_some() {
                "row offsets have no GGUF type".to_string()
            } else if !group_fits {
                "scale groups are not whole 256-weight blocks".to_string()
            } else if p.format().is_ternary() {
                format!("row length {k} is not a multiple of 256")
            } else {
                format!("format {} has no GGUF type", p.format().name())
            };
            self.report.fallbacks.push(format!("{name}: {why}; written as F16 (code * scale)"));
        } else if want.is_some() {
            self.report.fallbacks.push(format!("{name}: float weights (per-block scales); written as F16"));
        }
        let w = rows_f32(l, order);
        let data = f16_bytes_checked(name, &w)?;
        self.tensor(name, DType::F16, &[n, k], data)
    }

    fn metadata(&mut self, architecture: &str, rope: RopeStyle) {
        use GgufValue::{String as S, F32, U32};
        let c = &self.model.config;
        let key = |k: &str| format!("{architecture}.{k}");
        let u = |x: usize| U32(x as u32);
        let mut meta = vec![
            ("general.architecture".to_string(), S(architecture.to_string())),
            ("general.name".to_string(), S(self.opts.name.clone())),
            ("general.file_type".to_string(), U32(self.opts.linear_type.llama_ftype())),
            ("general.quantization_version".to_string(), U32(2)),
            (key("context_length"), u(c.max_positions)),
            (key("embedding_length"), u(c.hidden)),
            (key("block_count"), u(c.layers)),
            (key("feed_forward_length"), u(c.intermediate)),
            (key("attention.head_count"), u(c.heads)),
            (key("attention.head_count_kv"), u(c.kv_heads)),
            (key("attention.key_length"), u(c.head_dim)),
            (key("attention.value_length"), u(c.head_dim)),
            (key("rope.dimension_count"), u(c.head_dim)),
            (key("rope.freq_base"), F32(c.rope_theta)),
            (key("attention.layer_norm_rms_epsilon"), F32(c.rms_eps)),
            (key("vocab_size"), u(c.vocab)),
            ("binllm.rope_style".to_string(), S(if rope == RopeStyle::NeoX { "neox" } else { "interleaved" }.to_string())),
            ("binllm.activation".to_string(), S(c.activation.name().to_string())),
        ];
        if c.linear == LinearKind::Float {
            // Read back by `ModelConfig::from_gguf`: F16 linears stay float even beside TQ ones.
            meta.push(("binllm.linear_kind".to_string(), S("float".to_string())));
        }
        if let Some(b) = c.bos_token {
            meta.push(("tokenizer.ggml.bos_token_id".to_string(), U32(b)));
        }
        if let Some(&e) = c.eos_tokens.first() {
            meta.push(("tokenizer.ggml.eos_token_id".to_string(), U32(e)));
        }
        for (k, v) in meta.into_iter().chain(self.opts.metadata.iter().cloned()) {
            self.writer.add_metadata(&k, v);
        }
    }

    fn warnings(&mut self, architecture: &str) {
        let c = &self.model.config;
        let w = &mut self.report.warnings;
        if c.activation != Activation::Silu {
            w.push(format!(
                "activation {}: llama.cpp's {architecture} graph uses SiLU and will compute this model wrongly \
                 (binllm reads binllm.activation and runs it right)",
                c.activation.name()
            ));
        }
        if architecture == "bitnet" {
            if c.heads * c.head_dim != c.hidden {
                w.push(format!(
                    "llama.cpp's bitnet graph needs heads * head_dim ({}) == hidden ({}); llama.cpp will not load this file",
                    c.heads * c.head_dim,
                    c.hidden
                ));
            }
            if self.model.lm_head.is_some() {
                w.push(
                    "llama.cpp's bitnet graph has no separate output layer (it reuses token_embd); \
                     llama.cpp will refuse this file's output.weight"
                        .to_string(),
                );
            }
        }
    }

    fn run(mut self) -> Result<(GgufWriter, ExportReport)> {
        let m = self.model;
        let c = &m.config;
        // A float model may still hold packed linears (binllm PTQ folders): those are written
        // as they are, the float ones as F16.
        let any_packed = m.layers.iter().any(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].iter().any(|x| matches!(x, Linear::Packed(_))));
        if self.opts.linear_type != ExportType::F16 && c.linear != LinearKind::BitNet && !any_packed {
            crate::bail!(
                InvalidArgument,
                "{} holds ternary weights, but this model's linear layers are float (not BitNet-style); \
                 ternarizing them would change the model. Convert it with type f16",
                self.opts.linear_type.name()
            );
        }
        let architecture = if c.sub_norms.any() { "bitnet" } else { "llama" };
        let rope = llama_cpp_rope(architecture);
        let (q_order, k_order) = if rope != c.rope_style {
            if !c.head_dim.is_multiple_of(2) {
                crate::bail!(InvalidArgument, "head_dim {} is odd; RoPE pairs cannot be reordered", c.head_dim);
            }
            self.report.permuted_qk = true;
            (Some(rope_row_order(c.heads, c.head_dim, c.rope_style, rope)), Some(rope_row_order(c.kv_heads, c.head_dim, c.rope_style, rope)))
        } else {
            (None, None)
        };
        self.report.architecture = architecture.to_string();
        self.report.rope_style = if rope == RopeStyle::NeoX { "neox" } else { "interleaved" };
        self.metadata(architecture, rope);
        self.warnings(architecture);

        self.embedding(&gguf_name(None, EMBED), &rows_f32(&m.embed, None), c.vocab, c.hidden)?;
        self.vector(&gguf_name(None, NORM), &m.norm)?;
        // Any RoPE scaling goes in llama.cpp's form: one divisor per frequency.
        if let Some(factors) = c.rope_freq_factors() {
            self.vector("rope_freqs.weight", &factors)?;
        }
        match &m.lm_head {
            Some(head @ Linear::Packed(_)) => self.linear(&gguf_name(None, LM_HEAD), head, None)?,
            Some(head) => self.embedding(&gguf_name(None, LM_HEAD), &rows_f32(head, None), c.vocab, c.hidden)?,
            None => {}
        }
        for (i, layer) in m.layers.iter().enumerate() {
            let n = |hf_part: &str| gguf_name(Some(i), hf_part);
            self.vector(&n("input_layernorm.weight"), &layer.attn_norm)?;
            self.linear(&n("self_attn.q_proj.weight"), &layer.q, q_order.as_deref())?;
            self.linear(&n("self_attn.k_proj.weight"), &layer.k, k_order.as_deref())?;
            self.linear(&n("self_attn.v_proj.weight"), &layer.v, None)?;
            self.linear(&n("self_attn.o_proj.weight"), &layer.o, None)?;
            if let Some(w) = &layer.attn_sub_norm {
                self.vector(&n("self_attn.attn_sub_norm.weight"), w)?;
            }
            self.vector(&n("post_attention_layernorm.weight"), &layer.ffn_norm)?;
            self.linear(&n("mlp.gate_proj.weight"), &layer.gate, None)?;
            self.linear(&n("mlp.up_proj.weight"), &layer.up, None)?;
            self.linear(&n("mlp.down_proj.weight"), &layer.down, None)?;
            if let Some(w) = &layer.ffn_sub_norm {
                self.vector(&n("mlp.ffn_sub_norm.weight"), w)?;
            }
        }
        Ok((self.writer, self.report))
    }
}

/// Builds the GGUF file for `model` (write it with `GgufWriter::write_to`).
pub fn export_gguf(model: &Model, opts: &ExportOptions) -> Result<(GgufWriter, ExportReport)> {
    Exporter { model, opts, writer: GgufWriter::new(), report: ExportReport::default() }.run()
}

/// What a GGUF source carries into the file written from it, with its exact types (llama.cpp
/// checks them): its tokenizer (`tokenizer.*`) and its `general.name`. Given as
/// `ExportOptions::metadata`, the name replaces `ExportOptions::name`.
pub fn carried_metadata(file: &GgufFile<'_>) -> Vec<(String, GgufValue)> {
    file.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.") || k == "general.name").map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(not(target_arch = "wasm32"))]
/// Writes `model` to `path` (created or truncated). Returns what was written.
pub fn write_gguf(model: &Model, opts: &ExportOptions, path: &std::path::Path) -> Result<ExportReport> {
    let (writer, report) = export_gguf(model, opts)?;
    let file = std::fs::File::create(path).map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    writer.write_to(&mut out)?;
    out.into_inner().map_err(|e| Error::Io(e.into_error()))?.sync_all()?;
    Ok(report)
}

/// All rows of `l` as f32 (its effective weights), reordered by `order` if given.
fn rows_f32(l: &Linear, order: Option<&[usize]>) -> Vec<f32> {
    let (n, k) = l.shape();
    let mut all = Vec::with_capacity(n * k);
    let mut row = Vec::with_capacity(k);
    for r in 0..n {
        l.row_f32(order.map_or(r, |o| o[r]), &mut row);
        all.extend_from_slice(&row);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_row_order_matches_llama_cpp_permute_and_inverts() {
        // numpy: w.reshape(heads, 2, hd/2).swapaxes(1, 2).reshape(-1) for w = arange(heads*hd)
        let order = rope_row_order(2, 6, RopeStyle::NeoX, RopeStyle::Interleaved);
        assert_eq!(order, vec![0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]);
        let back = rope_row_order(2, 6, RopeStyle::Interleaved, RopeStyle::NeoX);
        let round: Vec<usize> = back.iter().map(|&r| order[r]).collect();
        assert_eq!(round, (0..12).collect::<Vec<_>>());
    }
}

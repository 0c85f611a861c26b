//! A weight matrix of a model: packed 1-bit/ternary (the integer kernels) or float-valued
//! storage (f32, f16, or 8-bit blocks) multiplied with float activations.
//!
//! Float-valued storage keeps a model's float parts close to the size they have in the file:
//! f32 stays f32, f16/bf16 become f16 (bf16 values are exact in f16 unless below 6e-5 in
//! magnitude, where f16 keeps 24 fractional bits), and block-quantized GGUF types (Q4_0, Q4_1,
//! Q8_0, ...) become `Q8`: blocks of 32 int8 values with an f32 scale (9 bits per weight).
//! Q6_K tensors stay `Q6K` (6.56 bits per weight, GGML's blocks, `kernels::q6k`), and any float
//! output layer can be made one (`--output-type q6_k`).

use crate::error::Result;
use crate::formats::{PackedMatrix, ScaleKind};
use crate::kernels::q6k::{Q6K_BYTES, Q6K_WEIGHTS};
use crate::kernels::{float, q6k, Backend};
use half::f16;
use half::slice::HalfFloatSliceExt;

pub use crate::kernels::float::Q8_BLOCK;

pub enum Linear {
    /// Packed codes; activations int8-quantized per token unless the model runs without
    /// activation quantization (a reference mode).
    Packed(PackedMatrix),
    /// f32 weights, row-major (n x k).
    Float { w: Vec<f32>, n: usize, k: usize },
    /// f16 weights, row-major (n x k); `finite`: known to hold no infinity or NaN
    /// (`float::f16_all_finite`, found once by `Linear::half` where the f16 kernel uses it).
    Half { w: Vec<f16>, n: usize, k: usize, finite: bool },
    /// int8 weights in blocks of `Q8_BLOCK` along each row, one f32 scale per block.
    Q8 { q: Vec<i8>, scales: Vec<f32>, n: usize, k: usize },
    /// GGML Q6_K super-blocks, `ceil(k / 256)` per row (the last zero-padded), multiplied with
    /// int8 activations (`kernels::q6k`).
    Q6K { blocks: Vec<u8>, n: usize, k: usize },
}

impl Linear {
    /// Float-valued storage for `w` (n x k): f32, f16, or 8-bit blocks.
    pub fn float(w: Vec<f32>, n: usize, k: usize, storage: FloatStorage) -> Linear {
        match storage {
            FloatStorage::F32 => Linear::Float { w, n, k },
            FloatStorage::F16 => Linear::half(w.iter().map(|&v| f16::from_f32(v)).collect(), n, k),
            FloatStorage::Q8 => {
                let blocks = k.div_ceil(Q8_BLOCK);
                let (mut q, mut scales) = (Vec::with_capacity(n * k), Vec::with_capacity(n * blocks));
                for row in w.chunks_exact(k) {
                    push_q8_row(row, &mut q, &mut scales);
                }
                Linear::Q8 { q, scales, n, k }
            }
            FloatStorage::Q6K => {
                let mut blocks = Vec::new();
                q6k_rows(&mut blocks, n, k, |r, row| row.extend_from_slice(&w[r * k..(r + 1) * k]));
                Linear::Q6K { blocks, n, k }
            }
        }
    }

    /// f16 weights (n x k), checked once for infinities and NaNs (`float::gemm_f16`'s `finite`)
    /// where the backend's f16 kernel reads the answer (`Dots::f16_rows_reads_finite`).
    pub fn half(w: Vec<f16>, n: usize, k: usize) -> Linear {
        let finite = float::dots().f16_rows_reads_finite && float::f16_all_finite(&w);
        Linear::Half { w, n, k, finite }
    }

    /// A Q6_K matrix from GGUF bytes (`k` a multiple of 256, `blocks.len()` checked).
    pub fn q6k(blocks: Vec<u8>, n: usize, k: usize) -> Result<Linear> {
        if !k.is_multiple_of(Q6K_WEIGHTS) || Some(blocks.len()) != n.checked_mul(k / Q6K_WEIGHTS * Q6K_BYTES) {
            crate::bail!(Format, "Q6_K data of {} bytes does not hold a ({n}, {k}) matrix", blocks.len());
        }
        Ok(Linear::Q6K { blocks, n, k })
    }

    /// The same matrix in another float storage, converted row by row (no full f32 copy).
    /// Packed matrices have no float storage to change.
    pub fn restored(&self, storage: FloatStorage) -> Result<Linear> {
        let (n, k) = self.shape();
        if matches!(self, Linear::Packed(_)) {
            crate::bail!(InvalidArgument, "a packed {} matrix has no float storage to change", self.storage());
        }
        let mut row = Vec::with_capacity(k);
        Ok(match storage {
            FloatStorage::F32 | FloatStorage::F16 => {
                let mut w32 = Vec::new();
                let mut w16 = Vec::new();
                for r in 0..n {
                    self.row_f32(r, &mut row);
                    if storage == FloatStorage::F32 {
                        w32.extend_from_slice(&row);
                    } else {
                        w16.extend(row.iter().map(|&v| f16::from_f32(v)));
                    }
                }
                if storage == FloatStorage::F32 {
                    Linear::Float { w: w32, n, k }
                } else {
                    Linear::half(w16, n, k)
                }
            }
            FloatStorage::Q8 => {
                let (mut q, mut scales) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k.div_ceil(Q8_BLOCK)));
                for r in 0..n {
                    self.row_f32(r, &mut row);
                    push_q8_row(&row, &mut q, &mut scales);
                }
                Linear::Q8 { q, scales, n, k }
            }
            FloatStorage::Q6K => {
                let mut blocks = Vec::new();
                q6k_rows(&mut blocks, n, k, |r, row| self.row_f32(r, row));
                Linear::Q6K { blocks, n, k }
            }
        })
    }

    /// (out features, in features).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Linear::Packed(p) => p.shape(),
            Linear::Float { n, k, .. } | Linear::Half { n, k, .. } | Linear::Q8 { n, k, .. } | Linear::Q6K { n, k, .. } => (*n, *k),
        }
    }

    /// Bytes of weights (and scales) held.
    pub fn nbytes(&self) -> usize {
        match self {
            Linear::Packed(p) => p.nbytes(),
            Linear::Float { w, .. } => w.len() * 4,
            Linear::Half { w, .. } => w.len() * 2,
            Linear::Q8 { q, scales, .. } => q.len() + scales.len() * 4,
            Linear::Q6K { blocks, .. } => blocks.len(),
        }
    }

    /// Hints the operating system to hold the weights on huge pages (`memory::use_huge_pages`).
    pub fn use_huge_pages(&self) {
        use crate::memory::use_huge_pages;
        match self {
            Linear::Packed(p) => use_huge_pages(p.packed_data()),
            Linear::Float { w, .. } => use_huge_pages(w),
            Linear::Half { w, .. } => use_huge_pages(w),
            Linear::Q8 { q, .. } => use_huge_pages(q),
            Linear::Q6K { blocks, .. } => use_huge_pages(blocks),
        }
    }

    /// Storage name for `Model::info`.
    pub fn storage(&self) -> &'static str {
        match self {
            Linear::Packed(p) => p.format().name(),
            Linear::Float { .. } => "f32",
            Linear::Half { .. } => "f16",
            Linear::Q8 { .. } => "q8",
            Linear::Q6K { .. } => "q6_k",
        }
    }

    /// The float storage this matrix has; `None` for a packed one.
    pub fn float_storage(&self) -> Option<FloatStorage> {
        match self {
            Linear::Packed(_) => None,
            Linear::Float { .. } => Some(FloatStorage::F32),
            Linear::Half { .. } => Some(FloatStorage::F16),
            Linear::Q8 { .. } => Some(FloatStorage::Q8),
            Linear::Q6K { .. } => Some(FloatStorage::Q6K),
        }
    }

    /// Row `r` as f32 values (the weights' effective values) into `out`.
    pub fn row_f32(&self, r: usize, out: &mut Vec<f32>) {
        match self {
            Linear::Packed(p) => p.decode_row_f32(r, out),
            Linear::Float { w, k, .. } => {
                out.clear();
                out.extend_from_slice(&w[r * k..(r + 1) * k]);
            }
            Linear::Half { w, k, .. } => {
                out.resize(*k, 0.0);
                w[r * k..(r + 1) * k].convert_to_f32_slice(out);
            }
            Linear::Q8 { q, scales, k, .. } => {
                let blocks = k.div_ceil(Q8_BLOCK);
                out.clear();
                let row = &q[r * k..(r + 1) * k];
                for (b, chunk) in row.chunks(Q8_BLOCK).enumerate() {
                    let d = scales[r * blocks + b];
                    out.extend(chunk.iter().map(|&v| v as f32 * d));
                }
            }
            Linear::Q6K { blocks, k, .. } => {
                let row_bytes = k.div_ceil(Q6K_WEIGHTS) * Q6K_BYTES;
                out.clear();
                crate::loader::dequantize_q6_k_into(&blocks[r * row_bytes..(r + 1) * row_bytes], out);
                out.truncate(*k);
            }
        }
    }

    /// `y (m x n) = x (m x k) W^T`.
    pub fn forward(&self, backend: Backend, x: &[f32], m: usize, y: &mut [f32], act_quant: bool) -> Result<()> {
        let (n, k) = self.shape();
        match self {
            Linear::Packed(_) if act_quant => return forward_shared_input(&[self], backend, x, m, &mut [y], act_quant),
            Linear::Packed(p) => float::gemm_decoded(n, k, x, m, y, |r, buf| p.decode_row_f32(r, buf)),
            Linear::Float { w, .. } => float::gemm_f32(w, n, k, x, m, y),
            Linear::Half { w, finite, .. } => float::gemm_f16(w, n, k, x, m, y, *finite),
            Linear::Q8 { q, scales, .. } => float::gemm_q8(q, scales, n, k, x, m, y),
            Linear::Q6K { blocks, .. } => q6k::gemm(blocks, n, k, x, m, y),
        }
        Ok(())
    }
}

/// `ys[j] = x W_j^T` for linears that share their input (q, k, v; gate, up). Packed ones with
/// the same input width and no per-column scale (or one alone) quantize `x` once for all, as
/// each would alone: results are those of `PackedMatrix::matmul_into`, bit for bit. The GEMV
/// prefetches `PREFETCH_BYTES` ahead of where it reads, so each matrix's first lines are
/// asked for before it runs (they would come at full memory latency).
pub fn forward_shared_input(layers: &[&Linear], backend: Backend, x: &[f32], m: usize, ys: &mut [&mut [f32]], act_quant: bool) -> Result<()> {
    let packed: Option<Vec<&PackedMatrix>> = layers
        .iter()
        .map(|l| match l {
            Linear::Packed(p) if act_quant && (layers.len() == 1 || !matches!(p.scale(), ScaleKind::OneBit { .. })) => Some(p),
            _ => None,
        })
        .collect();
    let Some(packed) = packed.filter(|p| p.iter().all(|q| q.shape().1 == p[0].shape().1 && q.padded_k() == p[0].padded_k())) else {
        for (l, y) in layers.iter().zip(ys.iter_mut()) {
            l.forward(backend, x, m, y, act_quant)?;
        }
        return Ok(());
    };
    if x.len() != m * packed[0].shape().1 || packed.iter().zip(ys.iter()).any(|(p, y)| y.len() != m * p.shape().0) {
        crate::bail!(InvalidArgument, "linear inputs and outputs disagree in size");
    }
    float::prefetch_start(packed[0].packed_data());
    let act = packed[0].quantize_input(x, m);
    for (j, (p, y)) in packed.iter().zip(ys.iter_mut()).enumerate() {
        if let Some(next) = packed.get(j + 1) {
            float::prefetch_start(next.packed_data());
        }
        p.matmul_quantized_into(backend, &act, x, m, y)?;
    }
    Ok(())
}

/// binllm's 8-bit layout of an (n, k) matrix, the one quantizer of `Linear::Q8` for the
/// loader and for Python PTQ: int8 codes (n, k) and one scale per `Q8_BLOCK` weights of a row
/// (n, ceil(k / Q8_BLOCK)), `push_q8_row`'s rule.
pub fn q8_blocks(w: &[f32], n: usize, k: usize) -> Result<(Vec<i8>, Vec<f32>)> {
    if w.len() != n * k {
        crate::bail!(InvalidArgument, "q8 blocks: {} values for a ({n}, {k}) matrix", w.len());
    }
    let (mut q, mut scales) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k.div_ceil(Q8_BLOCK)));
    if k > 0 {
        for row in w.chunks_exact(k) {
            push_q8_row(row, &mut q, &mut scales);
        }
    }
    Ok((q, scales))
}

/// One row as `Q8_BLOCK`-weight blocks: int8 codes `round(v / d)` with `d = max|v| / 127`,
/// rounding half away from zero.
fn push_q8_row(row: &[f32], q: &mut Vec<i8>, scales: &mut Vec<f32>) {
    for block in row.chunks(Q8_BLOCK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        scales.push(d);
        q.extend(block.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8));
    }
}

/// Q6_K blocks of `n` rows of `k` values, row `r` written by `row(r, buf)`: rows go to the
/// thread pool (the quantizer's scale search costs about 20 ns a weight), each row's last block
/// zero-padded.
fn q6k_rows(blocks: &mut Vec<u8>, n: usize, k: usize, row: impl Fn(usize, &mut Vec<f32>) + Sync) {
    let row_bytes = k.div_ceil(Q6K_WEIGHTS) * Q6K_BYTES;
    blocks.resize(n * row_bytes, 0);
    let rows_per_task = (n / (crate::threads::num_threads() * 8)).max(1);
    crate::threads::for_each_chunk(blocks, rows_per_task * row_bytes, |chunk, part| {
        let mut buf = Vec::with_capacity(k);
        for (j, out) in part.chunks_mut(row_bytes).enumerate() {
            buf.clear();
            row(chunk * rows_per_task + j, &mut buf);
            buf.resize(row_bytes / Q6K_BYTES * Q6K_WEIGHTS, 0.0);
            for (o, x) in out.chunks_exact_mut(Q6K_BYTES).zip(buf.chunks_exact(Q6K_WEIGHTS)) {
                o.copy_from_slice(&crate::loader::quantize_q6_k_block(x));
            }
        }
    });
}

/// How float-valued tensors are kept in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatStorage {
    F32,
    F16,
    Q8,
    /// GGML Q6_K blocks (6.56 bits a weight), for the output layer and embeddings.
    Q6K,
}

impl FloatStorage {
    /// `f32`, `f16`, `q8_0` (binllm's 8-bit blocks of 32, GGUF Q8_0's grid) or `q6_k`, as the
    /// `--output-type` option names them.
    pub fn from_name(name: &str) -> Result<FloatStorage> {
        match name {
            "f32" => Ok(FloatStorage::F32),
            "f16" => Ok(FloatStorage::F16),
            "q8_0" | "q8" => Ok(FloatStorage::Q8),
            "q6_k" => Ok(FloatStorage::Q6K),
            other => crate::bail!(InvalidArgument, "output type '{other}' (binllm keeps the output layer as f32, f16, q8_0 or q6_k)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_blocks_round_ties_away_from_zero_and_pad_no_row() {
        // max|v| = 127 gives d = 1: each value is its own code, ties included.
        let mut w = vec![0.5, 1.5, 2.5, -0.5, -2.5, 127.0, 0.0];
        w.extend((0..33).map(|i| i as f32 * 0.25));
        let (q, d) = q8_blocks(&w[..35], 1, 35).unwrap();
        assert_eq!(q[..7], [1, 2, 3, -1, -3, 127, 0]);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], 1.0);
        assert_eq!(q.len(), 35);
        assert!(q8_blocks(&w, 3, 7).is_err());
        assert_eq!(q8_blocks(&[], 4, 0).unwrap(), (vec![], vec![]));
    }
}

//! The transformer forward pass shared by Python and the browser build: BitNet b1.58
//! (sub-norms, relu2 or SiLU, ternary linears with int8 activations) and Llama (SiLU, float
//! or BitNet-style linears). One function, `Model::forward`, read top to bottom:
//!
//! ```text
//! x = embed(tokens)                                   (m x hidden)
//! for each layer:
//!     h = rmsnorm(x) ; q, k, v = h Wq, h Wk, h Wv ; rope(q, k) ; cache k, v
//!     a = attention(q, cache)          [ a = rmsnorm(a) if sub-norms ]
//!     x = x + a Wo
//!     h = rmsnorm(x) ; g = act(h Wgate) * (h Wup)   [ g = rmsnorm(g) if sub-norms ]
//!     x = x + g Wdown
//! logits = rmsnorm(x) Wout
//! ```
//! Prefill runs all prompt tokens through the GEMM kernels at once; decode runs one token
//! through the GEMV kernels. Attention heads are split over the thread pool.

pub mod config;
pub mod defaults;
pub mod export;
pub mod linear;
pub mod load;
pub mod names;
pub mod sampler;
#[cfg(not(target_arch = "wasm32"))]
pub mod source;

use crate::error::Result;
use crate::kernels::float::prefetch_ahead;
use crate::kernels::{self, Backend};
pub use config::{Activation, LinearKind, ModelConfig, RopeScaling, RopeStyle, SubNorms, WeightScale};
pub use defaults::GenerationDefaults;
use half::f16;
pub use linear::{FloatStorage, Linear};

/// One decoder block's weights, in the module doc's names.
struct Layer {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_sub_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    ffn_sub_norm: Option<Vec<f32>>,
}

/// A model's hyper-parameters and weights. The weights are private to this module (the
/// loaders build them, the exporter writes them, `load::LoadOptions` re-stores them): hosts
/// see a model through its methods, so what a model holds can change without touching them.
pub struct Model {
    config: ModelConfig,
    /// Token embeddings, vocab x hidden (also the output layer when tied).
    embed: Linear,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// None when the output layer is tied to the embeddings.
    lm_head: Option<Linear>,
    /// Whether BitNet linears quantize activations to int8 (true for real inference; false is
    /// a reference mode used to compare against float implementations).
    act_quant: bool,
    /// How new caches hold keys and values (`load::LoadOptions::kv_type`).
    kv_type: KvType,
}

/// One weight matrix as `Model::tensor_summary` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSummary {
    /// "embedding", "attention", "mlp" or "output".
    pub kind: &'static str,
    /// How its weights are stored (`Linear::storage`).
    pub storage: &'static str,
    pub parameters: usize,
    /// Bytes it holds, scales included.
    pub bytes: usize,
}

impl Model {
    /// The hyper-parameters it was loaded with.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Whether BitNet linears quantize activations to int8 (`load::LoadOptions::act_quant`).
    pub fn act_quant(&self) -> bool {
        self.act_quant
    }

    /// How its caches hold keys and values (`load::LoadOptions::kv_type`).
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// How the output layer (the embedding matrix when they are tied) is stored: "f32", "f16",
    /// "q8" or "q6_k" (`Linear::storage`).
    pub fn output_storage(&self) -> &'static str {
        self.lm_head.as_ref().unwrap_or(&self.embed).storage()
    }

    /// Every weight matrix in model order (embeddings, each layer's attention and MLP linears,
    /// the output layer when not tied), for hosts to report parameters and true bits per
    /// weight by kind and storage. Norm vectors are left out (`nbytes` counts them).
    pub fn tensor_summary(&self) -> Vec<TensorSummary> {
        let summary = |kind, l: &Linear| {
            let (n, k) = l.shape();
            TensorSummary { kind, storage: l.storage(), parameters: n * k, bytes: l.nbytes() }
        };
        let mut rows = vec![summary("embedding", &self.embed)];
        for layer in &self.layers {
            rows.extend([&layer.q, &layer.k, &layer.v, &layer.o].map(|l| summary("attention", l)));
            rows.extend([&layer.gate, &layer.up, &layer.down].map(|l| summary("mlp", l)));
        }
        rows.extend(self.lm_head.iter().map(|h| summary("output", h)));
        rows
    }

    /// Keeps the output layer (the embedding matrix when they are tied) in `storage`: `Q8`
    /// halves the bytes a decode step reads there against f16 (the largest single read of a
    /// model with a big vocabulary: half of BitNet 2B4T's bytes per token), at the cost of
    /// 8-bit weights (about 0.4% of a weight's magnitude; its effect on perplexity is in the
    /// README). Hosts choose it through `load::LoadOptions`.
    fn set_output_storage(&mut self, storage: FloatStorage) -> Result<()> {
        let output = self.lm_head.as_mut().unwrap_or(&mut self.embed);
        if output.float_storage() != Some(storage) {
            *output = output.restored(storage)?;
        }
        Ok(())
    }

    /// Re-packs every ternary decoder linear in `format` (`Ternary2` or `Ternary1_6`), same
    /// codes and scales: t1.6 holds 1.6 bits a weight against t2's 2 (TQ1_0 files load as t2
    /// unless asked). Binary linears and float ones stay as they are. Hosts choose it through
    /// `load::LoadOptions`.
    fn set_ternary_format(&mut self, format: crate::formats::WeightFormat) -> Result<()> {
        use crate::formats::{PackedMatrix, WeightFormat};
        if !matches!(format, WeightFormat::Ternary2 | WeightFormat::Ternary1_6) {
            crate::bail!(InvalidArgument, "ternary linears are stored as t2 or t1.6, not {}", format.name());
        }
        for layer in &mut self.layers {
            for l in [&mut layer.q, &mut layer.k, &mut layer.v, &mut layer.o, &mut layer.gate, &mut layer.up, &mut layer.down] {
                let Linear::Packed(p) = l else { continue };
                if p.format() == format || !matches!(p.format(), WeightFormat::Ternary2 | WeightFormat::Ternary1_6) {
                    continue;
                }
                let (n, k) = p.shape();
                let mut repacked = PackedMatrix::pack(format, &p.unpack(), n, k, p.scale().clone())?;
                if let Some(offset) = p.row_offset() {
                    repacked = repacked.with_row_offset(offset.to_vec())?;
                }
                *l = Linear::Packed(repacked);
            }
        }
        Ok(())
    }
}

/// One sequence of a batched forward pass (`Model::forward_batch`): tokens to run after what
/// its cache holds, and whether logits are wanted for every token or the last one.
pub struct Segment<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub all_logits: bool,
}

/// How a KV cache holds keys and values: as f32, or rounded once to f16 (half the bytes a
/// decode step reads there, and half the memory; llama.cpp's and ik_llama.cpp's default).
/// Attention widens f16 back to f32 exactly, so an f16 cache gives the logits an f32 cache
/// would give for the rounded keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
}

impl KvType {
    /// The type as hosts name it: "f16" or "f32".
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "f16" => Ok(KvType::F16),
            "f32" => Ok(KvType::F32),
            _ => crate::bail!(InvalidArgument, "kv_type '{}' (binllm caches keys and values as f16 or f32)", name.escape_debug()),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        }
    }
}

/// One layer's keys or values, in the cache's type.
enum KvRows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// A view of `KvRows`.
#[derive(Clone, Copy)]
enum KvSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl KvRows {
    fn new(kv_type: KvType) -> Self {
        match kv_type {
            KvType::F32 => KvRows::F32(Vec::new()),
            KvType::F16 => KvRows::F16(Vec::new()),
        }
    }
    fn len(&self) -> usize {
        match self {
            KvRows::F32(v) => v.len(),
            KvRows::F16(v) => v.len(),
        }
    }
    fn truncate(&mut self, len: usize) {
        match self {
            KvRows::F32(v) => v.truncate(len),
            KvRows::F16(v) => v.truncate(len),
        }
    }
    fn nbytes(&self) -> usize {
        match self {
            KvRows::F32(v) => v.len() * 4,
            KvRows::F16(v) => v.len() * 2,
        }
    }
    fn view(&self) -> KvSlice<'_> {
        match self {
            KvRows::F32(v) => KvSlice::F32(v),
            KvRows::F16(v) => KvSlice::F16(v),
        }
    }
    /// Writes `row` at `start`, `start + stride`, ... (growing with zeros to `min_len` first),
    /// rounded to the cache's type by `narrow` (scratch: room for a row).
    fn put(&mut self, row: &[f32], start: usize, stride: usize, min_len: usize, narrow: fn(&[f32], &mut [f16]), scratch: &mut Vec<f16>) {
        match self {
            KvRows::F32(v) => {
                if v.len() < min_len {
                    v.resize(min_len, 0.0);
                }
                if stride == 1 {
                    v[start..start + row.len()].copy_from_slice(row);
                } else {
                    row.iter().enumerate().for_each(|(c, &x)| v[start + c * stride] = x);
                }
            }
            KvRows::F16(v) => {
                if v.len() < min_len {
                    v.resize(min_len, f16::ZERO);
                }
                if stride == 1 {
                    narrow(row, &mut v[start..start + row.len()]);
                } else {
                    scratch.resize(row.len(), f16::ZERO);
                    narrow(row, scratch);
                    scratch.iter().enumerate().for_each(|(c, &x)| v[start + c * stride] = x);
                }
            }
        }
    }
}

/// Keys and values of every layer for the tokens seen so far.
///
/// Values are stored a position per row (`kv_dim` values). Keys are stored in blocks of
/// `KEY_LANES` positions, dimension-major inside a block (`k[block][dim][lane]`), so that
/// attention scores `KEY_LANES` keys at once from contiguous floats (see `key_scores`). Lanes
/// of the last block past `len` are unused. Both are f32 or f16 (`KvType`).
pub struct KvCache {
    k: Vec<KvRows>,
    v: Vec<KvRows>,
    kv_dim: usize,
    len: usize,
    capacity: usize,
    kv_type: KvType,
}

impl KvCache {
    fn new(layers: usize, kv_dim: usize, capacity: usize, kv_type: KvType) -> Self {
        let rows = || (0..layers).map(|_| KvRows::new(kv_type)).collect();
        KvCache { k: rows(), v: rows(), kv_dim, len: 0, capacity, kv_type }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// How keys and values are held.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }
    /// Forgets everything after the first `len` tokens (to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            for (k, v) in self.k.iter_mut().zip(&mut self.v) {
                k.truncate(len.div_ceil(KEY_LANES) * self.kv_dim * KEY_LANES);
                v.truncate(len * self.kv_dim);
            }
            self.len = len;
        }
    }
    pub fn clear(&mut self) {
        self.truncate(0);
    }
    /// Bytes held by cached keys and values.
    pub fn nbytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(KvRows::nbytes).sum()
    }

    /// Stores the keys and values (rows of `kv_dim`) of layer `layer` for the positions after
    /// the `len` cached ones.
    fn append(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        let kv_dim = self.kv_dim;
        let narrow = kernels::float::dots().narrow_f16;
        let mut scratch = Vec::new();
        for (t, row) in keys.chunks_exact(kv_dim).enumerate() {
            let (block, lane) = ((self.len + t) / KEY_LANES, (self.len + t) % KEY_LANES);
            let start = block * kv_dim * KEY_LANES;
            self.k[layer].put(row, start + lane, KEY_LANES, start + kv_dim * KEY_LANES, narrow, &mut scratch);
        }
        let v = &mut self.v[layer];
        let at = v.len();
        v.put(values, at, 1, at + values.len(), narrow, &mut scratch);
    }
}

/// RMS norm of each row of `x` (rows of `weight.len()` values) into `out`; a prompt's rows
/// go to the thread pool.
fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    let per = crate::threads::elementwise_rows_per_task(x.len() / d, d);
    crate::threads::for_each_chunk(out, per * d, |task, o| {
        let x = &x[task * per * d..task * per * d + o.len()];
        for (row, o) in x.chunks_exact(d).zip(o.chunks_exact_mut(d)) {
            let inv = rms_inverse(row, eps);
            for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
                *o = v * inv * w;
            }
        }
    });
}

fn rmsnorm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let d = weight.len();
    let per = crate::threads::elementwise_rows_per_task(x.len() / d, d);
    crate::threads::for_each_chunk(x, per * d, |_, rows| {
        for row in rows.chunks_exact_mut(d) {
            let inv = rms_inverse(row, eps);
            row.iter_mut().zip(weight).for_each(|(v, w)| *v = *v * inv * w);
        }
    });
}

fn rms_inverse(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// `exp`, `cos` and `sin` of an f32 computed in f64 and rounded once: the same f32 on every
/// platform (wasm32's libm and glibc differ in the last bit of their f32 functions; int8
/// activation quantization turns such bits into different codes, which 30 layers grew to 4% of
/// the logits of a 2B4T-shaped model). Native results move by at most a few 1e-5 logits.
///
/// `exp` is computed here rather than by libm, in f64 arithmetic alone (no branch, no call,
/// no fused multiply-add), so that loops over it vectorize and every platform gets the same
/// bits: x = k ln 2 + r with |r| <= ln 2 / 2 (k rounded by the 1.5 * 2^52 trick), e^r by its
/// Taylor series to r^12 (relative error below 2e-16, so the f32 rounding equals that of
/// libm's f64 `exp` except within 2e-16 of a tie), times 2^k built from k's bits. Inputs
/// are clamped to [-104, 89], beyond which the f32 result is 0 or infinity anyway; NaN stays
/// NaN.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // 1.5 * 2^52: adding it rounds to an integer.
    const SHIFT: f64 = 6755399441055744.0;
    // ln 2 in two parts (fdlibm's): the high one has 11 trailing zero bits, so k * LN2_HI is
    // exact for every k used here.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    let x = (x as f64).clamp(-104.0, 89.0);
    let t = x * std::f64::consts::LOG2_E + SHIFT;
    let k = t - SHIFT;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 479_001_600.0; // 1/12!
    for d in [39_916_800.0, 3_628_800.0, 362_880.0, 40_320.0, 5_040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = p * r + 1.0 / d;
    }
    // 2^k: k sits in the low bits of t (its exponent is fixed at 2^52).
    let k_bits = t.to_bits().wrapping_sub(SHIFT.to_bits());
    let scale = f64::from_bits(k_bits.wrapping_add(1023) << 52);
    (p * scale) as f32
}

/// `g = silu(g) * u` (SiLU: g / (1 + e^-g)), compiled for AVX-512 or AVX2 where the backend in
/// use has them, so that `exp_f32` runs in vector lanes; the arithmetic is the same on every
/// backend (no fused multiply-adds), so are the results.
fn silu_mul(g: &mut [f32], u: &[f32]) {
    #[inline(always)]
    fn body(g: &mut [f32], u: &[f32]) {
        g.iter_mut().zip(u).for_each(|(g, u)| *g = *g / (1.0 + exp_f32(-*g)) * u)
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(g: &mut [f32], u: &[f32]) {
            body(g, u)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(g: &mut [f32], u: &[f32]) {
            body(g, u)
        }
        let backend = kernels::dispatch_backend();
        if backend.uses_avx512() {
            // SAFETY: the backend is available, so the CPU has AVX-512.
            return unsafe { avx512(g, u) };
        }
        if backend.uses_avx2() {
            // SAFETY: as above, AVX2.
            return unsafe { avx2(g, u) };
        }
    }
    body(g, u)
}

fn cos_sin_f32(x: f32) -> (f32, f32) {
    let (s, c) = (x as f64).sin_cos();
    (c as f32, s as f32)
}

/// Keys scored together by `key_scores` (positions per block of the key cache).
const KEY_LANES: usize = 8;

/// Heads whose keys `key_scores` scores in one pass: independent sums that keep the vector
/// units busy while each sum waits on its previous add. WebAssembly has no prefetch, and there
/// one head at a time reads a key block as one sequential stream, which memory serves faster
/// than four side by side (a decode step with 160 cached positions in Chromium: 22.6 ms with
/// four heads, 21.2 with two, 20.4 with one). Sums are the same either way.
const HEADS_AT_ONCE: usize = if cfg!(target_arch = "wasm32") { 1 } else { 4 };

/// `sums[h][l] = q[h] . key_{h,l}` for `H` heads and the `KEY_LANES` keys of a block of the key
/// cache (`keys[h][d * KEY_LANES + l]` is dimension d of key l for head h). Each sum runs in
/// order over q's length, exactly as `q.iter().zip(key).map(|(a, b)| a * b).sum()` would: the
/// SIMD lanes run across keys and heads, so no sum is reordered.
#[inline(always)]
fn key_scores<const H: usize>(q: [&[f32]; H], keys: [&[f32]; H], sums: &mut [[f32; KEY_LANES]; H]) {
    let hd = q[0].len();
    for h in 0..H {
        assert!(q[h].len() == hd && keys[h].len() == hd * KEY_LANES);
    }
    let mut acc = [[-0.0f32; KEY_LANES]; H]; // f32's Sum starts from -0.0
    for d in 0..hd {
        if d % 2 == 0 {
            // A key block of one head is 3 KiB or so: streams read side by side, which the
            // hardware prefetchers follow poorly (27 GB/s with this against 21 on Zen 5).
            for h in 0..H {
                prefetch_ahead(keys[h][d * KEY_LANES..].as_ptr());
            }
        }
        for h in 0..H {
            let qd = q[h][d];
            let kd = &keys[h][d * KEY_LANES..(d + 1) * KEY_LANES];
            for l in 0..KEY_LANES {
                acc[h][l] += qd * kd[l];
            }
        }
    }
    *sums = acc;
}

/// Scores (whose largest is `max`) to probabilities, exp / total, as the plain loop divides.
#[inline(always)]
fn softmax_in_place(row: &mut [f32], max: f32) {
    // The exponentials first (a loop that vectorizes), then their sum in order.
    for s in row.iter_mut() {
        *s = exp_f32(*s - max);
    }
    let total = row.iter().fold(0f32, |total, &s| total + s);
    for s in row.iter_mut() {
        *s /= total;
    }
}

/// What one attention task needs: the geometry and the query row's inputs.
#[derive(Clone, Copy)]
struct AttentionTask<'a> {
    q: &'a [f32],
    keys: KvSlice<'a>,
    values: KvSlice<'a>,
    /// Widens an f16 cache's keys and values (`Dots::widen_f16`).
    widen: fn(&[f16], &mut [f32]),
    hd: usize,
    kv_dim: usize,
    group: usize,
    scale: f32,
    visible: usize,
    h0: usize,
    heads: usize,
}

/// `range` of `rows` as f32: the cache's own floats, or an f16 cache's values widened into
/// `buf` (exactly).
#[inline(always)]
fn kv_f32<'a>(rows: KvSlice<'a>, range: std::ops::Range<usize>, widen: fn(&[f16], &mut [f32]), buf: &'a mut Vec<f32>) -> &'a [f32] {
    match rows {
        KvSlice::F32(r) => &r[range],
        KvSlice::F16(r) => {
            buf.resize(range.len(), 0.0);
            widen(&r[range], buf);
            buf
        }
    }
}

/// `key_scores` of the consecutive heads `hs` against key block `b` of `task`: over f16 keys
/// widened in registers where `F16C` (`x86::key_scores_f16`), else over the block's keys of
/// those heads' KV heads as f32 (an f16 cache's widened into `kbuf` for these heads only, so
/// that they stay in L1).
#[inline(always)]
fn block_scores<const F16C: bool, const H: usize>(task: &AttentionTask, b: usize, hs: [usize; H], kbuf: &mut Vec<f32>, sums: &mut [[f32; KEY_LANES]; H]) {
    let AttentionTask { q, keys, widen, hd, kv_dim, group, .. } = *task;
    let head_q = |h: usize| &q[h * hd..(h + 1) * hd];
    // Keys of KV heads ka..kb in block b.
    let span = |ka: usize, kb: usize| b * kv_dim * KEY_LANES + ka * hd * KEY_LANES..b * kv_dim * KEY_LANES + kb * hd * KEY_LANES;
    #[cfg(target_arch = "x86_64")]
    if let (true, KvSlice::F16(k16)) = (F16C, keys) {
        // SAFETY: `F16C`: this instance runs only where the CPU has AVX2 and F16C.
        return unsafe { x86::key_scores_f16(hs.map(head_q), hs.map(|h| &k16[span(h / group, h / group + 1)]), sums) };
    }
    let ka = hs[0] / group;
    let block = kv_f32(keys, span(ka, hs[H - 1] / group + 1), widen, kbuf);
    key_scores(hs.map(head_q), hs.map(|h| &block[(h / group - ka) * hd * KEY_LANES..(h / group - ka + 1) * hd * KEY_LANES]), sums);
}

/// Attention of `task.heads` heads from `task.h0` of one query row (`Model::attention`),
/// into `o` (heads x hd). Compiled once per instruction set (`attend`). Only the KV heads of
/// the task's heads are read (kv0..kv1). An f16 cache's keys and values are read as f16 and
/// widened in registers where `F16C` (`x86::key_scores_f16`, `x86::add_scaled_f16`), else
/// widened a key block and a value row at a time into L1-sized buffers; either way the
/// arithmetic is the f32 cache's.
#[inline(always)]
fn attend_generic<const F16C: bool>(task: &AttentionTask, o: &mut [f32]) {
    let AttentionTask { values, widen, hd, kv_dim, group, scale, visible, h0, heads, .. } = *task;
    let (kv0, kv1) = (h0 / group, (h0 + heads - 1) / group + 1);
    let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
    let mut scores = vec![0f32; heads * visible];
    let mut max = vec![f32::NEG_INFINITY; heads];
    for b in 0..visible.div_ceil(KEY_LANES) {
        let j0 = b * KEY_LANES;
        let lanes = KEY_LANES.min(visible - j0);
        let mut store = |t: usize, sums: &[f32; KEY_LANES]| {
            for (l, &sum) in sums[..lanes].iter().enumerate() {
                let s = sum * scale;
                max[t] = max[t].max(s);
                scores[t * visible + j0 + l] = s;
            }
        };
        let mut t = 0;
        while t + HEADS_AT_ONCE <= heads {
            let mut sums = [[0f32; KEY_LANES]; HEADS_AT_ONCE];
            block_scores::<F16C, HEADS_AT_ONCE>(task, b, std::array::from_fn(|i| h0 + t + i), &mut kbuf, &mut sums);
            for (i, s) in sums.iter().enumerate() {
                store(t + i, s);
            }
            t += HEADS_AT_ONCE;
        }
        while t < heads {
            let mut sums = [[0f32; KEY_LANES]; 1];
            block_scores::<F16C, 1>(task, b, [h0 + t], &mut kbuf, &mut sums);
            store(t, &sums[0]);
            t += 1;
        }
    }
    for (t, row) in scores.chunks_exact_mut(visible).enumerate() {
        softmax_in_place(row, max[t]);
    }
    o.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if let (true, KvSlice::F16(v16)) = (F16C, values) {
        // Where each head's values start in a cached row.
        let offsets: Vec<usize> = (h0..h0 + heads).map(|h| h / group * hd).collect();
        for (j, row) in v16.chunks_exact(kv_dim).take(visible).enumerate() {
            for (t, (o, &at)) in o.chunks_exact_mut(hd).zip(&offsets).enumerate() {
                // SAFETY: `F16C`, as for the keys.
                unsafe { x86::add_scaled_f16(o, scores[t * visible + j], &row[at..at + hd]) };
            }
        }
        return;
    }
    for j in 0..visible {
        let vj = kv_f32(values, j * kv_dim + kv0 * hd..j * kv_dim + kv1 * hd, widen, &mut vbuf);
        for (t, h) in (h0..h0 + heads).enumerate() {
            let p = scores[t * visible + j];
            let kv = h / group - kv0;
            for c in (0..hd).step_by(16) {
                prefetch_ahead(vj[kv * hd + c..].as_ptr());
            }
            o[t * hd..(t + 1) * hd].iter_mut().zip(&vj[kv * hd..(kv + 1) * hd]).for_each(|(a, b)| *a += p * b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn attend_avx2(t: &AttentionTask, o: &mut [f32]) {
    attend_generic::<true>(t, o)
}

/// `attend_generic` compiled for AVX2 (and F16C) where the backend in use has it (no FMA: sums
/// stay those of the plain loop, so results do not depend on the backend).
fn attend(t: &AttentionTask, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if kernels::dispatch_backend().uses_avx2() {
        // SAFETY: the backend is available, so the CPU has AVX2 and F16C.
        return unsafe { attend_avx2(t, o) };
    }
    attend_generic::<false>(t, o)
}

/// An f16 cache read without widening it into memory first (`attend_generic::<true>`): a
/// decode step's attention on a 2-core AMD EPYC (Zen 3) VM, 729M at 1500-1700 cached
/// positions, one thread, both in one process, alternating (2026-12-07): 31.1 -> 28.5 ms a
/// token (with each head's value offset computed once rather than per position); decode at
/// 1000-1250 positions 18.8 -> 20.2 tok/s.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{prefetch_ahead, KEY_LANES};
    use core::arch::x86_64::*;
    use half::f16;

    const _: () = assert!(KEY_LANES == 8, "a key block's dimension is one 8-lane vector");

    /// `key_scores` over f16 keys: each 8-lane dimension of a key block widened in a register
    /// (exactly) and multiplied, then added, in the same order: the same sums bit for bit.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn key_scores_f16<const H: usize>(q: [&[f32]; H], keys: [&[f16]; H], sums: &mut [[f32; KEY_LANES]; H]) {
        let hd = q[0].len();
        for h in 0..H {
            assert!(q[h].len() == hd && keys[h].len() == hd * KEY_LANES);
        }
        let mut acc = [_mm256_set1_ps(-0.0); H]; // f32's Sum starts from -0.0
        for d in 0..hd {
            if d % 4 == 0 {
                for k in &keys {
                    prefetch_ahead(k.as_ptr().add(d * KEY_LANES));
                }
            }
            for h in 0..H {
                let k = _mm256_cvtph_ps(_mm_loadu_si128(keys[h].as_ptr().add(d * KEY_LANES) as *const __m128i));
                acc[h] = _mm256_add_ps(acc[h], _mm256_mul_ps(_mm256_set1_ps(q[h][d]), k));
            }
        }
        for h in 0..H {
            _mm256_storeu_ps(sums[h].as_mut_ptr(), acc[h]);
        }
    }

    /// `o[c] += p * v[c]` over f16 `v` (as long as `o`), widened in registers.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn add_scaled_f16(o: &mut [f32], p: f32, v: &[f16]) {
        let n = o.len();
        assert!(v.len() >= n);
        let (pv, po, scale) = (v.as_ptr(), o.as_mut_ptr(), _mm256_set1_ps(p));
        let mut c = 0;
        while c + 8 <= n {
            if c % 32 == 0 {
                prefetch_ahead(pv.add(c));
            }
            let x = _mm256_cvtph_ps(_mm_loadu_si128(pv.add(c) as *const __m128i));
            _mm256_storeu_ps(po.add(c), _mm256_add_ps(_mm256_loadu_ps(po.add(c)), _mm256_mul_ps(scale, x)));
            c += 8;
        }
        for c in c..n {
            o[c] += p * v[c].to_f32();
        }
    }
}

/// Query rows of a prompt attended together by `attend_rows`.
const QUERY_ROWS: usize = 4;

/// `attend_generic` for `rows` (at most `QUERY_ROWS`) consecutive query rows of a prompt, all
/// of `t.q` (rows of every head), into `o` (rows x heads x hd); `t.visible` is what the first
/// row sees, each later row one key more. A head's key block is scored for every row at once
/// and a value row is added to every row's output at once, so each is read from L2 once per
/// `QUERY_ROWS` rows instead of once per row. Each row's sums, softmax and weighted sum are
/// those of `attend_generic`, in the same order: the results are bit-identical.
#[inline(always)]
fn attend_rows_generic(t: &AttentionTask, rows: usize, o: &mut [f32]) {
    let AttentionTask { q, keys, values, widen, hd, kv_dim, group, scale, visible, h0, heads } = *t;
    assert!((1..=QUERY_ROWS).contains(&rows) && q.len() % rows == 0 && o.len() == rows * heads * hd);
    let q_dim = q.len() / rows;
    let last = visible + rows - 1; // keys the last row sees
    let (kv0, kv1) = (h0 / group, (h0 + heads - 1) / group + 1);
    let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
    // scores[(r * heads + t) * last + j], max[r * heads + t].
    let mut scores = vec![0f32; rows * heads * last];
    let mut max = vec![f32::NEG_INFINITY; rows * heads];
    let block_len = kv_dim * KEY_LANES;
    for b in 0..last.div_ceil(KEY_LANES) {
        let j0 = b * KEY_LANES;
        for t in 0..heads {
            let (h, kv) = (h0 + t, (h0 + t) / group);
            let k = kv_f32(keys, b * block_len + kv * hd * KEY_LANES..b * block_len + (kv + 1) * hd * KEY_LANES, widen, &mut kbuf);
            // Rows past `rows` repeat the last one; their sums are dropped.
            let qs: [&[f32]; QUERY_ROWS] = std::array::from_fn(|r| {
                let r = r.min(rows - 1);
                &q[r * q_dim + h * hd..r * q_dim + (h + 1) * hd]
            });
            let mut sums = [[0f32; KEY_LANES]; QUERY_ROWS];
            key_scores(qs, [k; QUERY_ROWS], &mut sums);
            for (r, sums) in sums[..rows].iter().enumerate() {
                let seen = visible + r;
                if j0 >= seen {
                    continue;
                }
                let at = r * heads + t;
                for (l, &sum) in sums[..KEY_LANES.min(seen - j0)].iter().enumerate() {
                    let s = sum * scale;
                    max[at] = max[at].max(s);
                    scores[at * last + j0 + l] = s;
                }
            }
        }
    }
    for (at, row) in scores.chunks_exact_mut(last).enumerate() {
        softmax_in_place(&mut row[..visible + at / heads], max[at]);
    }
    o.fill(0.0);
    for j in 0..last {
        let vj = kv_f32(values, j * kv_dim + kv0 * hd..j * kv_dim + kv1 * hd, widen, &mut vbuf);
        for (r, o) in o.chunks_exact_mut(heads * hd).enumerate() {
            if j >= visible + r {
                continue;
            }
            for (t, h) in (h0..h0 + heads).enumerate() {
                let p = scores[(r * heads + t) * last + j];
                let kv = h / group - kv0;
                if r == 0 {
                    for c in (0..hd).step_by(16) {
                        prefetch_ahead(vj[kv * hd + c..].as_ptr());
                    }
                }
                o[t * hd..(t + 1) * hd].iter_mut().zip(&vj[kv * hd..(kv + 1) * hd]).for_each(|(a, b)| *a += p * b);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_rows_avx2(t: &AttentionTask, rows: usize, o: &mut [f32]) {
    attend_rows_generic(t, rows, o)
}

/// `attend_rows_generic` compiled as `attend` is.
fn attend_rows(t: &AttentionTask, rows: usize, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if kernels::dispatch_backend().uses_avx2() {
        // SAFETY: the backend is available, so the CPU has AVX2.
        return unsafe { attend_rows_avx2(t, rows, o) };
    }
    attend_rows_generic(t, rows, o)
}

impl Model {
    /// An empty cache for up to `capacity` tokens (at most the model's positions), holding
    /// keys and values as the model's `kv_type` says.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let capacity = capacity.min(self.config.max_positions).max(1);
        KvCache::new(self.config.layers, self.config.kv_heads * self.config.head_dim, capacity, self.kv_type)
    }

    /// Hints the operating system to hold every weight matrix on huge pages (what a decode
    /// step streams; `memory::use_huge_pages`). The loaders' last step (`LoadOptions::apply`).
    pub fn use_huge_pages(&self) {
        self.embed.use_huge_pages();
        if let Some(head) = &self.lm_head {
            head.use_huge_pages();
        }
        for l in &self.layers {
            for linear in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                linear.use_huge_pages();
            }
        }
    }

    /// Bytes of all weights held (packed codes, scales, float tensors).
    pub fn nbytes(&self) -> usize {
        let lin = |l: &Linear| l.nbytes();
        let norms = |v: &Option<Vec<f32>>| v.as_ref().map(|x| x.len() * 4).unwrap_or(0);
        self.embed.nbytes()
            + self.norm.len() * 4
            + self.lm_head.as_ref().map(lin).unwrap_or(0)
            + self
                .layers
                .iter()
                .map(|l| {
                    [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].iter().map(|x| lin(x)).sum::<usize>()
                        + (l.attn_norm.len() + l.ffn_norm.len()) * 4
                        + norms(&l.attn_sub_norm)
                        + norms(&l.ffn_sub_norm)
                })
                .sum::<usize>()
    }

    /// Runs `tokens` after what `cache` holds. Returns logits: for every token
    /// (`all_logits`, m x vocab) or for the last one (vocab).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<Vec<f32>> {
        self.forward_observed(tokens, cache, all_logits, None)
    }

    /// `forward`, also handing the input of every decoder linear layer to `observe` (for
    /// calibration: post-training quantizers build each layer's Hessian X^T X from these).
    /// Called as `observe(layer, site, x)` with `x` holding m rows of the layer's input width;
    /// `site` is "attn_in" (q, k, v), "o_in" (o), "ffn_in" (gate, up) or "down_in" (down).
    pub fn forward_observed(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
        observe: Option<&mut dyn FnMut(usize, &'static str, &[f32])>,
    ) -> Result<Vec<f32>> {
        let mut segments = [Segment { tokens, cache, all_logits }];
        let mut logits = self.run(&mut segments, None, observe)?;
        Ok(logits.pop().unwrap_or_default())
    }

    /// Runs the decoder layers on hidden states `x` (m rows of `hidden` floats, entering the
    /// first layer) after what `cache` holds, and returns the hidden states leaving the last
    /// layer (before the final norm). Calibration runs a model one block at a time this way,
    /// each block's input the previous block's output; `observe` as in `forward_observed`.
    pub fn forward_hidden(&self, x: &[f32], cache: &mut KvCache, observe: Option<&mut dyn FnMut(usize, &'static str, &[f32])>) -> Result<Vec<f32>> {
        let mut segments = [Segment { tokens: &[], cache, all_logits: false }];
        let mut out = self.run(&mut segments, Some(x), observe)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Runs several sequences in one pass: each segment's tokens after what its own cache
    /// holds (a decode step's one token, or a prompt). Rows of every segment go through each
    /// linear layer together (the GEMM path: weights are read once for all), attention runs
    /// per segment over its cache. Logits per segment as `forward` returns them, and equal to
    /// what `forward` gives each segment alone, bit for bit: every row's arithmetic is the same.
    pub fn forward_batch(&self, segments: &mut [Segment<'_>]) -> Result<Vec<Vec<f32>>> {
        self.run(segments, None, None)
    }

    /// The forward pass: from the segments' tokens, or from `hidden` states (one segment, its
    /// tokens empty), whose result is then the last layer's output instead of logits.
    fn run(
        &self,
        segments: &mut [Segment<'_>],
        hidden: Option<&[f32]>,
        mut observe: Option<&mut dyn FnMut(usize, &'static str, &[f32])>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut seen = |layer: usize, site: &'static str, x: &[f32]| {
            if let Some(f) = observe.as_mut() {
                f(layer, site, x)
            }
        };
        let cfg = &self.config;
        if segments.is_empty() {
            crate::bail!(InvalidArgument, "no sequences to run");
        }
        let lens: Vec<usize> = match hidden {
            Some(x) => {
                if segments.len() != 1 || x.len() % cfg.hidden != 0 {
                    crate::bail!(InvalidArgument, "hidden states are rows of {} floats for one sequence, got {} floats", cfg.hidden, x.len());
                }
                vec![x.len() / cfg.hidden]
            }
            None => segments.iter().map(|s| s.tokens.len()).collect(),
        };
        for (seg, &m) in segments.iter().zip(&lens) {
            if m == 0 {
                crate::bail!(InvalidArgument, "no tokens to run");
            }
            if seg.cache.len + m > seg.cache.capacity {
                crate::bail!(InvalidArgument, "{} tokens do not fit in the context: {} already cached, room for {}", m, seg.cache.len, seg.cache.capacity);
            }
            if let Some(&bad) = seg.tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
                crate::bail!(InvalidArgument, "token id {bad} is outside the vocabulary (size {})", cfg.vocab);
            }
        }
        let backend = kernels::active_backend()?;
        let (d, hd) = (cfg.hidden, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.heads * hd, cfg.kv_heads * hd);
        // Rows of all segments, one after the other: segment s holds rows starts[s]..starts[s + 1].
        let mut starts = vec![0usize];
        for &len in &lens {
            starts.push(starts.last().unwrap() + len);
        }
        let m = *starts.last().unwrap();

        let mut x = Vec::with_capacity(m * d);
        match hidden {
            Some(h) => x.extend_from_slice(h),
            None => {
                let mut row = Vec::with_capacity(d);
                for &t in segments.iter().flat_map(|s| s.tokens) {
                    self.embed.row_f32(t as usize, &mut row);
                    x.extend_from_slice(&row);
                }
            }
        }
        let mut h = vec![0f32; m * d];
        let (mut q, mut k, mut v) = (vec![0f32; m * q_dim], vec![0f32; m * kv_dim], vec![0f32; m * kv_dim]);
        let mut attn = vec![0f32; m * q_dim];
        let mut proj = vec![0f32; m * d];
        let (mut gate, mut up) = (vec![0f32; m * cfg.intermediate], vec![0f32; m * cfg.intermediate]);
        let inv_freq = cfg.rope_inv_freq();

        for (li, layer) in self.layers.iter().enumerate() {
            rmsnorm(&x, &layer.attn_norm, cfg.rms_eps, &mut h);
            seen(li, "attn_in", &h);
            linear::forward_shared_input(&[&layer.q, &layer.k, &layer.v], backend, &h, m, &mut [&mut q, &mut k, &mut v], self.act_quant)?;
            for (s, seg) in segments.iter_mut().enumerate() {
                let (r0, r1) = (starts[s], starts[s + 1]);
                let pos0 = seg.cache.len;
                self.rope(&mut q[r0 * q_dim..r1 * q_dim], cfg.heads, pos0, &inv_freq);
                self.rope(&mut k[r0 * kv_dim..r1 * kv_dim], cfg.kv_heads, pos0, &inv_freq);
                seg.cache.append(li, &k[r0 * kv_dim..r1 * kv_dim], &v[r0 * kv_dim..r1 * kv_dim]);
                let cache = &*seg.cache;
                self.attention(&q[r0 * q_dim..r1 * q_dim], cache.k[li].view(), cache.v[li].view(), pos0, r1 - r0, &mut attn[r0 * q_dim..r1 * q_dim]);
            }
            if let Some(w) = &layer.attn_sub_norm {
                rmsnorm_in_place(&mut attn, w, cfg.rms_eps);
            }
            seen(li, "o_in", &attn);
            self.linear(&layer.o, backend, &attn, m, &mut proj)?;
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);

            rmsnorm(&x, &layer.ffn_norm, cfg.rms_eps, &mut h);
            seen(li, "ffn_in", &h);
            linear::forward_shared_input(&[&layer.gate, &layer.up], backend, &h, m, &mut [&mut gate, &mut up], self.act_quant)?;
            let activation = cfg.activation;
            let per = crate::threads::elementwise_rows_per_task(m, cfg.intermediate);
            crate::threads::for_each_chunk(&mut gate, per * cfg.intermediate, |task, g| {
                let u = &up[task * per * cfg.intermediate..task * per * cfg.intermediate + g.len()];
                match activation {
                    Activation::Silu => silu_mul(g, u),
                    Activation::Relu2 => g.iter_mut().zip(u).for_each(|(g, u)| {
                        let r = g.max(0.0);
                        *g = r * r * u
                    }),
                }
            });
            if let Some(w) = &layer.ffn_sub_norm {
                rmsnorm_in_place(&mut gate, w, cfg.rms_eps);
            }
            seen(li, "down_in", &gate);
            self.linear(&layer.down, backend, &gate, m, &mut proj)?;
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }
        for (s, seg) in segments.iter_mut().enumerate() {
            seg.cache.len += starts[s + 1] - starts[s];
        }
        if hidden.is_some() {
            return Ok(vec![x]);
        }

        // Only the rows whose logits are wanted go through the (large) output layer, all
        // segments' rows in one pass.
        let wanted: Vec<(usize, usize)> =
            segments.iter().enumerate().map(|(s, seg)| if seg.all_logits { (starts[s], starts[s + 1]) } else { (starts[s + 1] - 1, starts[s + 1]) }).collect();
        let rows: usize = wanted.iter().map(|(a, b)| b - a).sum();
        let mut normed = vec![0f32; rows * d];
        let mut at = 0;
        for &(a, b) in &wanted {
            rmsnorm(&x[a * d..b * d], &self.norm, cfg.rms_eps, &mut normed[at * d..(at + b - a) * d]);
            at += b - a;
        }
        let mut logits = vec![0f32; rows * cfg.vocab];
        // The output layer runs on float activations (it is never BitNet-quantized).
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        head.forward(backend, &normed, rows, &mut logits, false)?;
        drop((x, h, q, k, v, attn, proj, gate, up, normed));
        if m > segments.len() {
            // After a prompt's buffers are dropped.
            crate::memory::release_freed_memory();
        }
        if segments.len() == 1 {
            return Ok(vec![logits]);
        }
        let mut out = Vec::with_capacity(segments.len());
        let mut rest = &logits[..];
        for &(a, b) in &wanted {
            let (mine, tail) = rest.split_at((b - a) * cfg.vocab);
            out.push(mine.to_vec());
            rest = tail;
        }
        Ok(out)
    }

    fn linear(&self, l: &Linear, backend: Backend, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        l.forward(backend, x, m, y, self.act_quant)
    }

    /// Rotates q or k (m rows of `heads` heads) for positions pos0, pos0 + 1, ... with the
    /// frequencies `ModelConfig::rope_inv_freq` gives (computed once a forward pass).
    fn rope(&self, x: &mut [f32], heads: usize, pos0: usize, inv_freq: &[f32]) {
        let hd = self.config.head_dim;
        let half = hd / 2;
        for (t, row) in x.chunks_exact_mut(heads * hd).enumerate() {
            let pos = (pos0 + t) as f32;
            let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq.iter().map(|f| cos_sin_f32(pos * f)).unzip();
            for head in row.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (a, b) = match self.config.rope_style {
                        RopeStyle::NeoX => (i, i + half),
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }

    /// Causal attention of m new queries (positions pos0..) over the cached keys and values.
    ///
    /// Work is split into (query row, run of heads) tasks. Within a task the cache is walked
    /// position by position with the heads inside, so keys and values are read row after row
    /// (decode is bound by reading the cache). `keys` is in the cache's block layout. Every
    /// head's arithmetic is that of the plain loop: each q.k is summed in order over the head
    /// dimension (`key_scores` runs SIMD lanes across keys, not across dimensions), softmax and
    /// the weighted sum of values go by position.
    fn attention(&self, q: &[f32], keys: KvSlice, values: KvSlice, pos0: usize, m: usize, out: &mut [f32]) {
        let cfg = &self.config;
        let (hd, heads) = (cfg.head_dim, cfg.heads);
        let (q_dim, kv_dim) = (heads * hd, cfg.kv_heads * hd);
        let group = heads / cfg.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let widen = kernels::float::dots().widen_f16;
        // Several query rows read the same keys and values: an f16 cache's are widened once
        // for all of them, not once per row.
        let (mut wide_k, mut wide_v) = (Vec::new(), Vec::new());
        let (keys, values) = match (keys, values) {
            (KvSlice::F16(k), KvSlice::F16(v)) if m > 1 => {
                let seen = pos0 + m;
                let k = kv_f32(KvSlice::F16(k), 0..seen.div_ceil(KEY_LANES) * KEY_LANES * kv_dim, widen, &mut wide_k);
                let v = kv_f32(KvSlice::F16(v), 0..seen * kv_dim, widen, &mut wide_v);
                (KvSlice::F32(k), KvSlice::F32(v))
            }
            kv => kv,
        };
        if m >= QUERY_ROWS * crate::threads::num_threads() {
            // A prompt: tasks of QUERY_ROWS rows, every head.
            crate::threads::for_each_chunk(out, QUERY_ROWS * q_dim, |task, o| {
                let (i, rows) = (task * QUERY_ROWS, o.len() / q_dim);
                let t =
                    AttentionTask { q: &q[i * q_dim..(i + rows) * q_dim], keys, values, widen, hd, kv_dim, group, scale, visible: pos0 + i + 1, h0: 0, heads };
                attend_rows(&t, rows, o);
            });
            return;
        }
        // Heads per task: a divisor of `heads`, small enough that one row gives every thread work.
        let tasks_per_row = (crate::threads::num_threads() / m).clamp(1, heads);
        let mut per_task = heads.div_ceil(tasks_per_row);
        while heads % per_task != 0 {
            per_task += 1;
        }
        crate::threads::for_each_chunk(out, per_task * hd, |task, o| {
            let (i, h0) = (task * per_task / heads, task * per_task % heads);
            let t =
                AttentionTask { q: &q[i * q_dim..(i + 1) * q_dim], keys, values, widen, hd, kv_dim, group, scale, visible: pos0 + i + 1, h0, heads: per_task };
            attend(&t, o);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_f32` rounds as libm's f64 `exp` rounded to f32 does: on every f32 from -110 to 95
    /// in steps of 2^-12 (through the underflow to 0 and the overflow to infinity), on 2
    /// million random f32 bit patterns in that range, and on the special values.
    #[test]
    fn exp_f32_equals_f64_exp_rounded_once() {
        let check = |x: f32| {
            let want = (x as f64).exp() as f32;
            let got = exp_f32(x);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "exp({x:e}) = {got:e}, libm {want:e}");
        };
        let mut x = -110.0f32;
        while x < 95.0 {
            check(x);
            x += 1.0 / 4096.0;
        }
        let mut seed = 11u64;
        for _ in 0..2_000_000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = f32::from_bits((seed >> 32) as u32);
            if v.is_finite() && v.abs() < 110.0 {
                check(v);
            }
        }
        for v in [
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            f32::MIN_POSITIVE,
            88.72,
            88.73,
            -103.97,
            -103.28,
            -87.34,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ] {
            check(v);
        }
    }

    #[test]
    fn key_scores_sum_each_key_like_the_plain_loop() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 4.0
        };
        for hd in [1, 6, 17, 64, 96] {
            let q: Vec<f32> = (0..hd).map(|_| next()).collect();
            let keys: Vec<Vec<f32>> = (0..KEY_LANES).map(|_| (0..hd).map(|_| next()).collect()).collect();
            let block: Vec<f32> = (0..hd).flat_map(|d| keys.iter().map(move |k| k[d])).collect();
            let mut sums = [[0f32; KEY_LANES]; 3];
            let q2: Vec<f32> = q.iter().map(|v| v * 0.5 - 1.0).collect();
            key_scores([&q, &q2, &q], [&block, &block, &block], &mut sums);
            for (l, key) in keys.iter().enumerate() {
                for (h, qh) in [&q, &q2, &q].iter().enumerate() {
                    let plain: f32 = qh.iter().zip(key).map(|(a, b)| a * b).sum();
                    assert_eq!(sums[h][l].to_bits(), plain.to_bits(), "hd {hd} head {h} key {l}");
                }
            }
        }
    }

    #[test]
    fn cache_blocks_survive_truncate_and_append() {
        for kv_type in [KvType::F32, KvType::F16] {
            let mut cache = KvCache::new(1, 2, 64, kv_type);
            let rows = |from: usize, n: usize| (from..from + n).flat_map(|p| [p as f32, -(p as f32)]).collect::<Vec<_>>();
            cache.append(0, &rows(0, 11), &rows(0, 11));
            cache.len = 11;
            cache.truncate(5);
            cache.append(0, &rows(5, 4), &rows(5, 4));
            cache.len = 9;
            let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
            let widen = kernels::float::dots().widen_f16;
            let keys = kv_f32(cache.k[0].view(), 0..cache.k[0].len(), widen, &mut kbuf);
            assert_eq!(kv_f32(cache.v[0].view(), 0..cache.v[0].len(), widen, &mut vbuf), rows(0, 9));
            for p in 0..9 {
                let block = &keys[p / KEY_LANES * 2 * KEY_LANES..];
                assert_eq!([block[p % KEY_LANES], block[KEY_LANES + p % KEY_LANES]], [p as f32, -(p as f32)]);
            }
            let size = if kv_type == KvType::F16 { 2 } else { 4 };
            assert_eq!(cache.nbytes(), (2 * 2 * KEY_LANES + 9 * 2) * size);
        }
    }

    /// Attention over an f16 cache equals attention over an f32 cache that holds the same
    /// keys and values rounded to f16, bit for bit: the widening is exact and the sums are the
    /// same. Heads split into tasks of 1-4 heads (with GQA, a task reads only its KV heads),
    /// on this CPU's best backend and the baseline (`attend` picks AVX2, whose f16 cache is
    /// read without widening it into memory, or the baseline); a head size that is not a
    /// whole number of vectors too.
    #[test]
    fn f16_cache_attention_equals_f32_of_rounded_values() {
        let mut seed = 3u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 6.0
        };
        for (hd, heads, kv_heads) in [(16, 8, 2), (20, 6, 3)] {
            let (kv_dim, group) = (kv_heads * hd, heads / kv_heads);
            for positions in [1, 7, 8, 9, 30, 300] {
                let keys: Vec<f32> = (0..positions * kv_dim).map(|_| next()).collect();
                let values: Vec<f32> = (0..positions * kv_dim).map(|_| next()).collect();
                let q: Vec<f32> = (0..heads * hd).map(|_| next()).collect();
                let rounded = |x: &[f32]| x.iter().map(|v| f16::from_f32(*v).to_f32()).collect::<Vec<_>>();
                let (mut exact, mut halves) = (KvCache::new(1, kv_dim, 512, KvType::F32), KvCache::new(1, kv_dim, 512, KvType::F16));
                exact.append(0, &rounded(&keys), &rounded(&values));
                halves.append(0, &keys, &values);
                for per_task in [1, 2, 3, 4, 6, 8].into_iter().filter(|p| heads % p == 0) {
                    for h0 in (0..heads).step_by(per_task) {
                        let outs = [&exact, &halves].map(|c| {
                            let t = AttentionTask {
                                q: &q,
                                keys: c.k[0].view(),
                                values: c.v[0].view(),
                                widen: kernels::float::dots().widen_f16,
                                hd,
                                kv_dim,
                                group,
                                scale: 0.25,
                                visible: positions,
                                h0,
                                heads: per_task,
                            };
                            let mut o = vec![0f32; per_task * hd];
                            attend(&t, &mut o);
                            o
                        });
                        assert_eq!(
                            outs[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            outs[1].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "hd {hd}, {positions} positions, heads {h0}..+{per_task}"
                        );
                    }
                }
            }
        }
    }

    /// A prompt's query rows attended `QUERY_ROWS` at a time give what each row gives alone,
    /// bit for bit (GQA, a cache starting part-way, every count of rows, f32 and f16 caches).
    #[test]
    fn query_rows_together_equal_rows_alone() {
        let mut seed = 9u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 6.0
        };
        let (hd, heads, kv_heads) = (16, 6, 2);
        let (kv_dim, q_dim) = (kv_heads * hd, heads * hd);
        let positions = 21;
        let keys: Vec<f32> = (0..positions * kv_dim).map(|_| next()).collect();
        let values: Vec<f32> = (0..positions * kv_dim).map(|_| next()).collect();
        let q: Vec<f32> = (0..QUERY_ROWS * q_dim).map(|_| next()).collect();
        for kv_type in [KvType::F32, KvType::F16] {
            let mut cache = KvCache::new(1, kv_dim, 64, kv_type);
            cache.append(0, &keys, &values);
            for visible in [1, 7, 8, 9, positions - QUERY_ROWS + 1] {
                for rows in 1..=QUERY_ROWS {
                    let base = AttentionTask {
                        q: &[],
                        keys: cache.k[0].view(),
                        values: cache.v[0].view(),
                        widen: kernels::float::dots().widen_f16,
                        hd,
                        kv_dim,
                        group: heads / kv_heads,
                        scale: 0.3,
                        visible,
                        h0: 0,
                        heads,
                    };
                    let mut together = vec![0f32; rows * q_dim];
                    attend_rows(&AttentionTask { q: &q[..rows * q_dim], ..base }, rows, &mut together);
                    for r in 0..rows {
                        let mut alone = vec![0f32; q_dim];
                        attend(&AttentionTask { q: &q[r * q_dim..(r + 1) * q_dim], visible: visible + r, ..base }, &mut alone);
                        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&together[r * q_dim..(r + 1) * q_dim]), bits(&alone), "{kv_type:?} visible {visible} rows {rows} row {r}");
                    }
                }
            }
        }
    }
}

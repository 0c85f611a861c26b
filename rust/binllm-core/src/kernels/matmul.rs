//! The driver of packed-matrix products: BitNet b1.58 activation quantization (per-row int8),
//! the integer sums of the kernels over a `PackedMatrix`'s rows, and the float epilogue that
//! turns them into outputs (weight scales, activation scales, row offsets), with its reused
//! scratch buffer.
//!
//! It sits above the format table (`formats`: storage and validation only, which imports
//! nothing above it) and beside the kernels it drives; `model::linear` calls it.

use super::{active_backend, gemm_i32, gemm_i32_grouped, Backend};
use crate::error::Result;
use crate::formats::{PackedMatrix, ScaleKind};

/// Weight rows per block of `PackedMatrix::scale_sums` for prompts: their sums ([n][m]) and
/// outputs ([m][n]) meet a block at a time, in cache.
const PROMPT_ROWS: usize = 32;

/// Per-row activation quantization as BitNet b1.58 does it, into zero-padded rows.
pub struct QuantizedActivations {
    /// m rows of `padded_k` int8 values (padding is zero).
    pub q: Vec<i8>,
    /// `127 / max(|x|)` per row, max clamped to at least 1e-5.
    pub scales: Vec<f32>,
    /// Sum of each row of `q`, used by kernels that work on unsigned codes.
    pub sums: Vec<i32>,
    pub m: usize,
    pub padded_k: usize,
}

/// Round half to even without a libm call (`f32::round_ties_even` is one on baseline x86-64):
/// adding and subtracting 1.5 * 2^23 leaves the nearest integer under the default rounding
/// mode for |v| < 2^22; larger values (and their rounding) are clamped to the int8 range by
/// every caller anyway. Checked equal to `round_ties_even` after the clamp for all 2^32 inputs.
#[inline(always)]
pub fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12582912.0;
    if v.abs() < 4194304.0 {
        (v + MAGIC) - MAGIC
    } else {
        v
    }
}

/// BitNet b1.58 activation quantization of one row into `out` (same length as `x`).
/// Returns the scale `127 / max(|x|)`. Round half to even, clamp to [-128, 127].
pub fn quantize_row(x: &[f32], out: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        let backend = super::dispatch_backend();
        if backend.uses_avx512() {
            // SAFETY: the backend is available, so the CPU has AVX-512 F/BW.
            return unsafe { quantize_row_avx512(x, out) };
        }
        if backend.uses_avx2() {
            // SAFETY: the backend is available, so the CPU has AVX2.
            return unsafe { quantize_row_avx2(x, out) };
        }
    }
    quantize_row_generic(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(x: &[f32], out: &mut [i8]) -> f32 {
    quantize_row_generic(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(x: &[f32], out: &mut [i8]) -> f32 {
    quantize_row_generic(x, out)
}

/// `quantize_row`, written for the compiler to vectorize: the maximum over 16 lanes (exact in
/// any order; NaN ignored as `f32::max` does), then independent roundings.
#[inline(always)]
fn quantize_row_generic(x: &[f32], out: &mut [i8]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let amax = lanes.iter().chain(tail).fold(0.0f32, |a, v| a.max(v.abs()));
    let s = 127.0f32 / amax.max(1e-5);
    for (o, v) in out.iter_mut().zip(x) {
        // `round_half_even(v * s).clamp(-128.0, 127.0) as i8`, in operations that have vector
        // forms: NaN (from a NaN input) becomes 0 as `as` makes it.
        let r = round_half_even(v * s);
        let c = if r.is_nan() { 0.0 } else { r.clamp(-128.0, 127.0) };
        // SAFETY: `c` is a whole number in [-128, 127] (values past 2^22 were clamped).
        *o = unsafe { c.to_int_unchecked::<i32>() } as i8;
    }
    s
}

/// Quantizes `m` rows of `k` floats, each padded with zeros to `padded_k`. A prompt's rows go
/// to the thread pool.
pub fn quantize_activations(x: &[f32], m: usize, k: usize, padded_k: usize) -> QuantizedActivations {
    debug_assert_eq!(x.len(), m * k);
    let mut q = vec![0i8; m * padded_k];
    // Each row's codes with its scale and sum, filled in place.
    let mut rows: Vec<(&mut [i8], f32, i32)> = q.chunks_mut(padded_k.max(1)).map(|r| (r, 0.0, 0)).collect();
    let per = crate::threads::elementwise_rows_per_task(m, k);
    crate::threads::for_each_chunk(&mut rows, per, |task, part| {
        for (j, (row, scale, sum)) in part.iter_mut().enumerate() {
            let r = task * per + j;
            *scale = quantize_row(&x[r * k..(r + 1) * k], &mut row[..k]);
            *sum = row.iter().map(|&v| v as i32).sum();
        }
    });
    let (scales, sums) = rows.into_iter().map(|(_, s, t)| (s, t)).unzip();
    QuantizedActivations { q, scales, sums, m, padded_k }
}

/// `y`, shared by tasks that each write their own elements of it.
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `scale_sums`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Writes `v` to elements `i..i + v.len()`: one block's row of y, a fixed-size copy (a
    /// few vector stores) when it is a whole `PROMPT_ROWS`.
    ///
    /// # Safety
    /// Those elements are inside the slice and no other task writes or reads them.
    unsafe fn write_run(&self, i: usize, v: &[f32]) {
        if let Ok(whole) = <&[f32; PROMPT_ROWS]>::try_from(v) {
            *(self.0.add(i) as *mut [f32; PROMPT_ROWS]) = *whole;
        } else {
            std::ptr::copy_nonoverlapping(v.as_ptr(), self.0.add(i), v.len())
        }
    }
}

impl PackedMatrix {
    /// Quantizes `m` rows of activations for this matrix (OneBit's column scale applied first).
    pub fn quantize_input(&self, x: &[f32], m: usize) -> QuantizedActivations {
        let k = self.cols();
        match self.scale() {
            ScaleKind::OneBit { col, .. } => {
                let scaled: Vec<f32> = x.chunks_exact(k).flat_map(|row| row.iter().zip(col).map(|(a, c)| a * c)).collect();
                quantize_activations(&scaled, m, k, self.padded_k())
            }
            _ => quantize_activations(x, m, k, self.padded_k()),
        }
    }

    /// Exact integer sums `sum_k code[n, k] * q[m, k]`, laid out `[n][m]`; with `PerGroup`
    /// scales one sum per group, laid out `[n][group][m]` (k restricted to the group).
    pub fn integer_sums(&self, backend: Backend, act: &QuantizedActivations) -> Result<Vec<i32>> {
        let mut out = Vec::new();
        self.integer_sums_into(backend, act, &mut out)?;
        Ok(out)
    }

    /// As `integer_sums`, into `out` (resized; reusing it spares zeroing a fresh buffer, which
    /// costs as much as a small grouped GEMV).
    pub fn integer_sums_into(&self, backend: Backend, act: &QuantizedActivations, out: &mut Vec<i32>) -> Result<()> {
        if act.padded_k != self.padded_k() {
            crate::bail!(InvalidArgument, "activations are padded to {} but the matrix needs {}", act.padded_k, self.padded_k());
        }
        let (group, groups) = self.groups();
        out.resize(self.rows() * groups * act.m, 0);
        if groups == 1 {
            gemm_i32(backend, self.format(), self.packed_data(), self.rows(), self.row_bytes(), act, out)
        } else {
            gemm_i32_grouped(backend, self.format(), self.packed_data(), self.rows(), self.row_bytes(), group, act, out)
        }
    }

    /// `Y = X W^T` with BitNet b1.58 activation quantization, X of shape (m, k), Y (m, n).
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let mut y = vec![0f32; m * self.rows()];
        self.matmul_into(active_backend()?, x, m, &mut y)?;
        Ok(y)
    }

    /// As `matmul`, on a chosen backend, into `y` (m * n).
    pub fn matmul_into(&self, backend: Backend, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        let (n, k) = self.shape();
        if x.len() != m * k {
            crate::bail!(InvalidArgument, "input has {} values; expected {m} rows of {} (the matrix has k = {})", x.len(), k, k);
        }
        if y.len() != m * n {
            crate::bail!(InvalidArgument, "output must hold {} values, has {}", m * n, y.len());
        }
        let act = self.quantize_input(x, m);
        self.matmul_quantized_into(backend, &act, x, m, y)
    }

    /// `matmul_into` for activations already quantized by `quantize_input` (linears that
    /// share an input quantize it once); `x` is the float input they came from (row offsets
    /// read it). Sizes are the caller's to check.
    pub fn matmul_quantized_into(&self, backend: Backend, act: &QuantizedActivations, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        // Decode's sums (n values) are reused from call to call; a prompt's (n x m) are freed
        // after use, so a long prompt leaves no megabytes behind in each calling thread.
        const KEEP: usize = 1 << 16;
        thread_local! {
            static SUMS: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SUMS.with_borrow_mut(|sums| -> Result<()> {
            let r = self.integer_sums_into(backend, act, sums).map(|()| self.scale_sums(sums, act, x, m, y));
            if sums.capacity() > KEEP {
                *sums = Vec::new();
            }
            r
        })
    }

    /// `y` from the integer sums: scales, activation scales and row offsets.
    fn scale_sums(&self, sums: &[i32], act: &QuantizedActivations, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = self.shape();
        if let (1, ScaleKind::PerGroup { scales, .. }) = (m, self.scale()) {
            // Decode: the same sums in the same order as below, without the general loop's
            // bookkeeping (it took 70% of a 4096 x 1536 grouped GEMV).
            let groups = self.groups().1;
            let s = act.scales[0];
            for ((yv, row_sums), row_scales) in y.iter_mut().zip(sums.chunks_exact(groups)).zip(scales.chunks_exact(groups)) {
                let mut total = 0f32;
                for (&v, &ws) in row_sums.iter().zip(row_scales) {
                    total += ws * v as f32;
                }
                *yv = total / s;
            }
        } else if let (1, ScaleKind::PerTensor(ws)) = (m, self.scale()) {
            // Decode's common case, in a form the compiler vectorizes.
            let (ws, s) = (*ws, act.scales[0]);
            y.iter_mut().zip(&sums[..n]).for_each(|(y, &sum)| *y = sum as f32 * ws / s);
        } else if m == 1 {
            // Decode with per-row (or OneBit) scales: the prompt loop's arithmetic, without its
            // blocks and tasks.
            let s = act.scales[0];
            for (r, (yv, &sum)) in y.iter_mut().zip(&sums[..n]).enumerate() {
                *yv = sum as f32 * self.scale_at(r, 0) / s;
            }
        } else {
            // Prompts: sums are [n][m] (with groups, [n][group][m]), y is [m][n]. A block of
            // `PROMPT_ROWS` weight rows at a time: their totals (each summed in group order)
            // gathered into an L1 buffer laid out as y is ([m][PROMPT_ROWS]), divided by the
            // activation scales, and copied to y a run of `PROMPT_ROWS` values at a time. y
            // (megabytes for a prompt) is thus written in whole vectors; a value at a time, its
            // cache misses held the store queue. On a Zen 3 core (2026-12-07): 7.4% of a 729M
            // prompt's perf samples before, 5.3% after; prompt tok/s in one process, alternating
            // with the old write pattern, 73.1 -> 76.0 (medians of 12). Blocks go to the thread
            // pool; each writes only its own rows' columns of y.
            let groups = self.groups().1;
            // The writes below go through a raw pointer: their bound is this check.
            assert!(y.len() == m * n && act.scales.len() >= m, "epilogue operands disagree in size");
            let y_out = SharedOut(y.as_mut_ptr());
            let mut blocks: Vec<usize> = (0..n).step_by(PROMPT_ROWS).collect();
            let per = crate::threads::elementwise_rows_per_task(blocks.len(), PROMPT_ROWS * m * groups);
            crate::threads::for_each_chunk(&mut blocks, per, |_, starts| {
                let mut totals = vec![0f32; PROMPT_ROWS * m];
                for &r0 in starts.iter() {
                    let rows = PROMPT_ROWS.min(n - r0);
                    for j in 0..rows {
                        let r = r0 + j;
                        match self.scale() {
                            ScaleKind::PerGroup { scales, .. } => {
                                for mi in 0..m {
                                    totals[mi * PROMPT_ROWS + j] = 0.0;
                                }
                                for (g, s) in scales[r * groups..(r + 1) * groups].iter().enumerate() {
                                    let group_sums = &sums[(r * groups + g) * m..(r * groups + g + 1) * m];
                                    for (mi, &v) in group_sums.iter().enumerate() {
                                        totals[mi * PROMPT_ROWS + j] += s * v as f32;
                                    }
                                }
                            }
                            _ => {
                                let ws = self.scale_at(r, 0);
                                for (mi, &v) in sums[r * m..(r + 1) * m].iter().enumerate() {
                                    totals[mi * PROMPT_ROWS + j] = v as f32 * ws;
                                }
                            }
                        }
                    }
                    for (mi, strip) in totals.chunks_exact_mut(PROMPT_ROWS).enumerate() {
                        let s = act.scales[mi];
                        let strip = &mut strip[..rows];
                        strip.iter_mut().for_each(|t| *t /= s);
                        // SAFETY: elements (mi, r0..r0 + rows) of y (m x n, asserted above):
                        // rows r0..r0 + rows belong to this block alone.
                        unsafe { y_out.write_run(mi * n + r0, strip) };
                    }
                }
            });
        }
        if let Some(mu) = self.row_offset() {
            for (mi, xr) in x.chunks_exact(k).enumerate() {
                let total: f32 = xr.iter().sum();
                for (yv, o) in y[mi * n..(mi + 1) * n].iter_mut().zip(mu) {
                    *yv += o * total;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::WeightFormat;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn fast_rounding_is_round_half_even() {
        let mut seed = 99u64;
        let specials = [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 127.5, -128.5, 0.49999997, 4194303.5, -4194303.5, 1e9, -1e9, 0.0, -0.0];
        for &v in &specials {
            assert_eq!(round_half_even(v).clamp(-128.0, 127.0), v.round_ties_even().clamp(-128.0, 127.0), "{v}");
        }
        for _ in 0..1_000_000 {
            let v = f32::from_bits(lcg(&mut seed) as u32 | ((lcg(&mut seed) as u32) << 31));
            if v.is_finite() {
                let (a, b) = (round_half_even(v).clamp(-128.0, 127.0), v.round_ties_even().clamp(-128.0, 127.0));
                assert_eq!(a, b, "{v}");
            }
        }
    }

    #[test]
    fn quantize_row_equals_the_plain_loop_on_every_backend() {
        let plain = |x: &[f32], out: &mut [i8]| {
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let s = 127.0f32 / amax.max(1e-5);
            for (o, v) in out.iter_mut().zip(x) {
                *o = (v * s).round_ties_even().clamp(-128.0, 127.0) as i8;
            }
            s
        };
        let mut seed = 11u64;
        for len in [0, 1, 15, 16, 17, 33, 1536, 1541] {
            for special in [None, Some(f32::NAN), Some(f32::INFINITY), Some(-3.5e-7)] {
                let mut x: Vec<f32> = (0..len).map(|_| (lcg(&mut seed) % 20001) as f32 / 1000.0 - 10.0).collect();
                if let (Some(v), true) = (special, len > 3) {
                    x[len / 2] = v;
                }
                let mut want = vec![0i8; len];
                let s = plain(&x, &mut want);
                for backend in crate::kernels::available_backends() {
                    let mut got = vec![0i8; len];
                    let t = match backend {
                        #[cfg(target_arch = "x86_64")]
                        b if b.uses_avx512() => unsafe { quantize_row_avx512(&x, &mut got) },
                        #[cfg(target_arch = "x86_64")]
                        b if b.uses_avx2() => unsafe { quantize_row_avx2(&x, &mut got) },
                        _ => quantize_row_generic(&x, &mut got),
                    };
                    assert_eq!((t.to_bits(), &got), (s.to_bits(), &want), "{} len {len} {special:?}", backend.name());
                }
            }
        }
    }

    /// A prompt's epilogue (blocks of `PROMPT_ROWS` rows, written to y in runs) gives each
    /// row what decode's gives it alone, bit for bit, for every kind of scale, with a partial
    /// last block and rows of x at every scale.
    #[test]
    fn prompt_rows_equal_single_rows_for_every_scale_kind() {
        let (n, k, m) = (2 * PROMPT_ROWS + 7, 600, 6);
        let mut seed = 17;
        let mut scale = || (lcg(&mut seed) % 1000) as f32 / 250.0 + 0.01;
        let kinds = [
            (WeightFormat::Ternary2, ScaleKind::PerTensor(scale())),
            (WeightFormat::Ternary2, ScaleKind::PerRow((0..n).map(|_| scale()).collect())),
            (WeightFormat::Ternary1_6, ScaleKind::PerGroup { group: 320, scales: (0..n * 2).map(|_| scale()).collect() }),
            (WeightFormat::Binary1, ScaleKind::OneBit { row: (0..n).map(|_| scale()).collect(), col: (0..k).map(|_| scale()).collect() }),
        ];
        for (format, kind) in kinds {
            let codes: Vec<i8> =
                (0..n * k).map(|_| if format.is_ternary() { (lcg(&mut seed) % 3) as i8 - 1 } else { 2 * (lcg(&mut seed) % 2) as i8 - 1 }).collect();
            let w = PackedMatrix::pack(format, &codes, n, k, kind).unwrap().with_row_offset((0..n).map(|r| r as f32 / 64.0 - 0.5).collect()).unwrap();
            let x: Vec<f32> = (0..m * k).map(|i| ((lcg(&mut seed) % 20001) as f32 / 1000.0 - 10.0) * (1 + i / k) as f32).collect();
            let prompt = w.matmul(&x, m).unwrap();
            for (i, xr) in x.chunks_exact(k).enumerate() {
                let alone = w.matmul(xr, 1).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&prompt[i * n..(i + 1) * n]), bits(&alone), "{format:?} {:?} row {i}", w.scale());
            }
        }
    }

    #[test]
    fn row_offsets_add_mu_times_the_sum_of_x() {
        let (n, k) = (2, 600);
        let mut seed = 5;
        let codes: Vec<i8> = (0..n * k).map(|_| (lcg(&mut seed) % 3) as i8 - 1).collect();
        let scales = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let plain = PackedMatrix::pack(WeightFormat::Ternary2, &codes, n, k, ScaleKind::PerGroup { group: 256, scales }).unwrap();
        let offset = plain.clone().with_row_offset(vec![0.5, -0.5]).unwrap();
        // The offset term uses the raw activations: mu * sum(x) on top of the scaled sums.
        let x: Vec<f32> = (0..k).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let (with, without) = (offset.matmul(&x, 1).unwrap(), plain.matmul(&x, 1).unwrap());
        let total: f32 = x.iter().sum();
        assert_eq!(with, vec![without[0] + 0.5 * total, without[1] - 0.5 * total]);
    }
}

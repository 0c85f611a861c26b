//! The 6-bit output layer: GGML's Q6_K blocks times int8 activations (what llama.cpp runs for
//! a Q6_K output layer, and what `--output-type q6_k` keeps in memory).
//!
//! Weights: super-blocks of 256 (210 bytes: four low bits in `ql[128]`, two high bits in
//! `qh[64]`, sixteen int8 sub-block scales, an f16 scale `d`), value `d * sc[j] * (u - 32)` for
//! the 6-bit code `u` of sub-block `j` (16 weights). A row whose length is not a multiple of 256
//! is zero-padded to whole blocks in memory (GGUF files only hold whole blocks).
//!
//! Activations: per 256 values, int8 codes `round(x / da)` with `da = max|x| / 127` (ties away
//! from zero) and the sixteen per-sub-block sums of the codes (GGML's Q8_K).
//!
//! Per super-block every kernel computes the exact integer `sum_j sc[j] * sum_i (u_i - 32) a_i`
//! and then `total += (d * da) * isum` in f32, super-block after super-block, so every backend
//! equals the scalar twin bit for bit. The SIMD kernels multiply the unsigned codes (maddubs)
//! and take `32 * sum_j sc[j] * bsum[j]` off at the end.

/// Weights per super-block.
pub const Q6K_WEIGHTS: usize = 256;
/// Bytes per super-block.
pub const Q6K_BYTES: usize = 210;

/// Activation rows quantized for the Q6_K kernels: `m` rows of `blocks` super-blocks each.
pub struct Q6kActivations {
    pub blocks: usize,
    /// `m * blocks * 256` int8 codes, zero past each row's `k` values.
    pub q: Vec<i8>,
    /// One scale per super-block.
    pub d: Vec<f32>,
    /// Sixteen sums of codes per super-block.
    pub bsums: Vec<i16>,
}

impl Q6kActivations {
    /// Quantizes `m` rows of `k` values (`x.len() == m * k`).
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Q6kActivations {
        let blocks = k.div_ceil(Q6K_WEIGHTS);
        let mut acts = Q6kActivations { blocks, q: vec![0; m * blocks * Q6K_WEIGHTS], d: vec![0.0; m * blocks], bsums: vec![0; m * blocks * 16] };
        for i in 0..m {
            let row = &x[i * k..(i + 1) * k];
            for b in 0..blocks {
                let xs = &row[b * Q6K_WEIGHTS..((b + 1) * Q6K_WEIGHTS).min(k)];
                let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                let at = i * blocks + b;
                acts.d[at] = d;
                let q = &mut acts.q[at * Q6K_WEIGHTS..][..xs.len()];
                for (c, v) in q.iter_mut().zip(xs) {
                    *c = (v * inv).round().clamp(-127.0, 127.0) as i8;
                }
                for (j, s) in acts.bsums[at * 16..at * 16 + 16].iter_mut().enumerate() {
                    *s = acts.q[at * Q6K_WEIGHTS + 16 * j..][..16].iter().map(|&c| c as i16).sum();
                }
            }
        }
        acts
    }

    /// Row `i`'s codes, scales and sums.
    pub fn row(&self, i: usize) -> (&[i8], &[f32], &[i16]) {
        let b = self.blocks;
        (&self.q[i * b * Q6K_WEIGHTS..(i + 1) * b * Q6K_WEIGHTS], &self.d[i * b..(i + 1) * b], &self.bsums[i * b * 16..(i + 1) * b * 16])
    }
}

/// The exact integer sum of one super-block against 256 activation codes: the reference.
pub fn block_sum_scalar(w: &[u8], a: &[i8]) -> i32 {
    let (ql, qh, sc) = (&w[0..128], &w[128..192], &w[192..208]);
    let mut sums = [0i32; 16];
    for half in 0..2 {
        let (ql, qh, a) = (&ql[64 * half..], &qh[32 * half..], &a[128 * half..]);
        let sums = &mut sums[8 * half..];
        for l in 0..32 {
            let u = [
                (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (g, &u) in u.iter().enumerate() {
                sums[2 * g + l / 16] += (u as i32 - 32) * a[32 * g + l] as i32;
            }
        }
    }
    sums.iter().zip(sc).map(|(s, &c)| s * c as i8 as i32).sum()
}

fn block_scale(w: &[u8]) -> f32 {
    half::f16::from_le_bytes([w[208], w[209]]).to_f32()
}

/// The scalar twin: one row of super-blocks `w` against one activation row.
pub fn dot_scalar(w: &[u8], a: &[i8], d: &[f32], _bsums: &[i16]) -> f32 {
    let mut total = 0f32;
    for (b, blk) in w.chunks_exact(Q6K_BYTES).enumerate() {
        let isum = block_sum_scalar(blk, &a[b * Q6K_WEIGHTS..]);
        total += (block_scale(blk) * d[b]) * isum as f32;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::kernels::float::prefetch_ahead;
    use core::arch::x86_64::*;

    /// `dot_scalar` in 256-bit lanes (AVX2): per 32 codes one maddubs (unsigned codes times
    /// signed activations, at most 2 * 63 * 127 per pair: no saturation) and one madd with the
    /// sub-block scales.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot(w: &[u8], a: &[i8], d: &[f32], bsums: &[i16]) -> f32 {
        let (m4, m30) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
        let mut total = 0f32;
        for (b, blk) in w.chunks_exact(Q6K_BYTES).enumerate() {
            let (p, pa) = (blk.as_ptr(), a.as_ptr().add(b * Q6K_WEIGHTS));
            for line in [0, 64, 128, 192] {
                prefetch_ahead(p.add(line));
            }
            let mut acc = _mm256_setzero_si256();
            for half in 0..2 {
                let ql0 = _mm256_loadu_si256(p.add(64 * half) as *const __m256i);
                let ql1 = _mm256_loadu_si256(p.add(64 * half + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(p.add(128 + 32 * half) as *const __m256i);
                // Codes for weights 0..32, 32..64, 64..96, 96..128 of this half (see the layout).
                let u = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30)),
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), _mm256_and_si256(qh, m30)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30)),
                ];
                for (g, u) in u.into_iter().enumerate() {
                    let sc = p.add(192 + 8 * half + 2 * g) as *const i8;
                    let scales = _mm256_set_m128i(_mm_set1_epi16(*sc.add(1) as i16), _mm_set1_epi16(*sc as i16));
                    let prod = _mm256_maddubs_epi16(u, _mm256_loadu_si256(pa.add(128 * half + 32 * g) as *const __m256i));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(prod, scales));
                }
            }
            let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
            let corr = _mm256_madd_epi16(sc, _mm256_loadu_si256(bsums.as_ptr().add(16 * b) as *const __m256i));
            let isum = hsum_i32(acc) - 32 * hsum_i32(corr);
            total += (block_scale(blk) * d[b]) * isum as f32;
        }
        total
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<1>(s));
        _mm_cvtsi128_si32(s)
    }

    /// i16 lane t of the scale vector for a 64-code group takes sub-block t / 8 of the group.
    static SCALE_LANES: [[i16; 32]; 2] = {
        let mut lanes = [[0i16; 32]; 2];
        let mut t = 0;
        while t < 32 {
            lanes[0][t] = (t / 8) as i16;
            lanes[1][t] = (4 + t / 8) as i16;
            t += 1;
        }
        lanes
    };

    /// `dot_scalar` in 512-bit lanes (AVX-512 BW): per half super-block (128 weights) two
    /// 64-code vectors, two maddubs and two madds with the scales spread by one permute each.
    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn dot_512(w: &[u8], a: &[i8], d: &[f32], bsums: &[i16]) -> f32 {
        dot_512_rows::<1>(w, a.as_ptr(), 0, d.as_ptr(), 0, bsums.as_ptr(), 0)[0]
    }

    /// `dot_512` of one weight row with `C` activation rows (codes `a` + c `a_stride`, scales
    /// `d` + c `d_stride`, sums `s` + c `s_stride`): each super-block's codes, scales and
    /// block scale are decoded once for all of them (a batch's output layer), and each row's
    /// arithmetic is `dot_512`'s, so every result is bit-identical to it.
    ///
    /// # Safety
    /// AVX-512 F/BW, AVX2 and F16C; every activation row holds `w.len() / 210` super-blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn dot_512_rows<const C: usize>(
        w: &[u8],
        a: *const i8,
        a_stride: usize,
        d: *const f32,
        d_stride: usize,
        s: *const i16,
        s_stride: usize,
    ) -> [f32; C] {
        let (m4, m30) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
        let lanes = [_mm512_loadu_si512(SCALE_LANES[0].as_ptr() as *const _), _mm512_loadu_si512(SCALE_LANES[1].as_ptr() as *const _)];
        let mut total = [0f32; C];
        for (b, blk) in w.chunks_exact(Q6K_BYTES).enumerate() {
            let p = blk.as_ptr();
            for line in [0, 64, 128, 192] {
                prefetch_ahead(p.add(line));
            }
            // Codes [half][g] and their sub-block scales spread over the i16 lanes.
            let mut codes = [[_mm512_setzero_si512(); 2]; 2];
            let mut scales = [[_mm512_setzero_si512(); 2]; 2];
            for half in 0..2 {
                let ql = _mm512_loadu_si512(p.add(64 * half) as *const _);
                let qh = _mm256_loadu_si256(p.add(128 + 32 * half) as *const __m256i);
                // [qh, qh >> 2]: the high bits of weights 0..64 at bits 0-1, of 64..128 at 4-5.
                let qh2 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), _mm256_srli_epi16::<2>(qh));
                codes[half][0] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_slli_epi16::<4>(qh2), m30));
                codes[half][1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4), _mm512_and_si512(qh2, m30));
                let sc = _mm512_castsi128_si512(_mm_cvtepi8_epi16(_mm_loadl_epi64(p.add(192 + 8 * half) as *const __m128i)));
                for (g, lane) in lanes.iter().enumerate() {
                    scales[half][g] = _mm512_permutexvar_epi16(*lane, sc);
                }
            }
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
            let block = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([blk[208], blk[209]]) as i32)));
            for (c, total) in total.iter_mut().enumerate() {
                let pa = a.add(c * a_stride + b * Q6K_WEIGHTS);
                let mut acc = _mm512_setzero_si512();
                for half in 0..2 {
                    for g in 0..2 {
                        let prod = _mm512_maddubs_epi16(codes[half][g], _mm512_loadu_si512(pa.add(128 * half + 64 * g) as *const _));
                        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(prod, scales[half][g]));
                    }
                }
                let corr = _mm256_madd_epi16(sc16, _mm256_loadu_si256(s.add(c * s_stride + 16 * b) as *const __m256i));
                let isum = _mm512_reduce_add_epi32(acc) - 32 * hsum_i32(corr);
                *total += (block * *d.add(c * d_stride + b)) * isum as f32;
            }
        }
        total
    }

    /// `out[r * m + i]`: every weight row of `w` (`row_bytes` each) against every row of
    /// `acts`, four activation rows at a time (`dot_512_rows`).
    ///
    /// # Safety
    /// AVX-512 F/BW, AVX2 and F16C; `row_bytes` is `acts.blocks` super-blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn rows_512(w: &[u8], row_bytes: usize, acts: &Q6kActivations, out: &mut [f32]) {
        let m = acts.d.len() / acts.blocks.max(1);
        // Activation row c from row 0's pointers and one row's lengths (`acts.row`'s layout).
        let (q, d, s) = acts.row(0);
        let rows = |c: usize| (q.as_ptr().add(c * q.len()), q.len(), d.as_ptr().add(c * d.len()), d.len(), s.as_ptr().add(c * s.len()), s.len());
        for (row, out) in w.chunks_exact(row_bytes.max(1)).zip(out.chunks_mut(m.max(1))) {
            let mut c = 0;
            while c + 4 <= m {
                let (q, sq, d, sd, s, ss) = rows(c);
                out[c..c + 4].copy_from_slice(&dot_512_rows::<4>(row, q, sq, d, sd, s, ss));
                c += 4;
            }
            while c < m {
                let (q, sq, d, sd, s, ss) = rows(c);
                out[c] = dot_512_rows::<1>(row, q, sq, d, sd, s, ss)[0];
                c += 1;
            }
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::*;
    use core::arch::wasm32::*;

    /// `dot_scalar` in 128-bit lanes: per 16 codes (one sub-block) the unsigned 6-bit codes
    /// times the activations in i16 pair sums (relaxed SIMD's i8 x i7 dot, exact for 6-bit
    /// codes: a pair is at most 2 * 63 * 127; or two i8 x i8 -> i16 products added), then an
    /// i16 dot with the sub-block's scale (widened once per block and splatted from memory) to
    /// i32 lanes. `32 * sum_j sc[j] * bsum[j]` comes off per block in i32 lanes too. The sums
    /// are exact, as the scalar twin's.
    pub fn dot(w: &[u8], a: &[i8], d: &[f32], bsums: &[i16]) -> f32 {
        let (m4, m30) = (u8x16_splat(0x0F), u8x16_splat(0x30));
        let load = |bytes: &[u8]| {
            let bytes = &bytes[..16];
            // SAFETY: `bytes` holds 16 bytes; v128 loads may be unaligned.
            unsafe { v128_load(bytes.as_ptr() as *const v128) }
        };
        let mut total = 0f32;
        for (b, blk) in w.chunks_exact(Q6K_BYTES).enumerate() {
            let a = &a[b * Q6K_WEIGHTS..(b + 1) * Q6K_WEIGHTS];
            let sc8 = load(&blk[192..208]);
            let sc = [i16x8_extend_low_i8x16(sc8), i16x8_extend_high_i8x16(sc8)];
            let mut scales = [0i16; 16];
            // SAFETY: `scales` holds 16 i16 values, two v128 stores.
            unsafe {
                v128_store(scales.as_mut_ptr() as *mut v128, sc[0]);
                v128_store(scales.as_mut_ptr().add(8) as *mut v128, sc[1]);
            }
            let bs = &bsums[16 * b..16 * b + 16];
            // SAFETY: `bs` holds 16 i16 values.
            let (bs0, bs1) = unsafe { (v128_load(bs.as_ptr() as *const v128), v128_load(bs.as_ptr().add(8) as *const v128)) };
            let corr = i32x4_add(i32x4_dot_i16x8(sc[0], bs0), i32x4_dot_i16x8(sc[1], bs1));
            let mut acc = i32x4_mul(corr, i32x4_splat(-32));
            for half in 0..2 {
                for part in 0..2 {
                    let (ql0, ql1, qh) =
                        (load(&blk[64 * half + 16 * part..]), load(&blk[64 * half + 32 + 16 * part..]), load(&blk[128 + 32 * half + 16 * part..]));
                    // 16-bit shifts (one instruction on x86 engines, where 8-bit ones take
                    // two or three): the masks keep only bits that come from the same byte.
                    let u = [
                        v128_or(v128_and(ql0, m4), v128_and(i16x8_shl(qh, 4), m30)),
                        v128_or(v128_and(ql1, m4), v128_and(i16x8_shl(qh, 2), m30)),
                        v128_or(v128_and(u16x8_shr(ql0, 4), m4), v128_and(qh, m30)),
                        v128_or(v128_and(u16x8_shr(ql1, 4), m4), v128_and(u16x8_shr(qh, 2), m30)),
                    ];
                    for (g, u) in u.into_iter().enumerate() {
                        let xs = &a[128 * half + 32 * g + 16 * part..][..16];
                        // SAFETY: `xs` holds 16 bytes.
                        let x = unsafe { v128_load(xs.as_ptr() as *const v128) };
                        #[cfg(target_feature = "relaxed-simd")]
                        let pairs = i16x8_relaxed_dot_i8x16_i7x16(x, u);
                        #[cfg(not(target_feature = "relaxed-simd"))]
                        let pairs = i16x8_add(i16x8_extmul_low_i8x16(u, x), i16x8_extmul_high_i8x16(u, x));
                        // SAFETY: the index is below 16.
                        let scale = unsafe { v128_load16_splat(scales.as_ptr().add(8 * half + 2 * g + part) as *const u16) };
                        acc = i32x4_add(acc, i32x4_dot_i16x8(pairs, scale));
                    }
                }
            }
            let isum = i32x4_extract_lane::<0>(acc) + i32x4_extract_lane::<1>(acc) + i32x4_extract_lane::<2>(acc) + i32x4_extract_lane::<3>(acc);
            total += (block_scale(blk) * d[b]) * isum as f32;
        }
        total
    }
}

/// A Q6_K row dot product: super-blocks `w`, activation codes, their scales and sums.
pub type Q6kDot = fn(&[u8], &[i8], &[f32], &[i16]) -> f32;

/// The backend's Q6_K dot product (`kernels::dispatch_backend`).
pub fn dot() -> Q6kDot {
    #[cfg(target_arch = "x86_64")]
    {
        let backend = crate::kernels::dispatch_backend();
        if backend.uses_avx512() {
            // SAFETY: the backend is available, so the CPU has AVX-512 F and BW and AVX2.
            return |w, a, d, s| unsafe { x86::dot_512(w, a, d, s) };
        }
        if backend.uses_avx2() {
            // SAFETY: the backend is available, so the CPU has AVX2.
            return |w, a, d, s| unsafe { x86::dot(w, a, d, s) };
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return wasm::dot;
    #[allow(unreachable_code)]
    dot_scalar
}

/// Every Q6_K dot product this CPU can run, by name (tests).
pub fn dots_available() -> Vec<(&'static str, Q6kDot)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Q6kDot)> = vec![("scalar", dot_scalar)];
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::Backend;
        if Backend::Avx2.is_available() {
            // SAFETY: checked just above.
            v.push(("avx2", |w, a, d, s| unsafe { x86::dot(w, a, d, s) }));
        }
        if Backend::Avx512.is_available() {
            // SAFETY: checked just above.
            v.push(("avx512", |w, a, d, s| unsafe { x86::dot_512(w, a, d, s) }));
        }
    }
    v
}

/// `Y = X W^T` for Q6_K rows (`n` rows of `blocks` super-blocks, `k` values each).
pub fn gemm(w: &[u8], n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32]) {
    let acts = Q6kActivations::quantize(x, m, k);
    let row_bytes = acts.blocks * Q6K_BYTES;
    #[cfg(target_arch = "x86_64")]
    if m > 1 && crate::kernels::dispatch_backend().uses_avx512() {
        // A batch: each super-block decoded once for four activation rows.
        return crate::kernels::float::gemm_by_row_runs(n, row_bytes, x, m, y, |first, _, m, part| {
            let rows = &w[first * row_bytes..(first + part.len() / m) * row_bytes];
            // SAFETY: the backend is available, so the CPU has AVX-512 F/BW, AVX2 and F16C;
            // every row holds `acts.blocks` super-blocks.
            unsafe { x86::rows_512(rows, row_bytes, &acts, part) }
        });
    }
    let dot = dot();
    crate::kernels::float::gemm_by_rows(n, row_bytes, x, m, y, |r, _, m, o, _| {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (i, o) in o.iter_mut().enumerate().take(m) {
            let (q, d, s) = acts.row(i);
            *o = dot(row, q, d, s);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> u32 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as u32
        }
    }

    /// Random blocks (every byte random, scales included), against the scalar twin bit for bit
    /// and against an f64 sum of the decoded weights times the decoded activations.
    #[test]
    fn dots_equal_the_scalar_twin_and_a_wide_sum() {
        let mut next = rng(7);
        for blocks in [1usize, 2, 3, 10] {
            let k = blocks * Q6K_WEIGHTS;
            let mut w: Vec<u8> = (0..blocks * Q6K_BYTES).map(|_| next() as u8).collect();
            for b in 0..blocks {
                // A finite, modest f16 scale.
                let d = half::f16::from_f32((next() % 1000) as f32 * 1e-5);
                w[b * Q6K_BYTES + 208..b * Q6K_BYTES + 210].copy_from_slice(&d.to_le_bytes());
            }
            for extreme in [false, true] {
                let x: Vec<f32> = (0..k).map(|i| if extreme && i % 7 == 0 { -3.0 } else { (next() % 2001) as f32 / 1000.0 - 1.0 }).collect();
                let acts = Q6kActivations::quantize(&x, 1, k);
                let (q, d, s) = acts.row(0);
                let want = dot_scalar(&w, q, d, s);
                // Independent decode: the GGUF loader's Q6_K dequantizer.
                let wf = crate::loader::dequantize_q6_k(&w);
                let exact: f64 = (0..k).map(|i| wf[i] as f64 * q[i] as f64 * d[i / Q6K_WEIGHTS] as f64).sum();
                let scale: f64 = (0..k).map(|i| (wf[i] as f64 * q[i] as f64 * d[i / Q6K_WEIGHTS] as f64).abs()).sum();
                assert!((want as f64 - exact).abs() <= 1e-6 * scale + 1e-9, "scalar: {want} vs {exact}");
                for (name, dot) in dots_available() {
                    assert_eq!(dot(&w, q, d, s).to_bits(), want.to_bits(), "{name} blocks {blocks}");
                }
            }
        }
    }

    /// A batch's product (several activation rows, each super-block decoded once for four of
    /// them) equals the scalar twin row by row, bit for bit, for token counts across the tiles
    /// of four and a padded last super-block.
    #[test]
    fn batched_gemm_equals_the_scalar_twin_row_by_row() {
        let mut next = rng(9);
        let (n, blocks) = (37, 3);
        let k = blocks * Q6K_WEIGHTS - 40; // a padded last block
        let mut w: Vec<u8> = (0..n * blocks * Q6K_BYTES).map(|_| next() as u8).collect();
        for b in 0..n * blocks {
            let d = half::f16::from_f32((next() % 1000) as f32 * 1e-5);
            w[b * Q6K_BYTES + 208..b * Q6K_BYTES + 210].copy_from_slice(&d.to_le_bytes());
        }
        for m in [1usize, 2, 4, 5, 8, 9] {
            let x: Vec<f32> = (0..m * k).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
            let mut y = vec![0f32; m * n];
            gemm(&w, n, k, &x, m, &mut y);
            let acts = Q6kActivations::quantize(&x, m, k);
            let row_bytes = blocks * Q6K_BYTES;
            for i in 0..m {
                let (q, d, s) = acts.row(i);
                for r in 0..n {
                    let want = dot_scalar(&w[r * row_bytes..(r + 1) * row_bytes], q, d, s);
                    assert_eq!(y[i * n + r].to_bits(), want.to_bits(), "m {m} row {r} x {i}");
                }
            }
        }
    }

    #[test]
    fn activations_round_ties_away_and_pad_with_zeros() {
        let mut x = vec![0f32; 300];
        x[0] = 127.0;
        x[1] = 0.5;
        x[2] = -1.5;
        x[256] = -2.0;
        x[257] = 1.0;
        let acts = Q6kActivations::quantize(&x, 1, 300);
        let (q, d, s) = acts.row(0);
        assert_eq!((q.len(), d.len()), (512, 2));
        assert_eq!((q[0], q[1], q[2]), (127, 1, -2));
        assert_eq!(d[0], 1.0);
        assert_eq!((q[256], q[257]), (-127, 64));
        assert!(q[300..].iter().all(|&c| c == 0));
        assert_eq!(s[0], 126);
        assert_eq!(s[16], -63);
    }
}

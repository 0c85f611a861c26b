//! Float-activation matrix products for the parts of a model that are not packed 1-bit or
//! ternary: f32, f16 and 8-bit-block (Q8) weights, and packed weights with float activations
//! (the reference mode without activation quantization). Rows are split over the thread pool.
//! Each dot product is compiled twice, for AVX2+FMA+F16C and for the baseline, and chosen once
//! at run time.

use half::f16;

/// Weights per scale in Q8 rows.
pub const Q8_BLOCK: usize = 32;

#[inline(always)]
fn dot_f32_lanes(a: &[f32], b: &[f32], fma: bool) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = a.len() / 16;
    for c in 0..chunks {
        let (x, y) = (&a[c * 16..c * 16 + 16], &b[c * 16..c * 16 + 16]);
        for j in 0..16 {
            acc[j] = if fma { x[j].mul_add(y[j], acc[j]) } else { acc[j] + x[j] * y[j] };
        }
    }
    let mut tail = 0f32;
    for i in chunks * 16..a.len() {
        tail += a[i] * b[i];
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot_q8_lanes(q: &[i8], scales: &[f32], x: &[f32], fma: bool) -> f32 {
    let mut total = 0f32;
    for (b, (qb, xb)) in q.chunks(Q8_BLOCK).zip(x.chunks(Q8_BLOCK)).enumerate() {
        let mut acc = [0f32; 16];
        if qb.len() == Q8_BLOCK {
            for half in 0..2 {
                for j in 0..16 {
                    let (w, v) = (qb[half * 16 + j] as f32, xb[half * 16 + j]);
                    acc[j] = if fma { w.mul_add(v, acc[j]) } else { acc[j] + w * v };
                }
            }
        } else {
            for (j, (&w, &v)) in qb.iter().zip(xb).enumerate() {
                acc[j % 16] += w as f32 * v;
            }
        }
        total += acc.iter().sum::<f32>() * scales[b];
    }
    total
}

/// The reference f16 dot product (no FMA): what every wasm f16 kernel equals bit for bit
/// (checked in wasm/test/kernels.test.mjs through `binllm_gemm_f16`).
pub fn dot_f16_reference(w: &[f16], x: &[f32]) -> f32 {
    dot_f16_lanes(w, x, false)
}

#[inline(always)]
fn dot_f16_lanes(w: &[f16], x: &[f32], fma: bool) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = w.len() / 16;
    for c in 0..chunks {
        for j in 0..16 {
            let (a, b) = (w[c * 16 + j].to_f32(), x[c * 16 + j]);
            acc[j] = if fma { a.mul_add(b, acc[j]) } else { acc[j] + a * b };
        }
    }
    let mut tail = 0f32;
    for i in chunks * 16..w.len() {
        tail += w[i].to_f32() * x[i];
    }
    acc.iter().sum::<f32>() + tail
}

/// How far ahead of the current position the f16 dot products prefetch weights. Measured on
/// Zen 5 over a 98 MB output layer, one thread: without it a row streams at 30-34 GB/s (about
/// a plain streaming read), 8 KiB ahead at 44-45 GB/s; 1-4 KiB help little, 16-32 KiB less.
pub const PREFETCH_BYTES: usize = 8192;

/// Hints the cache line at `p` into L2 (and the caches above it) ahead of a kernel that
/// streams weights. It never faults, so any address will do. The one software prefetch of the
/// x86 kernels (`prefetch_ahead`, the GEMVs' `prefetch`, the AMX walk's next stripe; the
/// bandwidth probe keeps its own). Into L2 (T1) rather than L1 (T0): a one-thread decode on
/// this 2-core Xeon, both hints in one process, alternating (2026-12-07): 729M 46.4 -> 48.6
/// tok/s (AVX2 backend 39.5 -> 42.6, AVX-512 VNNI 44.3 -> 46.7), BitNet 2B4T shape 10.9 ->
/// 12.0 (its Q6_K-output file 15.2 -> 15.9), two threads 71.5 -> 74.6 and 19.9 -> 20.9
/// (medians of 6-12 alternations); an f16 output layer alone (32002 x 1536 from memory) 13.6
/// -> 14.6 GB/s, where a plain read gave 14.3. Not measured on other CPUs.
#[inline(always)]
pub(crate) fn prefetch_line(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache and never faults; SSE is baseline on x86-64.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        _mm_prefetch::<_MM_HINT_T1>(p)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Hints the cache line `PREFETCH_BYTES` after `p` (`prefetch_line`; past the end of a buffer
/// the hint is harmless, hence `wrapping_add`).
#[inline(always)]
pub fn prefetch_ahead<T>(p: *const T) {
    prefetch_line((p as *const i8).wrapping_add(PREFETCH_BYTES));
}

/// Hints the first `PREFETCH_BYTES` of `buf` (`prefetch_line`), where a kernel that prefetches
/// `PREFETCH_BYTES` ahead of itself will start reading.
#[inline]
pub fn prefetch_start(buf: &[u8]) {
    for offset in (0..buf.len().min(PREFETCH_BYTES)).step_by(64) {
        prefetch_line(buf[offset..].as_ptr() as *const i8);
    }
}

/// A backend's tile of f16 products: weight rows `R` (k values each, from `w`) against
/// activation rows `C` (k values each, from `x`), every product bit-identical to that backend's
/// `dot_f16`. The tiles keep one accumulator a product: they walk the row once for each of the
/// dot's accumulators (its lane groups), which is the same sequence of additions into each.
#[cfg(target_arch = "x86_64")]
trait F16Tiles {
    /// # Safety
    /// `w` holds R rows and `x` C rows of `k` values; the CPU has the backend's features.
    unsafe fn tile<const R: usize, const C: usize>(w: *const u16, x: *const f32, k: usize) -> [[f32; C]; R];
}

/// `out[r * m + i]` for every row of `k` weights in `w` and every row of `x` (m rows of `k`):
/// `R` weight rows at a time (in L1) against four rows of `x` at a time, then the rest; with
/// fewer than four rows of `x`, one weight row at a time (one sequential stream, as `dot_f16`
/// reads, which a single row of `x` takes: `gemm_f16`): there memory sets the pace, not the
/// multiply-adds (Zen 4, 128256 x 2560, 2 rows: 23 ms a row at a time, 60 in 4 x 2 tiles). On a
/// Zen 4 core (2026-12-08, one thread, alternating, 128256 x 2560 f16, 8 rows of `x`): 4 x 4
/// tiles 95-108 ms against 145-155 for one weight row against 4 rows of `x` with a dot's four
/// accumulators each (that loads a vector of `x` for every multiply-add), 27 against 17 GFMA/s.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gemm_f16_tiles<T: F16Tiles, const R: usize>(w: &[f16], k: usize, x: &[f32], m: usize, out: &mut [f32]) {
    let (k, m) = (k.max(1), m.max(1));
    let n = w.len() / k;
    assert!(x.len() >= m * k && out.len() >= n * m);
    unsafe fn put<T: F16Tiles, const R: usize, const C: usize>(w: &[f16], k: usize, x: &[f32], m: usize, out: &mut [f32], r0: usize, c0: usize) {
        let sums = T::tile::<R, C>(w.as_ptr().add(r0 * k) as *const u16, x.as_ptr().add(c0 * k), k);
        for (r, row) in sums.iter().enumerate() {
            out[(r0 + r) * m + c0..(r0 + r) * m + c0 + C].copy_from_slice(row);
        }
    }
    unsafe fn rows<T: F16Tiles, const R: usize>(w: &[f16], k: usize, x: &[f32], m: usize, out: &mut [f32], r0: usize) {
        let mut c = 0;
        while c + 4 <= m {
            put::<T, R, 4>(w, k, x, m, out, r0, c);
            c += 4;
        }
        match m - c {
            1 => put::<T, R, 1>(w, k, x, m, out, r0, c),
            2 => put::<T, R, 2>(w, k, x, m, out, r0, c),
            3 => put::<T, R, 3>(w, k, x, m, out, r0, c),
            _ => {}
        }
    }
    let mut r = 0;
    while m >= 4 && r + R <= n {
        rows::<T, R>(w, k, x, m, out, r);
        r += R;
    }
    while r < n {
        rows::<T, 1>(w, k, x, m, out, r);
        r += 1;
    }
}

/// `x` starting on a cache line: itself, or a copy in `buf`. A kernel that reads several rows
/// of `x` for each weight loads every 64-byte vector of a row that is not so aligned (glibc
/// aligns to 16 bytes) from two lines: 8 rows of `x` against 32002 x 1536 f16 took 22.4 ms
/// aligned and 27.7 ms not (one Xeon core, 2026-12-07, same process, alternating).
fn cache_aligned<'a>(x: &'a [f32], buf: &'a mut Vec<super::CacheLine>) -> &'a [f32] {
    if (x.as_ptr() as usize).is_multiple_of(64) {
        return x;
    }
    *buf = super::line_buffer(x.len() * 4);
    // SAFETY: the lines are plain bytes, at least `x.len() * 4` of them, on a 64-byte boundary
    // (so aligned for f32), and any bytes are a valid f32.
    let copy = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut f32, x.len()) };
    copy.copy_from_slice(x);
    copy
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use core::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
            i += 16;
        }
        let mut total = hsum(_mm256_add_ps(s0, s1));
        while i < n {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8(q: &[i8], scales: &[f32], x: &[f32]) -> f32 {
        let n = q.len().min(x.len());
        let full = n / Q8_BLOCK;
        let mut acc = _mm256_setzero_ps();
        for b in 0..full {
            let (qp, xp) = (q.as_ptr().add(b * Q8_BLOCK), x.as_ptr().add(b * Q8_BLOCK));
            let mut block = _mm256_setzero_ps();
            for j in 0..4 {
                let q8 = _mm_loadl_epi64(qp.add(j * 8) as *const __m128i);
                let qf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
                block = _mm256_fmadd_ps(qf, _mm256_loadu_ps(xp.add(j * 8)), block);
            }
            acc = _mm256_fmadd_ps(block, _mm256_set1_ps(scales[b]), acc);
        }
        let mut total = hsum(acc);
        if full * Q8_BLOCK < n {
            let tail: f32 = q[full * Q8_BLOCK..n].iter().zip(&x[full * Q8_BLOCK..n]).map(|(&w, &v)| w as f32 * v).sum();
            total += tail * scales[full];
        }
        total
    }

    /// Two 8-lane accumulators (weights i.. and i + 8.. of every 16), summed lane-wise, then
    /// the leftover weights in order; software prefetch (`prefetch_ahead`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        tile::<1, 1>(w.as_ptr() as *const u16, x.as_ptr(), n)[0][0]
    }

    struct Avx2;
    impl F16Tiles for Avx2 {
        unsafe fn tile<const R: usize, const C: usize>(w: *const u16, x: *const f32, k: usize) -> [[f32; C]; R] {
            tile::<R, C>(w, x, k)
        }
    }

    /// `F16Tiles::tile` with `dot_f16`'s two accumulators a product, stepped together (one
    /// pass): the 2 x 4 of a one-row tile take 8 of the 16 ymm registers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const C: usize>(w: *const u16, x: *const f32, k: usize) -> [[f32; C]; R] {
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        let mut i = 0;
        while i + 16 <= k {
            for r in 0..R {
                if i % 32 == 0 {
                    prefetch_ahead(w.add(r * k + i));
                }
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(r * k + i) as *const __m128i));
                let w1 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(r * k + i + 8) as *const __m128i));
                for c in 0..C {
                    acc[r][c][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.add(c * k + i)), acc[r][c][0]);
                    acc[r][c][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(c * k + i + 8)), acc[r][c][1]);
                }
            }
            i += 16;
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut total = hsum(_mm256_add_ps(acc[r][c][0], acc[r][c][1]));
                for j in i..k {
                    total += f16::from_bits(*w.add(r * k + j)).to_f32() * *x.add(c * k + j);
                }
                out[r][c] = total;
            }
        }
        out
    }

    /// `out[r * m + i] = dot_f16(row r of w, row i of x)` for the rows of `k` weights in `w`
    /// and `m` rows of `x`: one weight row against 4 rows of `x` at a time. Tiles of 2 weight
    /// rows that step one accumulator a product per pass (as AVX-512's) ran slower on a Zen 4
    /// core (2026-12-08, 128256 x 2560, 8 rows of `x`: 158 against 117 ms).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemm_f16_rows(w: &[f16], k: usize, x: &[f32], m: usize, out: &mut [f32]) {
        gemm_f16_tiles::<Avx2, 1>(w, k, x, m, out)
    }

    /// `widen_f16` eight values at a time (F16C), prefetching the source as the dots do.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_f16(h: &[f16], out: &mut [f32]) {
        let n = h.len();
        assert!(out.len() >= n);
        let (ph, po) = (h.as_ptr() as *const u16, out.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            if i % 32 == 0 {
                prefetch_ahead(ph.add(i));
            }
            _mm256_storeu_ps(po.add(i), _mm256_cvtph_ps(_mm_loadu_si128(ph.add(i) as *const __m128i)));
            i += 8;
        }
        for j in i..n {
            out[j] = h[j].to_f32();
        }
    }

    /// `narrow_f16` eight values at a time (F16C, rounding to nearest even).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn narrow_f16(x: &[f32], out: &mut [f16]) {
        let n = x.len();
        assert!(out.len() >= n);
        let (px, po) = (x.as_ptr(), out.as_mut_ptr() as *mut u16);
        let mut i = 0;
        while i + 8 <= n {
            _mm_storeu_si128(po.add(i) as *mut __m128i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(px.add(i))));
            i += 8;
        }
        for j in i..n {
            out[j] = f16::from_f32(x[j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use super::*;
    use core::arch::x86_64::*;

    /// `dot_f32` in `dot_f16`'s order below (the same lanes, the same steps and tail), so a
    /// matrix gives the very same products whether it is held as f32 or as f16.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for l in 0..4 {
                prefetch_ahead(pa.add(i + 16 * l));
            }
            for (j, s) in acc.iter_mut().enumerate() {
                *s = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16 * j)), _mm512_loadu_ps(pb.add(i + 16 * j)), *s);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc[0]);
            i += 16;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let mut total = _mm512_reduce_add_ps(sum);
        while i < n {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }

    /// `dot_q8` in 512-bit lanes: each 32-weight block is two 16-wide FMAs into a block sum,
    /// which its scale multiplies into one of four accumulators (four blocks in flight, so the
    /// dependent FMAs never stall the loads), with software prefetch as in `dot_f16`. Weights
    /// are read as 9 bits each (int8 plus a quarter of a byte of scale), half of f16's bytes.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot_q8(q: &[i8], scales: &[f32], x: &[f32]) -> f32 {
        let n = q.len().min(x.len());
        let full = n / Q8_BLOCK;
        let (pq, px) = (q.as_ptr(), x.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let block = |b: usize| {
            let (qp, xp) = (pq.add(b * Q8_BLOCK), px.add(b * Q8_BLOCK));
            let q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(qp as *const __m128i)));
            let q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(qp.add(16) as *const __m128i)));
            _mm512_fmadd_ps(q1, _mm512_loadu_ps(xp.add(16)), _mm512_mul_ps(q0, _mm512_loadu_ps(xp)))
        };
        let mut b = 0;
        while b + 4 <= full {
            prefetch_ahead(pq.add(b * Q8_BLOCK));
            prefetch_ahead(pq.add(b * Q8_BLOCK + 64));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(block(b + j), _mm512_set1_ps(*scales.get_unchecked(b + j)), *a);
            }
            b += 4;
        }
        while b < full {
            acc[0] = _mm512_fmadd_ps(block(b), _mm512_set1_ps(*scales.get_unchecked(b)), acc[0]);
            b += 1;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let mut total = _mm512_reduce_add_ps(sum);
        if full * Q8_BLOCK < n {
            let tail: f32 = q[full * Q8_BLOCK..n].iter().zip(&x[full * Q8_BLOCK..n]).map(|(&w, &v)| w as f32 * v).sum();
            total += tail * scales[full];
        }
        total
    }

    /// `dot_f16` with four 512-bit accumulators (two chains of dependent FMAs at 32 bytes of
    /// weights each would cap a row near 32 GB/s) and software prefetch (`prefetch_ahead`):
    /// accumulator j takes weights i + 16j.. of every 64, then the first one each whole 16 left;
    /// the four are summed as (0 + 1) + (2 + 3), then the leftover weights in order.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        row::<1>(w.as_ptr() as *const u16, x.as_ptr(), n)[0]
    }

    /// One weight row against `C` rows of `x` (at most 4: 4 x C accumulators), each with
    /// `dot_f16`'s four accumulators stepped together: the row is read once, in order.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn row<const C: usize>(w: *const u16, x: *const f32, k: usize) -> [f32; C] {
        let mut acc = [[_mm512_setzero_ps(); 4]; C];
        let mut i = 0;
        while i + 64 <= k {
            prefetch_ahead(w.add(i));
            prefetch_ahead(w.add(i + 32));
            for j in 0..4 {
                let wv = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(i + 16 * j) as *const __m256i));
                for c in 0..C {
                    acc[c][j] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.add(c * k + i + 16 * j)), acc[c][j]);
                }
            }
            i += 64;
        }
        while i + 16 <= k {
            let wv = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(i) as *const __m256i));
            for c in 0..C {
                acc[c][0] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.add(c * k + i)), acc[c][0]);
            }
            i += 16;
        }
        let mut out = [0f32; C];
        for c in 0..C {
            let a = &acc[c];
            let mut total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
            for j in i..k {
                total += f16::from_bits(*w.add(j)).to_f32() * *x.add(c * k + j);
            }
            out[c] = total;
        }
        out
    }

    struct Avx512;
    impl F16Tiles for Avx512 {
        unsafe fn tile<const R: usize, const C: usize>(w: *const u16, x: *const f32, k: usize) -> [[f32; C]; R] {
            let mut out = [[0f32; C]; R];
            if R == 1 {
                out[0] = row::<C>(w, x, k);
            } else {
                out = tile::<R, C>(w, x, k);
            }
            out
        }
    }

    /// `F16Tiles::tile` of several weight rows: `dot_f16`'s four accumulators a product, one pass
    /// over the rows each (4 x 4 accumulators, where `row` would need 4 x 4 x 4).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const C: usize>(w: *const u16, x: *const f32, k: usize) -> [[f32; C]; R] {
        let mut parts = [[[_mm512_setzero_ps(); 4]; C]; R];
        for j in 0..4 {
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            let mut i = 0;
            while i + 64 <= k {
                let mut wv = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    if j == 0 {
                        // The same row of the next tile (8 KiB on): ahead of the current
                        // position alone the hints would land in this tile's later rows.
                        // 128256 x 2560, 8 rows of x, Zen 4: 87.6 -> 75.7 ms.
                        prefetch_ahead(w.add(r * k + i).wrapping_add(R * k));
                        prefetch_ahead(w.add(r * k + i + 32).wrapping_add(R * k));
                    }
                    wv[r] = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(r * k + i + 16 * j) as *const __m256i));
                }
                for c in 0..C {
                    let xv = _mm512_loadu_ps(x.add(c * k + i + 16 * j));
                    for r in 0..R {
                        acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
                    }
                }
                i += 64;
            }
            if j == 0 {
                while i + 16 <= k {
                    for r in 0..R {
                        let wv = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(r * k + i) as *const __m256i));
                        for c in 0..C {
                            acc[r][c] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.add(c * k + i)), acc[r][c]);
                        }
                    }
                    i += 16;
                }
            }
            for r in 0..R {
                for c in 0..C {
                    parts[r][c][j] = acc[r][c];
                }
            }
        }
        let tail = k / 16 * 16;
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let a = &parts[r][c];
                let mut total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
                for j in tail..k {
                    total += f16::from_bits(*w.add(r * k + j)).to_f32() * *x.add(c * k + j);
                }
                out[r][c] = total;
            }
        }
        out
    }

    /// `out[r * m + i] = dot_f16(row r of w, row i of x)` for the rows of `k` weights in `w`
    /// and `m` rows of `x` (a batch's output layer): tiles of 4 weight rows x 4 rows of `x`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn gemm_f16_rows(w: &[f16], k: usize, x: &[f32], m: usize, out: &mut [f32]) {
        gemm_f16_tiles::<Avx512, 4>(w, k, x, m, out)
    }

    /// `widen_f16` sixteen values at a time.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn widen_f16(h: &[f16], out: &mut [f32]) {
        let n = h.len();
        assert!(out.len() >= n);
        let (ph, po) = (h.as_ptr() as *const u16, out.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            if i % 32 == 0 {
                prefetch_ahead(ph.add(i));
            }
            _mm512_storeu_ps(po.add(i), _mm512_cvtph_ps(_mm256_loadu_si256(ph.add(i) as *const __m256i)));
            i += 16;
        }
        super::x86::widen_f16(&h[i..], &mut out[i..n]);
    }

    /// `narrow_f16` sixteen values at a time (rounding to nearest even).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn narrow_f16(x: &[f32], out: &mut [f16]) {
        let n = x.len();
        assert!(out.len() >= n);
        let (px, po) = (x.as_ptr(), out.as_mut_ptr() as *mut u16);
        let mut i = 0;
        while i + 16 <= n {
            _mm256_storeu_si256(po.add(i) as *mut __m256i, _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_loadu_ps(px.add(i))));
            i += 16;
        }
        super::x86::narrow_f16(&x[i..], &mut out[i..n]);
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::*;
    use core::arch::wasm32::*;

    /// Eight f16 values (as u16 bits) widened to two f32x4, exactly: the magnitude's bits move
    /// to f32's places and a multiply by 2^112 fixes the exponent bias (subnormals included);
    /// infinities and NaNs get f32's all-ones exponent; the sign is ORed back.
    #[inline(always)]
    fn widen(h: v128) -> [v128; 2] {
        [u32x4_extend_low_u16x8(h), u32x4_extend_high_u16x8(h)].map(|h| {
            let magnitude = v128_and(h, u32x4_splat(0x7fff));
            let value = f32x4_mul(i32x4_shl(magnitude, 13), f32x4_splat(TWO_112));
            let special = i32x4_eq(v128_and(h, u32x4_splat(0x7c00)), u32x4_splat(0x7c00));
            let value = v128_or(value, v128_and(special, u32x4_splat(0x7f80_0000)));
            v128_or(value, i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
        })
    }

    /// `widen` for eight f16 values none of which is an infinity or NaN, in fewer instructions:
    /// each value moves to the top half of its 32-bit lane (one interleave with zero), an
    /// arithmetic shift by 3 puts exponent and mantissa at f32's places with the sign still on
    /// top (the AND drops its three copies below it), and the same multiply by 2^112 fixes the
    /// bias, sign and subnormals included. Equal to `widen` for every finite input.
    #[inline(always)]
    fn widen_finite(h: v128) -> [v128; 2] {
        widen_finite_scaled(h).map(|v| f32x4_mul(v, f32x4_splat(TWO_112)))
    }

    /// `widen_finite` without its multiply: the values times 2^-112 (exact; f16 subnormals
    /// become f32 subnormals), for `dot_f16_scaled`, whose activations carry the 2^112.
    #[inline(always)]
    fn widen_finite_scaled(h: v128) -> [v128; 2] {
        let zero = u16x8_splat(0);
        [i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(zero, h), i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(zero, h)]
            .map(|top| v128_and(i32x4_shr(top, 3), u32x4_splat(0x8fff_ffff)))
    }

    /// 2^112, the f16 -> f32 exponent bias difference.
    const TWO_112: f32 = 5.192_297e33;

    /// `f16_rows` (see `Dots`) with `dot_f16`'s results, bit for bit, in fewer instructions: each
    /// row of `x` is multiplied by 2^112 once (exact while |x| < 2^16; a row with a larger
    /// finite value takes `dot_f16`), so that the weights need no multiply
    /// (`widen_finite_scaled`): (w 2^-112)(x 2^112) is the same real number as w x, rounded
    /// once to the same f32. A row holding an infinity or NaN weight, noticed at its end, is
    /// done again by `dot_f16`; with `finite` (the caller knows there is none) rows are not
    /// checked, which saves 4 of the loop's 24 vector operations (16-20% of the time in V8).
    pub fn f16_rows(w: &[f16], k: usize, x: &[f32], m: usize, out: &mut [f32], finite: bool) {
        let (k, m) = (k.max(1), m.max(1));
        let mut scaled = vec![0f32; k];
        for (i, xr) in x.chunks_exact(k).enumerate().take(m) {
            let fits = xr.iter().all(|v| !v.is_finite() || v.abs() < 65536.0);
            if fits {
                scaled.iter_mut().zip(xr).for_each(|(s, v)| *s = v * TWO_112);
            }
            for (row, o) in w.chunks_exact(k).zip(out.chunks_mut(m)) {
                o[i] = match (fits, finite) {
                    (true, true) => dot_f16_scaled::<false>(row, xr, &scaled),
                    (true, false) => dot_f16_scaled::<true>(row, xr, &scaled),
                    (false, _) => dot_f16(row, xr),
                };
            }
        }
    }

    /// `dot_f16(w, x)` with `xs` = x 2^112 (`f16_rows`), for rows without infinities or NaNs;
    /// with `CHECK` it notices one and returns `dot_f16(w, x)` instead.
    fn dot_f16_scaled<const CHECK: bool>(w: &[f16], x: &[f32], xs: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let chunks = n / 16;
        let mut acc = [f32x4_splat(0.0); 4];
        // The largest magnitude bits seen, shifted past the sign: 0xf800 and up is an
        // infinity or NaN.
        let mut top = u16x8_splat(0);
        for c in 0..chunks {
            // SAFETY: c * 16 + 16 <= n, within the slices; v128 loads may be unaligned.
            let (h0, h1, xv) = unsafe {
                let pw = w.as_ptr().add(c * 16) as *const v128;
                let px = xs.as_ptr().add(c * 16) as *const v128;
                (v128_load(pw), v128_load(pw.add(1)), [v128_load(px), v128_load(px.add(1)), v128_load(px.add(2)), v128_load(px.add(3))])
            };
            if CHECK {
                top = u16x8_max(top, u16x8_max(i16x8_shl(h0, 1), i16x8_shl(h1, 1)));
            }
            let ([a0, a1], [a2, a3]) = (widen_finite_scaled(h0), widen_finite_scaled(h1));
            for (j, a) in [a0, a1, a2, a3].into_iter().enumerate() {
                acc[j] = f32x4_add(acc[j], f32x4_mul(a, xv[j]));
            }
        }
        if CHECK && v128_any_true(u16x8_ge(top, u16x8_splat(0xf800))) {
            return dot_f16(w, x);
        }
        sum_lanes(acc, &w[chunks * 16..n], &x[chunks * 16..n])
    }

    /// The 16 accumulator lanes summed in order, plus the products of the leftover weights.
    fn sum_lanes(acc: [v128; 4], w: &[f16], x: &[f32]) -> f32 {
        let mut lanes = [0f32; 16];
        for (j, a) in acc.iter().enumerate() {
            // SAFETY: lanes has room for 4 floats at 4 * j.
            unsafe { v128_store(lanes.as_mut_ptr().add(4 * j) as *mut v128, *a) };
        }
        let mut tail = 0f32;
        for (w, x) in w.iter().zip(x) {
            tail += w.to_f32() * x;
        }
        lanes.iter().sum::<f32>() + tail
    }

    /// `super::widen_f16_plain` eight values at a time (`widen`).
    pub fn widen_f16(h: &[f16], out: &mut [f32]) {
        let n = h.len();
        assert!(out.len() >= n);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, within both slices; v128 loads and stores may be unaligned.
            unsafe {
                let [a, b] = widen(v128_load(h.as_ptr().add(i) as *const v128));
                v128_store(out.as_mut_ptr().add(i) as *mut v128, a);
                v128_store(out.as_mut_ptr().add(i + 4) as *mut v128, b);
            }
            i += 8;
        }
        super::widen_f16_plain(&h[i..], &mut out[i..n]);
    }

    /// `dot_f16_lanes` without FMA, vectorized: lane j of the four accumulators is `acc[j]`
    /// there, and the lanes are summed in the same order, so results are bit-identical. Chunks
    /// of 16 without infinities or NaNs (one exponent test for all 16) take `widen_finite`.
    pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let chunks = n / 16;
        let mut acc = [f32x4_splat(0.0); 4];
        for c in 0..chunks {
            // SAFETY: c * 16 + 16 <= n, within both slices; v128 loads may be unaligned.
            let (h0, h1, xs) = unsafe {
                let pw = w.as_ptr().add(c * 16) as *const v128;
                let px = x.as_ptr().add(c * 16) as *const v128;
                (v128_load(pw), v128_load(pw.add(1)), [v128_load(px), v128_load(px.add(1)), v128_load(px.add(2)), v128_load(px.add(3))])
            };
            let exponent = u16x8_splat(0x7c00);
            let special = v128_or(i16x8_eq(v128_and(h0, exponent), exponent), i16x8_eq(v128_and(h1, exponent), exponent));
            let ([a0, a1], [a2, a3]) = if v128_any_true(special) { (widen(h0), widen(h1)) } else { (widen_finite(h0), widen_finite(h1)) };
            for (j, a) in [a0, a1, a2, a3].into_iter().enumerate() {
                acc[j] = f32x4_add(acc[j], f32x4_mul(a, xs[j]));
            }
        }
        sum_lanes(acc, &w[chunks * 16..n], &x[chunks * 16..n])
    }
}

/// The dot products of the backend in use (`kernels::dispatch_backend`: `BINLLM_BACKEND`, or
/// the best this CPU has).
#[derive(Clone, Copy)]
pub struct Dots {
    pub f32: fn(&[f32], &[f32]) -> f32,
    pub q8: fn(&[i8], &[f32], &[f32]) -> f32,
    pub f16: fn(&[f16], &[f32]) -> f32,
    /// `f16_rows(w, k, x, m, out)`: `out[r * m + i] = f16(row r of w, row i of x)` for the rows
    /// of `k` weights in `w` and `m` rows of `x`: the same results as `f16` one by one, bit for
    /// bit, with each weight read once for all rows of `x` where the backend has a kernel. The
    /// last argument says that `w` holds no infinity or NaN (`f16_all_finite`): a kernel may
    /// then skip its own check (wasm's does).
    pub f16_rows: fn(&[f16], usize, &[f32], usize, &mut [f32], bool),
    /// `widen_f16(h, out)`: `out[i] = h[i]` as f32 (exact) for every value of `h`.
    pub widen_f16: fn(&[f16], &mut [f32]),
    /// `narrow_f16(x, out)`: `out[i] = x[i]` rounded to the nearest f16 (ties to even), as
    /// `f16::from_f32` rounds.
    pub narrow_f16: fn(&[f32], &mut [f16]),
    /// Whether `f16_rows` reads its `finite` argument (wasm's: it checks rows otherwise). Only
    /// then is `f16_all_finite` worth its pass over a matrix (23 ms for a 2B4T output layer on
    /// a Zen 4 core).
    pub f16_rows_reads_finite: bool,
}

/// The baseline `Dots::widen_f16`.
fn widen_f16_plain(h: &[f16], out: &mut [f32]) {
    h.iter().zip(out).for_each(|(h, o)| *o = h.to_f32());
}

/// The baseline `Dots::narrow_f16`.
fn narrow_f16_plain(x: &[f32], out: &mut [f16]) {
    x.iter().zip(out).for_each(|(x, o)| *o = f16::from_f32(*x));
}

/// `f16_rows` by one `dot` per product (where wasm's `f16_rows` does not run).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn f16_rows_by_dots(dot: fn(&[f16], &[f32]) -> f32, w: &[f16], k: usize, x: &[f32], m: usize, out: &mut [f32]) {
    for (row, o) in w.chunks_exact(k.max(1)).zip(out.chunks_mut(m.max(1))) {
        for (o, xr) in o.iter_mut().zip(x.chunks_exact(k.max(1))) {
            *o = dot(row, xr);
        }
    }
}

pub fn dots() -> Dots {
    #[cfg(target_arch = "x86_64")]
    {
        let backend = crate::kernels::dispatch_backend();
        if backend.uses_avx512() {
            // SAFETY: the backend is available, so the CPU has AVX-512 F, AVX2, FMA and F16C.
            return Dots {
                f32: |a, b| unsafe { x86_512::dot_f32(a, b) },
                q8: |q, s, x| unsafe { x86_512::dot_q8(q, s, x) },
                f16: |w, x| unsafe { x86_512::dot_f16(w, x) },
                f16_rows: |w, k, x, m, out, _| unsafe { x86_512::gemm_f16_rows(w, k, x, m, out) },
                widen_f16: |h, out| unsafe { x86_512::widen_f16(h, out) },
                narrow_f16: |x, out| unsafe { x86_512::narrow_f16(x, out) },
                f16_rows_reads_finite: false,
            };
        }
        if backend.uses_avx2() {
            // SAFETY: the backend is available, so the CPU has AVX2, FMA and F16C.
            return Dots {
                f32: |a, b| unsafe { x86::dot_f32(a, b) },
                q8: |q, s, x| unsafe { x86::dot_q8(q, s, x) },
                f16: |w, x| unsafe { x86::dot_f16(w, x) },
                f16_rows: |w, k, x, m, out, _| unsafe { x86::gemm_f16_rows(w, k, x, m, out) },
                widen_f16: |h, out| unsafe { x86::widen_f16(h, out) },
                narrow_f16: |x, out| unsafe { x86::narrow_f16(x, out) },
                f16_rows_reads_finite: false,
            };
        }
    }
    Dots {
        f32: |a, b| dot_f32_lanes(a, b, false),
        q8: |q, s, x| dot_q8_lanes(q, s, x, false),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        f16: wasm::dot_f16,
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        f16: |w, x| dot_f16_lanes(w, x, false),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        f16_rows: wasm::f16_rows,
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        f16_rows: |w, k, x, m, out, _| f16_rows_by_dots(|w, x| dot_f16_lanes(w, x, false), w, k, x, m, out),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        widen_f16: wasm::widen_f16,
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        widen_f16: widen_f16_plain,
        narrow_f16: narrow_f16_plain,
        f16_rows_reads_finite: cfg!(all(target_arch = "wasm32", target_feature = "simd128")),
    }
}

/// `y[i * n + r] = row_dots(r, x, out)` driver: `row_dots(r, x, m, out, scratch)` writes the m
/// products of weight row r (`row_bytes` bytes of weights) with the m activation rows of `x`
/// into `out`. Rows go to the pool as the integer kernels' do (`kernels::rows_per_task`).
pub fn gemm_by_rows<F>(n: usize, row_bytes: usize, x: &[f32], m: usize, y: &mut [f32], row_dots: F)
where
    F: Fn(usize, &[f32], usize, &mut [f32], &mut Vec<f32>) + Sync,
{
    gemm_by_row_runs(n, row_bytes, x, m, y, |first, x, m, part| {
        let mut scratch = Vec::new();
        for (j, o) in part.chunks_mut(m).enumerate() {
            row_dots(first + j, x, m, o, &mut scratch);
        }
    });
}

/// `gemm_by_rows` a task's run of rows at a time: `run_dots(first, x, m, out)` writes the
/// products of rows `first..first + out.len() / m` into `out` ([row][m]).
pub fn gemm_by_row_runs<F>(n: usize, row_bytes: usize, x: &[f32], m: usize, y: &mut [f32], run_dots: F)
where
    F: Fn(usize, &[f32], usize, &mut [f32]) + Sync,
{
    let mut out = vec![0f32; n * m];
    let rows_per_task = super::rows_per_task(n, row_bytes, m);
    crate::threads::for_each_chunk(&mut out, rows_per_task * m, |chunk, part| run_dots(chunk * rows_per_task, x, m, part));
    if m == 1 {
        y.copy_from_slice(&out);
        return;
    }
    for r in 0..n {
        for i in 0..m {
            y[i * n + r] = out[r * m + i];
        }
    }
}

/// `Y = X W^T` for f32 weights `w` (n x k), x (m x k), y (m x n).
pub fn gemm_f32(w: &[f32], n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32]) {
    let d = dots();
    gemm_by_rows(n, k * 4, x, m, y, |r, x, m, o, _| {
        let row = &w[r * k..(r + 1) * k];
        for i in 0..m {
            o[i] = (d.f32)(row, &x[i * k..(i + 1) * k]);
        }
    });
}

/// Whether `w` holds no infinity or NaN (no value with f16's all-ones exponent): what
/// `gemm_f16`'s `finite` asks. Written for the compiler to vectorize (a max over 4096 values
/// at a time).
pub fn f16_all_finite(w: &[f16]) -> bool {
    w.chunks(4096).all(|c| c.iter().fold(0u16, |top, h| top.max(h.to_bits() & 0x7fff)) < 0x7c00)
}

/// `Y = X W^T` for f16 weights; `finite`: `w` holds no infinity or NaN (`f16_all_finite`, as
/// `Dots::f16_rows` takes it).
pub fn gemm_f16(w: &[f16], n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32], finite: bool) {
    let d = dots();
    // wasm's `f16_rows` scales x once for all rows (`wasm::f16_rows`).
    if m == 1 && !cfg!(all(target_arch = "wasm32", target_feature = "simd128")) {
        // The GEMV streams each row once anyway.
        return gemm_by_rows(n, k * 2, x, m, y, |r, x, _, o, _| o[0] = (d.f16)(&w[r * k..(r + 1) * k], x));
    }
    let mut buf = Vec::new();
    let x = cache_aligned(x, &mut buf);
    gemm_by_row_runs(n, k * 2, x, m, y, |first, x, m, part| (d.f16_rows)(&w[first * k..(first + part.len() / m) * k], k, x, m, part, finite));
}

/// `Y = X W^T` for Q8 weights: int8 blocks of `Q8_BLOCK` along rows, one scale per block.
pub fn gemm_q8(q: &[i8], scales: &[f32], n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32]) {
    let d = dots();
    let blocks = k.div_ceil(Q8_BLOCK);
    gemm_by_rows(n, k + blocks * 4, x, m, y, |r, x, m, o, _| {
        let (row, s) = (&q[r * k..(r + 1) * k], &scales[r * blocks..(r + 1) * blocks]);
        for i in 0..m {
            o[i] = (d.q8)(row, s, &x[i * k..(i + 1) * k]);
        }
    });
}

/// `Y = X W^T` where `decode(r, buf)` writes weight row r as f32 into `buf` (k values).
pub fn gemm_decoded<F>(n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32], decode: F)
where
    F: Fn(usize, &mut Vec<f32>) + Sync,
{
    let d = dots();
    gemm_by_rows(n, k * 4, x, m, y, |r, x, m, o, scratch| {
        decode(r, scratch);
        for i in 0..m {
            o[i] = (d.f32)(&scratch[..k], &x[i * k..(i + 1) * k]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every Q8 dot product this CPU can run against an f64 sum of the same values.
    #[test]
    fn q8_dots_match_a_wide_sum() {
        let mut seed = 5u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        type Q8Dot = fn(&[i8], &[f32], &[f32]) -> f32;
        // x86 adds its own kernels below; other targets test these alone.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut variants: Vec<(&str, Q8Dot)> = vec![("baseline", |q, s, x| dot_q8_lanes(q, s, x, false)), ("chosen", dots().q8)];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c");
            if avx2 {
                // SAFETY: the features were checked just above.
                variants.push(("avx2", |q, s, x| unsafe { x86::dot_q8(q, s, x) }));
            }
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: as above.
                variants.push(("avx512", |q, s, x| unsafe { x86_512::dot_q8(q, s, x) }));
            }
        }
        for n in [1usize, 31, 32, 33, 95, 128, 129, 1023, 2560, 4099] {
            let q: Vec<i8> = (0..n).map(|_| (next() % 255) as i8).collect();
            let scales: Vec<f32> = (0..n.div_ceil(Q8_BLOCK)).map(|_| (next() % 1000) as f32 * 1e-4).collect();
            let x: Vec<f32> = (0..n).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
            let term = |i: usize| q[i] as f64 * scales[i / Q8_BLOCK] as f64 * x[i] as f64;
            let exact: f64 = (0..n).map(term).sum();
            let scale: f64 = (0..n).map(|i| term(i).abs()).sum();
            for (name, dot) in &variants {
                let got = dot(&q, &scales, &x) as f64;
                assert!((got - exact).abs() <= 1e-6 * scale + 1e-7, "{name} n {n}: {got} vs {exact}");
            }
        }
    }

    /// Every f16 dot product this CPU can run (the baseline, AVX2, AVX-512) against an f64 sum,
    /// on odd lengths and on lengths that cross the unrolled and prefetched steps.
    #[test]
    fn f16_dots_match_a_wide_sum() {
        let mut seed = 11u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 4.0
        };
        // x86 adds its own kernels below; other targets test these alone.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut variants: Vec<(&str, fn(&[f16], &[f32]) -> f32)> = vec![("baseline", |w, x| dot_f16_lanes(w, x, false)), ("chosen", dots().f16)];
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &str| {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                    && (f != "avx512f" || std::arch::is_x86_feature_detected!("avx512f"))
            };
            if has("avx2") {
                // SAFETY: the features were checked just above.
                variants.push(("avx2", |w, x| unsafe { x86::dot_f16(w, x) }));
            }
            if has("avx512f") {
                // SAFETY: as above.
                variants.push(("avx512", |w, x| unsafe { x86_512::dot_f16(w, x) }));
            }
        }
        for n in [1, 3, 17, 63, 64, 127, 1023, 1536, 4099] {
            let w: Vec<f16> = (0..n).map(|_| f16::from_f32(next())).collect();
            let x: Vec<f32> = (0..n).map(|_| next()).collect();
            let exact: f64 = w.iter().zip(&x).map(|(a, b)| a.to_f64() * *b as f64).sum();
            let scale: f64 = w.iter().zip(&x).map(|(a, b)| (a.to_f64() * *b as f64).abs()).sum();
            for (name, dot) in &variants {
                let got = dot(&w, &x) as f64;
                assert!((got - exact).abs() <= 1e-6 * scale + 1e-6, "{name} n {n}: {got} vs {exact}");
            }
            // A matrix held as f32 or as f16 gives the very same products (model conversions
            // between the two are checked for equal logits).
            let widened: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            assert_eq!((dots().f32)(&widened, &x).to_bits(), (dots().f16)(&w, &x).to_bits(), "n {n}");
        }
    }

    /// Weight rows against several activation rows at once (a batch's output layer) give each
    /// single dot product bit for bit, on every f16 kernel this CPU can run.
    #[test]
    fn f16_rows_at_once_equal_single_dots() {
        let mut seed = 13u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 4.0
        };
        type Rows = fn(&[f16], usize, &[f32], usize, &mut [f32], bool);
        // x86 adds its own kernels below; other targets test these alone.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut variants: Vec<(&str, fn(&[f16], &[f32]) -> f32, Rows)> = vec![("chosen", dots().f16, dots().f16_rows)];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c");
            if avx2 {
                // SAFETY: the features were checked just above.
                variants.push(("avx2", |w, x| unsafe { x86::dot_f16(w, x) }, |w, k, x, m, o, _| unsafe { x86::gemm_f16_rows(w, k, x, m, o) }));
            }
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: as above.
                variants.push(("avx512", |w, x| unsafe { x86_512::dot_f16(w, x) }, |w, k, x, m, o, _| unsafe { x86_512::gemm_f16_rows(w, k, x, m, o) }));
            }
        }
        // Lengths across the 64-wide steps, the 16-wide tail and the scalar tail; counts of x's
        // rows across the tiles of four; weight rows across the tiles' remainders.
        for (k, rows) in [(1, 3), (17, 5), (64, 4), (127, 2), (1536, 5), (2560 + 80 + 3, 3), (100, 37)] {
            let w: Vec<f16> = (0..rows * k).map(|_| f16::from_f32(next())).collect();
            for m in [1, 2, 3, 4, 5, 8, 9, 17] {
                let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
                // The weights are finite: the kernels that check rows (`finite` false) and those
                // told not to must agree.
                assert!(f16_all_finite(&w));
                for ((name, dot, rows_at_once), finite) in variants.iter().flat_map(|v| [(v, false), (v, true)]) {
                    let mut out = vec![0f32; rows * m];
                    rows_at_once(&w, k, &x, m, &mut out, finite);
                    for r in 0..rows {
                        for i in 0..m {
                            let single = dot(&w[r * k..(r + 1) * k], &x[i * k..(i + 1) * k]);
                            assert_eq!(out[r * m + i].to_bits(), single.to_bits(), "{name} finite {finite} k {k} m {m} row {r} x {i}");
                        }
                    }
                }
                // The whole product, with x starting on and off a cache line (`cache_aligned`).
                let mut shifted = vec![0f32; m * k + 32];
                for offset in [0, 1, 4] {
                    let start = shifted.as_ptr().align_offset(64) + offset;
                    shifted[start..start + m * k].copy_from_slice(&x);
                    let mut y = vec![0f32; m * rows];
                    gemm_f16(&w, rows, k, &shifted[start..start + m * k], m, &mut y, true);
                    for r in 0..rows {
                        for i in 0..m {
                            let single = (dots().f16)(&w[r * k..(r + 1) * k], &x[i * k..(i + 1) * k]);
                            assert_eq!(y[i * rows + r].to_bits(), single.to_bits(), "gemm_f16 offset {offset} k {k} m {m} row {r} x {i}");
                        }
                    }
                }
            }
        }
    }

    /// `f16_all_finite` is false exactly when some value is an infinity or NaN, wherever it is.
    #[test]
    fn f16_all_finite_finds_every_infinity_and_nan() {
        let finite = [0x0000u16, 0x8000, 0x0001, 0x03ff, 0x7bff, 0xfbff, 0x3c00, 0xbc00];
        let special = [0x7c00u16, 0xfc00, 0x7c01, 0x7e00, 0xffff, 0x7fff];
        let mut w: Vec<f16> = (0..10_000).map(|i| f16::from_bits(finite[i % finite.len()])).collect();
        assert!(f16_all_finite(&w) && f16_all_finite(&[]));
        for &bits in &special {
            for at in [0, 4095, 4096, 9_999] {
                let old = w[at];
                w[at] = f16::from_bits(bits);
                assert!(!f16_all_finite(&w), "{bits:#06x} at {at}");
                w[at] = old;
            }
        }
    }

    /// f16 <-> f32 conversion (the f16 KV cache) on every kernel this CPU can run equals
    /// `half`'s `to_f32`/`from_f32`: widening for all 65,536 f16 values, narrowing for f32
    /// values across f16's range (ties, subnormals, overflow to infinity, NaN); lengths cross
    /// the vector steps and their tails.
    #[test]
    fn f16_conversions_equal_half() {
        type Widen = fn(&[f16], &mut [f32]);
        type Narrow = fn(&[f32], &mut [f16]);
        // x86 adds its own kernels below; other targets test these alone.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut variants: Vec<(&str, Widen, Narrow)> = vec![("baseline", widen_f16_plain, narrow_f16_plain), ("chosen", dots().widen_f16, dots().narrow_f16)];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c");
            if avx2 {
                // SAFETY: the features were checked just above.
                variants.push(("avx2", |h, o| unsafe { x86::widen_f16(h, o) }, |x, o| unsafe { x86::narrow_f16(x, o) }));
            }
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: as above.
                variants.push(("avx512", |h, o| unsafe { x86_512::widen_f16(h, o) }, |x, o| unsafe { x86_512::narrow_f16(x, o) }));
            }
        }
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        let halves: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut seed = 17u64;
        let mut floats: Vec<f32> = (0..40_000)
            .map(|i| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = (seed >> 32) as u32;
                match i % 4 {
                    // f16's range and a bit past it, any f32, f16 values, and the midpoints
                    // between neighbouring f16 values (ties).
                    0 => f32::from_bits((r % 0x4800_0000) | (r & 0x8000_0000)),
                    1 => f32::from_bits(r),
                    2 => f16::from_bits(r as u16).to_f32(),
                    _ => (f16::from_bits(r as u16 & 0x7bff).to_f32() + f16::from_bits((r as u16 & 0x7bff) + 1).to_f32()) / 2.0,
                }
            })
            .collect();
        floats.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 65504.0, 65520.0, 65519.99, 1e-8, -6e-8, 5.96e-8, 2.98e-8]);
        for (name, widen, narrow) in &variants {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 33, 100] {
                let mut out = vec![0f32; len];
                widen(&halves[1000..1000 + len], &mut out);
                assert!(halves[1000..1000 + len].iter().zip(&out).all(|(h, o)| same(h.to_f32(), *o)), "{name} widen len {len}");
            }
            let mut wide = vec![0f32; halves.len()];
            widen(&halves, &mut wide);
            for (h, w) in halves.iter().zip(&wide) {
                assert!(same(h.to_f32(), *w), "{name} widen {:#06x}: {w}", h.to_bits());
            }
            let mut narrowed = vec![f16::ZERO; floats.len()];
            narrow(&floats, &mut narrowed);
            for (x, n) in floats.iter().zip(&narrowed) {
                let want = f16::from_f32(*x);
                assert!(want.to_bits() == n.to_bits() || (want.is_nan() && n.is_nan()), "{name} narrow {x:e}: {:#06x} vs {:#06x}", n.to_bits(), want.to_bits());
            }
        }
    }
}

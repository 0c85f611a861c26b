//! AVX2 kernels (`vpmaddubsw` + `vpmaddwd`). A 64-byte block is read as two 32-byte halves;
//! half h of plane p meets activations `64p + 32h ..`.
//!
//! - GEMV, t2 and b1 (`gemv`): one shift per half block instead of one per plane; planes are
//!   masked in place (code times 4 or 2^s) and scaled back by exact i16 shifts. One row at a
//!   time, so the matrix is read as one sequential stream, prefetched 8 KiB ahead, a line at a
//!   time. Measured on a 2-core AMD EPYC (Zen 3) VM, 2026-12-07, from memory, one thread
//!   (standalone copy of this loop): 17-19 GB/s at BitNet 2B4T's and 729M's shapes against
//!   11-16 for tiles of 4 interleaved rows (the hardware prefetchers follow 4 streams of
//!   10-16 lines poorly) and 13-14 without the software prefetch, where a plain read gives 22.
//!   Decode, both in one process, alternating: 729M 42.7 -> 47.6 tok/s, 2B4T 9.75 -> 10.6 (two
//!   threads 17.9 -> 20.2).
//! - Grouped GEMV (per-group scales): the same loop over one group of a row at a time, one
//!   integer sum per group (`gemv_grouped`).
//! - t1.6 GEMV stays in tiles of 4 rows (`tile`): its trit decoding makes it compute-bound, and
//!   the tile's shared activation loads win there (729M, same A/B: 33.4 tok/s, 27.8 one row at
//!   a time).
//! - t1.6 decodes trits without multiplies (`t16_trit`): 2.2x faster than mulhi/mullo.
//! - Otherwise `tile`: R weight rows x C activation rows, each plane decoded once per tile,
//!   u8 x i8 products summed in i16 and widened once per 4 blocks. GEMM uses 2 x 4 (the
//!   accumulators and i16 partial sums fill the 16 ymm registers), remainders one narrower
//!   tile; up to `ONE_ROW_MAX_M` activation rows, one weight row at a time.
//! - Prompts of t1.6, and of t2 and b1 whose activations outgrow L2 (`DECODED_MIN_X_BYTES`):
//!   `decoded_gemm` decodes each weight once into code bytes (L2), blocked along K so that an
//!   activation tile stays in L1, and runs plain `vpmaddubsw` tiles over them. Every product
//!   then costs one `vpmaddubsw` lane and one i16 add, which set the speed on a Zen 3 core: a
//!   standalone loop of that pair runs about 2.1 `vpmaddubsw` a nanosecond (`vpmaddubsw`
//!   alone 5.8), and the tile reaches it. Measured there (2026-12-07, one thread, one
//!   process, alternating): t1.6 at 4096 x 1536, 128 rows, 23 -> 60 G products/s (its trit
//!   decoding was most of the work); t2 at 2560 x 6912, 128 rows, 86 -> 101 (the 2 x 4 tiles
//!   read 884 KB of activations from beyond L2 for every two weight rows). At 8 rows the
//!   tiles are faster (82 against 67: decoding into memory does not pay there), hence the
//!   threshold. A 729M t1.6 prompt 61.6 -> 104 tok/s.

use super::{block_weights, planes, prefetch_distance, signed_sum, B1, T16, T2};
use crate::formats::WeightFormat;
use crate::kernels::{GemmKernel, GroupedGemvKernel};
use core::arch::x86_64::*;

/// Weight rows per t1.6 GEMV tile.
const GEMV_ROWS: usize = 4;
/// Blocks between widenings of the GEMV's i16 partial sums (at most 3072 a half block).
const GEMV_FLUSH_BLOCKS: usize = 4;
/// Blocks between widenings of `tile`'s i16 partial sums (at most 2560 a half block). 729M
/// prompts on a Zen 3 core (2026-12-07, one process, alternating): 101 tok/s widening every
/// half block, 115 every 4 blocks.
const TILE_FLUSH_BLOCKS: usize = 4;
/// Up to this many activation rows (a small batch's decode step), GEMM walks one weight row at
/// a time, prefetched as the GEMV is (one sequential stream), instead of `GEMM_ROWS` rows
/// together. A batched decode step on a Zen 3 core (2026-12-07, one process, alternating):
/// 2B4T's shape 168 -> 130 ms at 2 sequences, 216 -> 170 at 3, 222 -> 186-207 at 4; 729M 36.4
/// -> 34.1, 49.8 -> 48.6, 53.9 -> 50.4. At 8 and 16 rows the 2 x 4 tiles were as fast or
/// faster.
const ONE_ROW_MAX_M: usize = 4;
/// Prompts (more than `ONE_ROW_MAX_M` activation rows) of t1.6, and of t2 and b1 whose
/// activations (m x kp bytes) pass this size, take the decoded GEMM (`decoded_gemm`).
const DECODED_MIN_X_BYTES: usize = 256 << 10;
/// Weights per K-chunk of the decoded GEMM (whole blocks, at least one).
const DECODED_K: usize = 2048;
/// Decoded codes per block of weight rows (`DECODED_K` columns of them), kept in L2 while
/// every activation tile passes over them.
const DECODED_BLOCK_BYTES: usize = 128 << 10;
/// 32-weight chunks between widenings of `decoded_tile`'s i16 partial sums: a chunk adds at
/// most 2 * 3 * 128 = 768 to them (t2's unused code 3 included), 32 chunks 24576.
const DECODED_FLUSH_CHUNKS: usize = 32;
/// GEMM register tile (weight rows x activation rows).
const GEMM_ROWS: usize = 2;
const GEMM_COLS: usize = 4;

/// The grouped GEMV (`GroupedGemvKernel`) of t2 and b1; t1.6 takes the generic path.
pub fn grouped_gemv(format: WeightFormat) -> Option<GroupedGemvKernel> {
    match format {
        WeightFormat::Ternary2 => Some(gemv_grouped_t2_i8_avx2),
        WeightFormat::Binary1 => Some(gemv_grouped_b1_i8_avx2),
        WeightFormat::Ternary1_6 => None,
    }
}

pub fn kernel(format: WeightFormat) -> GemmKernel {
    match format {
        WeightFormat::Ternary2 => gemm_t2_i8_avx2,
        WeightFormat::Ternary1_6 => gemm_t16_i8_avx2,
        WeightFormat::Binary1 => gemm_b1_i8_avx2,
    }
}

/// Plane p of a t2 or b1 half-block as unsigned codes: (v >> 2p) & 3 or (v >> p) & 1.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn decode_plane<const F: u8>(v: __m256i, p: usize) -> __m256i {
    if F == T2 {
        _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * p as i32)), _mm256_set1_epi8(3))
    } else {
        _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(p as i32)), _mm256_set1_epi8(1))
    }
}

/// t1.6 trit of every byte from z = byte * 3^p mod 256: floor(3z / 256) = [z >= 86] +
/// [z >= 171], each bracket as min(z -sat 85, 1) (no multiplies, no unsigned compares in
/// AVX2). Returns the trits and 3z mod 256, the z of the next plane.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn t16_trit(z: __m256i) -> (__m256i, __m256i) {
    let one = _mm256_set1_epi8(1);
    let ge86 = _mm256_min_epu8(_mm256_subs_epu8(z, _mm256_set1_epi8(85)), one);
    let ge171 = _mm256_min_epu8(_mm256_subs_epu8(z, _mm256_set1_epi8(170u8 as i8)), one);
    let next = _mm256_add_epi8(_mm256_add_epi8(z, z), z);
    (_mm256_add_epi8(ge86, ge171), next)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Adds the i16 partial sums of a tile into its i32 accumulators (pairs summed).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn widen_into<const R: usize, const C: usize>(acc: &mut [[__m256i; C]; R], part: &[[__m256i; C]; R]) {
    let ones = _mm256_set1_epi16(1);
    for r in 0..R {
        for c in 0..C {
            acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(part[r][c], ones));
        }
    }
}

/// The total of each accumulator of a tile.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hsums<const R: usize, const C: usize>(acc: &[[__m256i; C]; R]) -> [[i32; C]; R] {
    let mut sums = [[0i32; C]; R];
    for r in 0..R {
        for c in 0..C {
            sums[r][c] = hsum(acc[r][c]);
        }
    }
    sums
}

/// Asks for the line `ahead` bytes (`prefetch_distance`) past `offset` in the tiles at `w`.
#[inline(always)]
fn prefetch(w: *const u8, ahead: usize, offset: usize) {
    crate::kernels::float::prefetch_line(w.wrapping_add(ahead + offset) as *const i8)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tile<const R: usize, const C: usize, const F: u8>(w: *const u8, row_bytes: usize, x: *const i8, kp: usize) -> [[i32; C]; R] {
    let mut acc = [[_mm256_setzero_si256(); C]; R];
    let blocks = row_bytes / 64;
    let ahead = prefetch_distance(R * row_bytes);
    let mut b0 = 0;
    while b0 < blocks {
        let end = (b0 + TILE_FLUSH_BLOCKS).min(blocks);
        // i16 partial sums over the planes of `TILE_FLUSH_BLOCKS` blocks: at most
        // 2 * 4 * planes * 2 * 2 * 128 = 20480 (t1.6; t2 and b1 16384).
        let mut part = [[_mm256_setzero_si256(); C]; R];
        for b in b0..end {
            for h in 0..2 {
                let mut v = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    // The t1.6 GEMV's tiles (C == 1) and a single row's stream (`ONE_ROW_MAX_M`):
                    // one prefetch a line. Every half line, as the t1.6 tiles had it, was slower
                    // (Zen 3, 2026-12-07, one process, alternating, medians of 6: t1.6 decode
                    // at 2B4T's shape 7.09 -> 7.51 tok/s, 729M 25.6 -> 26.2).
                    if h == 0 && (C == 1 || R == 1) {
                        prefetch(w, ahead, r * row_bytes + b * 64);
                    }
                    v[r] = _mm256_loadu_si256(w.add(r * row_bytes + b * 64 + 32 * h) as *const _);
                }
                let mut z = v;
                for p in 0..planes(F) {
                    let mut codes = [_mm256_setzero_si256(); R];
                    for r in 0..R {
                        if F == T16 {
                            (codes[r], z[r]) = t16_trit(z[r]);
                        } else {
                            codes[r] = decode_plane::<F>(v[r], p);
                        }
                    }
                    for c in 0..C {
                        let xv = _mm256_loadu_si256(x.add(c * kp + b * block_weights(F) + 64 * p + 32 * h) as *const _);
                        for r in 0..R {
                            part[r][c] = _mm256_add_epi16(part[r][c], _mm256_maddubs_epi16(codes[r], xv));
                        }
                    }
                }
            }
        }
        widen_into(&mut acc, &part);
        b0 = end;
    }
    hsums(&acc)
}

/// i16 pair sums of `v & mask` with `x_low` plus `v4 & mask` with `x_high`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn masked_dots(v: __m256i, v4: __m256i, mask: i8, x_low: __m256i, x_high: __m256i) -> __m256i {
    let m = _mm256_set1_epi8(mask);
    _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v, m), x_low), _mm256_maddubs_epi16(_mm256_and_si256(v4, m), x_high))
}

/// t2 and b1 GEMV of one row with one shift per half block instead of one per plane. t2:
/// planes 0 and 2 are `v & 3` and `(v >> 4) & 3`, planes 1 and 3 the same under mask 0x0C,
/// i.e. code times 4. b1: planes s and s + 4 are `v & 2^s` and `(v >> 4) & 2^s`, bit times
/// 2^s. Each scale's products are summed in i16 and scaled back by an exact shift (every
/// such sum is a multiple of its scale). i16 partial sums are widened every
/// `GEMV_FLUSH_BLOCKS` blocks: a half block adds at most 3072 (t2) or 2048 (b1) to them.
/// `len` bytes of the row at `w` are read; the prefetches reach `ahead` bytes past them
/// (`prefetch_distance` of the row's stride, computed once by the caller).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn gemv<const F: u8>(w: *const u8, ahead: usize, len: usize, x: *const i8) -> i32 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let blocks = len / 64;
    let mut b0 = 0;
    while b0 < blocks {
        let end = (b0 + GEMV_FLUSH_BLOCKS).min(blocks);
        let mut part = _mm256_setzero_si256();
        for b in b0..end {
            prefetch(w, ahead, b * 64);
            for h in 0..2 {
                let mut xs = [_mm256_setzero_si256(); 8];
                for p in 0..planes(F) {
                    xs[p] = _mm256_loadu_si256(x.add(b * block_weights(F) + 64 * p + 32 * h) as *const _);
                }
                let v = _mm256_loadu_si256(w.add(b * 64 + 32 * h) as *const _);
                let v4 = _mm256_srli_epi16::<4>(v);
                let sum = if F == T2 {
                    let low = masked_dots(v, v4, 0x03, xs[0], xs[2]);
                    _mm256_add_epi16(low, _mm256_srai_epi16::<2>(masked_dots(v, v4, 0x0C, xs[1], xs[3])))
                } else {
                    let s01 = _mm256_add_epi16(masked_dots(v, v4, 1, xs[0], xs[4]), _mm256_srai_epi16::<1>(masked_dots(v, v4, 2, xs[1], xs[5])));
                    let s23 = _mm256_add_epi16(masked_dots(v, v4, 4, xs[2], xs[6]), _mm256_srai_epi16::<1>(masked_dots(v, v4, 8, xs[3], xs[7])));
                    _mm256_add_epi16(s01, _mm256_srai_epi16::<2>(s23))
                };
                part = _mm256_add_epi16(part, sum);
            }
        }
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(part, ones));
        b0 = end;
    }
    hsum(acc)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn run_tile<const R: usize, const C: usize, const F: u8>(
    w: &[u8],
    row_bytes: usize,
    x: &[i8],
    x_sums: &[i32],
    m: usize,
    kp: usize,
    out: &mut [i32],
    r0: usize,
    i0: usize,
) {
    let sums = tile::<R, C, F>(w.as_ptr().add(r0 * row_bytes), row_bytes, x.as_ptr().add(i0 * kp), kp);
    for r in 0..R {
        for c in 0..C {
            out[(r0 + r) * m + i0 + c] = signed_sum(F, sums[r][c], x_sums[i0 + c]);
        }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn gemm<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    let mut r = 0;
    if m == 1 && F != T16 {
        let ahead = prefetch_distance(row_bytes);
        for (r, out) in out[..n_rows].iter_mut().enumerate() {
            *out = signed_sum(F, gemv::<F>(w.as_ptr().add(r * row_bytes), ahead, row_bytes, x.as_ptr()), x_sums[0]);
        }
        return;
    }
    if m == 1 {
        while r + GEMV_ROWS <= n_rows {
            run_tile::<GEMV_ROWS, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, 0);
            r += GEMV_ROWS;
        }
        while r < n_rows {
            run_tile::<1, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, 0);
            r += 1;
        }
        return;
    }
    if m > ONE_ROW_MAX_M && (F == T16 || m * kp > DECODED_MIN_X_BYTES) {
        return decoded_gemm::<F>(w, n_rows, row_bytes, x, x_sums, m, kp, out);
    }
    if m <= ONE_ROW_MAX_M {
        for r in 0..n_rows {
            gemm_rows::<F, 1>(w, row_bytes, x, x_sums, m, kp, out, r);
        }
        return;
    }
    while r < n_rows {
        if r + GEMM_ROWS <= n_rows {
            gemm_rows::<F, GEMM_ROWS>(w, row_bytes, x, x_sums, m, kp, out, r);
            r += GEMM_ROWS;
        } else {
            gemm_rows::<F, 1>(w, row_bytes, x, x_sums, m, kp, out, r);
            r += 1;
        }
    }
}

/// Every activation row against R weight rows from r0: GEMM_COLS at a time, then the rest
/// in one narrower tile, so each plane is decoded once per tile.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn gemm_rows<const F: u8, const R: usize>(w: &[u8], row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32], r0: usize) {
    let mut i = 0;
    while i + GEMM_COLS <= m {
        run_tile::<R, GEMM_COLS, F>(w, row_bytes, x, x_sums, m, kp, out, r0, i);
        i += GEMM_COLS;
    }
    match m - i {
        0 => {}
        1 => run_tile::<R, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r0, i),
        2 => run_tile::<R, 2, F>(w, row_bytes, x, x_sums, m, kp, out, r0, i),
        _ => run_tile::<R, 3, F>(w, row_bytes, x, x_sums, m, kp, out, r0, i),
    }
}

/// Writes the unsigned codes of `row_bytes` bytes of a packed row (whole blocks) in
/// activation order: byte i of `out` meets activation i of those blocks (`row_bytes / 64 *
/// block_weights` bytes).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn decode_row<const F: u8>(w: *const u8, row_bytes: usize, out: *mut u8) {
    for b in 0..row_bytes / 64 {
        for h in 0..2 {
            let v = _mm256_loadu_si256(w.add(b * 64 + 32 * h) as *const _);
            let mut z = v;
            for p in 0..planes(F) {
                let codes = if F == T16 {
                    let (c, next) = t16_trit(z);
                    z = next;
                    c
                } else {
                    decode_plane::<F>(v, p)
                };
                _mm256_storeu_si256(out.add(b * block_weights(F) + 64 * p + 32 * h) as *mut _, codes);
            }
        }
    }
}

/// R rows of decoded codes (`cs` bytes apart) against C activation rows (`xs` apart), `len`
/// weights (a multiple of 32).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn decoded_tile<const R: usize, const C: usize>(codes: *const u8, cs: usize, x: *const i8, xs: usize, len: usize) -> [[i32; C]; R] {
    let mut acc = [[_mm256_setzero_si256(); C]; R];
    let chunks = len / 32;
    let mut c0 = 0;
    while c0 < chunks {
        let end = (c0 + DECODED_FLUSH_CHUNKS).min(chunks);
        let mut part = [[_mm256_setzero_si256(); C]; R];
        for ch in c0..end {
            let mut cv = [_mm256_setzero_si256(); R];
            for r in 0..R {
                cv[r] = _mm256_loadu_si256(codes.add(r * cs + 32 * ch) as *const _);
            }
            for c in 0..C {
                let xv = _mm256_loadu_si256(x.add(c * xs + 32 * ch) as *const _);
                for r in 0..R {
                    part[r][c] = _mm256_add_epi16(part[r][c], _mm256_maddubs_epi16(cv[r], xv));
                }
            }
        }
        widen_into(&mut acc, &part);
        c0 = end;
    }
    hsums(&acc)
}

/// Adds tile (r0, i0)'s sums over one K-chunk into `out` ([n][m]).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn decoded_run<const R: usize, const C: usize>(
    codes: *const u8,
    cs: usize,
    x: *const i8,
    kp: usize,
    len: usize,
    m: usize,
    out: &mut [i32],
    r0: usize,
    i0: usize,
) {
    let sums = decoded_tile::<R, C>(codes, cs, x.add(i0 * kp), kp, len);
    for r in 0..R {
        for c in 0..C {
            out[(r0 + r) * m + i0 + c] += sums[r][c];
        }
    }
}

/// `decoded_run` at activation rows i.., `GEMM_COLS` of them or the narrower rest.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn decoded_cols<const R: usize>(codes: *const u8, cs: usize, x: *const i8, kp: usize, len: usize, m: usize, out: &mut [i32], r0: usize, i0: usize) {
    match m - i0 {
        1 => decoded_run::<R, 1>(codes, cs, x, kp, len, m, out, r0, i0),
        2 => decoded_run::<R, 2>(codes, cs, x, kp, len, m, out, r0, i0),
        3 => decoded_run::<R, 3>(codes, cs, x, kp, len, m, out, r0, i0),
        _ => decoded_run::<R, GEMM_COLS>(codes, cs, x, kp, len, m, out, r0, i0),
    }
}

/// Prompts: weights decoded once into unsigned code bytes in activation order, then
/// multiplied by plain `vpmaddubsw` tiles (`decoded_tile`, R x C = `GEMM_ROWS` x
/// `GEMM_COLS`). Blocked for the caches: a block of weight rows, `DECODED_K` columns at a
/// time, is decoded into `DECODED_BLOCK_BYTES` (L2), and each tile of activation rows over
/// that K-chunk (8 KiB at most, L1) meets every row of the block. `out` gathers the K-chunks'
/// sums; the signed sums are taken at the end.
#[target_feature(enable = "avx2")]
unsafe fn decoded_gemm<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    const R: usize = GEMM_ROWS;
    let bw = block_weights(F);
    let kc_blocks = (DECODED_K / bw).max(1);
    let kc = kc_blocks * bw;
    let nb = (DECODED_BLOCK_BYTES / kc / R).max(1) * R;
    let mut codes = vec![0u8; nb.min(n_rows) * kc];
    out[..n_rows * m].fill(0);
    let blocks = row_bytes / 64;
    let mut r0 = 0;
    while r0 < n_rows {
        let rows = nb.min(n_rows - r0);
        let mut b0 = 0;
        while b0 < blocks {
            let bn = kc_blocks.min(blocks - b0);
            let len = bn * bw;
            for j in 0..rows {
                decode_row::<F>(w.as_ptr().add((r0 + j) * row_bytes + b0 * 64), bn * 64, codes.as_mut_ptr().add(j * kc));
            }
            let xp = x.as_ptr().add(b0 * bw);
            // An activation tile (in L1) meets every decoded row of the block (in L2).
            for i in (0..m).step_by(GEMM_COLS) {
                let mut r = 0;
                while r < rows {
                    let cp = codes.as_ptr().add(r * kc);
                    if r + R <= rows {
                        decoded_cols::<R>(cp, kc, xp, kp, len, m, out, r0 + r, i);
                        r += R;
                    } else {
                        decoded_cols::<1>(cp, kc, xp, kp, len, m, out, r0 + r, i);
                        r += 1;
                    }
                }
            }
            b0 += bn;
        }
        r0 += rows;
    }
    for row in out[..n_rows * m].chunks_exact_mut(m) {
        for (v, &s) in row.iter_mut().zip(x_sums) {
            *v = signed_sum(F, *v, s);
        }
    }
}

/// AVX2 kernel (module docs).
///
/// # Safety
/// The CPU has AVX2, and the lengths `GemmKernel` (or `GroupedGemvKernel`) documents hold.
pub unsafe fn gemm_t2_i8_avx2(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    gemm::<T2>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
}
/// AVX2 kernel (module docs).
///
/// # Safety
/// The CPU has AVX2, and the lengths `GemmKernel` (or `GroupedGemvKernel`) documents hold.
pub unsafe fn gemm_t16_i8_avx2(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    gemm::<T16>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
}
/// AVX2 kernel (module docs).
///
/// # Safety
/// The CPU has AVX2, and the lengths `GemmKernel` (or `GroupedGemvKernel`) documents hold.
pub unsafe fn gemm_b1_i8_avx2(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    gemm::<B1>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
}

/// t2 / b1 grouped GEMV (`GroupedGemvKernel`): each row walks its groups in turn.
#[target_feature(enable = "avx2")]
unsafe fn gemv_grouped<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, group_bytes: usize, x: &[i8], group_sums: &[i32], out: &mut [i32]) {
    let groups = row_bytes.div_ceil(group_bytes);
    let group_weights = group_bytes / 64 * block_weights(F);
    let ahead = prefetch_distance(row_bytes);
    for r in 0..n_rows {
        let wp = w.as_ptr().add(r * row_bytes);
        for g in 0..groups {
            let (start, len) = (g * group_bytes, group_bytes.min(row_bytes - g * group_bytes));
            let s = gemv::<F>(wp.add(start), ahead, len, x.as_ptr().add(g * group_weights));
            out[r * groups + g] = signed_sum(F, s, group_sums[g]);
        }
    }
}
/// AVX2 kernel (module docs).
///
/// # Safety
/// The CPU has AVX2, and the lengths `GemmKernel` (or `GroupedGemvKernel`) documents hold.
pub unsafe fn gemv_grouped_t2_i8_avx2(w: &[u8], n_rows: usize, row_bytes: usize, group_bytes: usize, x: &[i8], group_sums: &[i32], out: &mut [i32]) {
    gemv_grouped::<T2>(w, n_rows, row_bytes, group_bytes, x, group_sums, out)
}
/// AVX2 kernel (module docs).
///
/// # Safety
/// The CPU has AVX2, and the lengths `GemmKernel` (or `GroupedGemvKernel`) documents hold.
pub unsafe fn gemv_grouped_b1_i8_avx2(w: &[u8], n_rows: usize, row_bytes: usize, group_bytes: usize, x: &[i8], group_sums: &[i32], out: &mut [i32]) {
    gemv_grouped::<B1>(w, n_rows, row_bytes, group_bytes, x, group_sums, out)
}

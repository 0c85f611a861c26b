//! AVX-512 kernels, with VNNI (`vpdpbusd`) and without (`vpmaddubsw` + `vpmaddwd`).
//!
//! GEMV (one activation row) reads every weight byte once, so it runs as fast as weight bytes
//! turn into dot products; each format has its own loop that decodes as little as it can:
//! - t2: plane p is `(byte >> 2p) & 3`. Instead, planes 0 and 1 are `byte & 0x03` and
//!   `byte & 0x0C` (code times 4), planes 2 and 3 the same after one shift by 4: the times-4
//!   planes get their own accumulator, scaled back by an exact shift once per row (every lane
//!   sum is a multiple of 4). 9 ops per 64 bytes and row instead of 11.
//! - b1: likewise `byte & 2^s` (bit times 2^s) for planes s and, after one shift, s + 4: four
//!   accumulators a row, 17 ops per 64 bytes instead of 23.
//! - t1.6 never decodes a trit. With z_0 = byte and z_{p+1} = 3 z_p mod 256 (two byte adds),
//!   trit p is floor(3 z_p / 256) = (3 z_p - z_{p+1}) / 256, so with S the u8 x i8 dot the
//!   plane's sum is (3 S(z_p, x_p) - S(z_{p+1}, x_p)) / 256: two dots and two adds a plane,
//!   where decoding a trit took eight ops, four of them multiplies (5x faster). Without VNNI
//!   the u8 dot saturates at 255 x 128, so there trits are decoded (`t16_trit`, no multiply).
//!
//! Rows are read a tile at a time (4 or 8 rows side by side), which hardware prefetchers
//! follow poorly: each tile prefetches the lines of the tile about `prefetch_distance` ahead,
//! which takes GEMV from about 45% to about 75-90% of the streaming read bandwidth when the
//! weights come from DRAM.
//!
//! t2 with 2 to 4 activation rows (a small batch's decode step) runs the GEMV's tiles with
//! every row's dots (`gemv_t2_cols`): weights still stream from memory, prefetched, once.
//!
//! GEMM (several activation rows) is bound by dot products (2 `vpdpbusd` a cycle on Zen 5):
//! - t2, b1: each plane is decoded in registers (shift + AND) once for a 4 x 4 tile of
//!   weight rows x activation rows.
//! - t1.6: decoding costs 6 ops a plane, so K-chunks of 6 weight rows are decoded once into
//!   u8 codes (`decode_row`) and a 6 x 4 tile of plain u8 x i8 dots runs over them; chunks
//!   keep the decoded rows and an activation tile in L1 together. For 2 or 3 activation
//!   rows the GEMV's z trick is cheaper still.
//!
//! Grouped GEMV (per-group scales, `gemv_grouped`) runs the same t2 / b1 loops over one group
//! of a tile's rows at a time and reduces each group to its integer sum. With 256-weight groups
//! that reduction costs about as much as the dots (measured on Zen: 55-65% of the per-tensor
//! speed with the matrix in cache, about the same speed when it streams from DRAM).
//!
//! Every load feeding a dot goes through `load`: Zen 5 runs `vpdpbusd` with a memory operand
//! at half the rate of the register form.

use super::{block_weights, planes, prefetch_distance, signed_sum, B1, T16, T2};
use crate::formats::WeightFormat;
use crate::kernels::{GemmKernel, GroupedGemvKernel};
use core::arch::x86_64::*;

/// The grouped GEMV (`GroupedGemvKernel`) of t2 and b1; t1.6 takes the generic path.
pub fn grouped_gemv(format: WeightFormat, vnni: bool) -> Option<GroupedGemvKernel> {
    match (format, vnni) {
        (WeightFormat::Ternary2, true) => Some(vnni::gemv_grouped_t2_i8_avx512vnni),
        (WeightFormat::Binary1, true) => Some(vnni::gemv_grouped_b1_i8_avx512vnni),
        (WeightFormat::Ternary2, false) => Some(bw::gemv_grouped_t2_i8_avx512),
        (WeightFormat::Binary1, false) => Some(bw::gemv_grouped_b1_i8_avx512),
        (WeightFormat::Ternary1_6, _) => None,
    }
}

pub fn kernel(format: WeightFormat, vnni: bool) -> GemmKernel {
    match (format, vnni) {
        (WeightFormat::Ternary2, true) => vnni::gemm_t2_i8_avx512vnni,
        (WeightFormat::Ternary1_6, true) => vnni::gemm_t16_i8_avx512vnni,
        (WeightFormat::Binary1, true) => vnni::gemm_b1_i8_avx512vnni,
        (WeightFormat::Ternary2, false) => bw::gemm_t2_i8_avx512,
        (WeightFormat::Ternary1_6, false) => bw::gemm_t16_i8_avx512,
        (WeightFormat::Binary1, false) => bw::gemm_b1_i8_avx512,
    }
}

/// Weight rows per GEMV tile: accumulators a row x rows = 16 of the 32 zmm registers.
const GEMV_ROWS_T2: usize = 8;
const GEMV_ROWS_B1: usize = 4;
const GEMV_ROWS_T16: usize = 8;
/// GEMM tile of t2 and b1 (weight rows x activation rows, decoded in registers).
const PACKED_ROWS: usize = 4;
const PACKED_COLS: usize = 4;
/// GEMM tile of t1.6 over decoded codes, and its K-chunk: (6 + 4) rows of ~3456 bytes stay
/// in a 48 KiB L1 while the tile runs over them.
const DECODED_ROWS: usize = 6;
const DECODED_COLS: usize = 4;
const DECODED_CHUNK_WEIGHTS: usize = 3456;
/// t1.6 z-trick lanes hold 256 x (a partial trit sum); folding them into the total every 1024
/// blocks keeps that below 2^31 for any row length.
const T16_SEGMENT_BLOCKS: usize = 1024;

// The remainder tiles below are written out for widths up to 5.
const _: () = assert!(PACKED_COLS <= 5 && DECODED_COLS <= 5);

/// An unaligned 64-byte load kept in a register: LLVM folds a load used once into the
/// instruction that uses it, and the empty asm hides the value from that folding.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load<T>(p: *const T) -> __m512i {
    let mut v = _mm512_loadu_si512(p as *const _);
    core::arch::asm!("/* {0} */", inout(zmm_reg) v, options(pure, nomem, nostack, preserves_flags));
    v
}

/// N loads `step` bytes apart from `p`, each kept in a register.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn loads<const N: usize>(p: *const u8, step: usize) -> [__m512i; N] {
    let mut v = [_mm512_setzero_si512(); N];
    for i in 0..N {
        v[i] = load(p.add(i * step));
    }
    v
}

/// Prefetches the line that the tile `prefetch_distance` ahead reads at `offset`. Past the end
/// of the matrix the hint is harmless, hence `wrapping_add`.
#[inline(always)]
fn prefetch(w: *const u8, tile_bytes: usize, offset: usize) {
    crate::kernels::float::prefetch_line(w.wrapping_add(prefetch_distance(tile_bytes) + offset) as *const i8)
}

/// Sums of each of four vectors' 16 lanes, as the four lanes of one 128-bit vector.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn hsum4(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> __m128i {
    // Interleave and add until each 128-bit lane holds [a, b, c, d] partials, then fold lanes.
    let ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    let cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    let abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    let half = _mm256_add_epi32(_mm512_castsi512_si256(abcd), _mm512_extracti64x4_epi64::<1>(abcd));
    _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256::<1>(half))
}

/// Lane sums of N vectors, four at a time where N allows.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn hsum<const N: usize>(v: &[__m512i; N]) -> [i32; N] {
    let mut out = [0i32; N];
    for g in 0..N / 4 {
        let s = hsum4(v[4 * g], v[4 * g + 1], v[4 * g + 2], v[4 * g + 3]);
        _mm_storeu_si128(out.as_mut_ptr().add(4 * g) as *mut _, s);
    }
    for i in N / 4 * 4..N {
        out[i] = _mm512_reduce_add_epi32(v[i]);
    }
    out
}

/// 3z mod 256 in every byte.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn times3(z: __m512i) -> __m512i {
    _mm512_add_epi8(_mm512_add_epi8(z, z), z)
}

/// The t1.6 trits of plane p given z = byte * 3^p mod 256: floor(3z / 256) = [z >= 86] +
/// [z >= 171]. Returns them (0, 1, 2) with the next plane's z.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn t16_trit(z: __m512i) -> (__m512i, __m512i) {
    let one_or_two = _mm512_cmpge_epu8_mask(z, _mm512_set1_epi8(86));
    let two = _mm512_cmpge_epu8_mask(z, _mm512_set1_epi8(171u8 as i8));
    let t = _mm512_mask_mov_epi8(_mm512_maskz_mov_epi8(one_or_two, _mm512_set1_epi8(1)), two, _mm512_set1_epi8(2));
    (t, times3(z))
}

/// Plane p of a t2 or b1 block as unsigned codes: (v >> 2p) & 3 or (v >> p) & 1.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn decode_plane<const F: u8>(v: __m512i, p: usize) -> __m512i {
    if F == T2 {
        _mm512_and_si512(_mm512_srl_epi16(v, _mm_cvtsi32_si128(2 * p as i32)), _mm512_set1_epi8(3))
    } else {
        _mm512_and_si512(_mm512_srl_epi16(v, _mm_cvtsi32_si128(p as i32)), _mm512_set1_epi8(1))
    }
}

/// Writes `row_bytes` of packed row `w` as unsigned codes, one byte each, in the
/// activations' order: plane p of block b lands at `b * block_weights + 64 p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn decode_row<const F: u8>(w: *const u8, row_bytes: usize, out: *mut u8) {
    for b in 0..row_bytes / 64 {
        decode_block::<F>(w.add(b * 64), out.add(b * block_weights(F)), 64);
    }
}

/// Writes the 64-byte packed block at `w` as unsigned codes, one byte each: plane p's 64
/// codes at `out + p * plane_stride`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn decode_block<const F: u8>(w: *const u8, out: *mut u8, plane_stride: usize) {
    let v = _mm512_loadu_si512(w as *const _);
    if F == T16 {
        let mut z = v;
        for p in 0..5 {
            let (t, next) = t16_trit(z);
            _mm512_storeu_si512(out.add(plane_stride * p) as *mut _, t);
            z = next;
        }
    } else {
        for p in 0..planes(F) {
            _mm512_storeu_si512(out.add(plane_stride * p) as *mut _, decode_plane::<F>(v, p));
        }
    }
}

macro_rules! avx512_kernels {
    ($module:ident, $features:literal, $vnni:literal, $dot:ident, $t2:ident, $t16:ident, $b1:ident, $grouped_t2:ident, $grouped_b1:ident) => {
        mod $module {
            use super::*;

            /// Unsigned t2 sums of R rows (module docs) over `len` bytes of rows `stride` apart:
            /// two accumulators a row, scales 1 and 4.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn gemv_t2<const R: usize>(w: *const u8, stride: usize, len: usize, x: *const i8) -> [i32; R] {
                gemv_t2_cols::<R, 1>(w, stride, len, x, 0).map(|[s]| s)
            }

            /// `gemv_t2` of R rows with C activation rows (`kp` apart): each row's tile is read
            /// once, prefetched as the GEMV's, for all C (a small batch's decode step).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn gemv_t2_cols<const R: usize, const C: usize>(w: *const u8, stride: usize, len: usize, x: *const i8, kp: usize) -> [[i32; C]; R] {
                let low = _mm512_set1_epi8(0x03);
                let high = _mm512_set1_epi8(0x0C);
                let mut acc = [[[_mm512_setzero_si512(); 2]; C]; R];
                for b in 0..len / 64 {
                    // With one activation row its four vectors stay in registers across the
                    // rows; with more they are loaded at each use (from L1).
                    let one = if C == 1 { loads::<4>(x.add(b * 256) as *const u8, 64) } else { [_mm512_setzero_si512(); 4] };
                    for r in 0..R {
                        prefetch(w, R * stride, r * stride + b * 64);
                        let v = load(w.add(r * stride + b * 64));
                        let v4 = _mm512_srli_epi16::<4>(v);
                        let codes = [_mm512_and_si512(v, low), _mm512_and_si512(v, high), _mm512_and_si512(v4, low), _mm512_and_si512(v4, high)];
                        for c in 0..C {
                            let xs = if C == 1 { one } else { loads::<4>(x.add(c * kp + b * 256) as *const u8, 64) };
                            acc[r][c][0] = $dot(acc[r][c][0], codes[0], xs[0]);
                            acc[r][c][1] = $dot(acc[r][c][1], codes[1], xs[1]);
                            acc[r][c][0] = $dot(acc[r][c][0], codes[2], xs[2]);
                            acc[r][c][1] = $dot(acc[r][c][1], codes[3], xs[3]);
                        }
                    }
                }
                let mut sums = [[0i32; C]; R];
                if C == 1 {
                    let mut rows = [_mm512_setzero_si512(); R];
                    for r in 0..R {
                        rows[r] = _mm512_add_epi32(acc[r][0][0], _mm512_srai_epi32::<2>(acc[r][0][1]));
                    }
                    for (r, s) in hsum::<R>(&rows).into_iter().enumerate() {
                        sums[r][0] = s;
                    }
                } else {
                    for r in 0..R {
                        let mut cols = [_mm512_setzero_si512(); C];
                        for c in 0..C {
                            cols[c] = _mm512_add_epi32(acc[r][c][0], _mm512_srai_epi32::<2>(acc[r][c][1]));
                        }
                        sums[r] = hsum::<C>(&cols);
                    }
                }
                sums
            }

            /// Unsigned b1 sums of R rows, as `gemv_t2`: planes s and s + 4 share the
            /// accumulator of scale 2^s.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn gemv_b1<const R: usize>(w: *const u8, stride: usize, len: usize, x: *const i8) -> [i32; R] {
                let mut acc = [[_mm512_setzero_si512(); 4]; R];
                for b in 0..len / 64 {
                    let mut v = [_mm512_setzero_si512(); R];
                    let mut v4 = [_mm512_setzero_si512(); R];
                    for r in 0..R {
                        prefetch(w, R * stride, r * stride + b * 64);
                        v[r] = load(w.add(r * stride + b * 64));
                        v4[r] = _mm512_srli_epi16::<4>(v[r]);
                    }
                    for s in 0..4 {
                        let mask = _mm512_set1_epi8(1 << s);
                        let low = load(x.add(b * 512 + 64 * s));
                        let high = load(x.add(b * 512 + 64 * (s + 4)));
                        for r in 0..R {
                            acc[r][s] = $dot(acc[r][s], _mm512_and_si512(v[r], mask), low);
                            acc[r][s] = $dot(acc[r][s], _mm512_and_si512(v4[r], mask), high);
                        }
                    }
                }
                let mut rows = [_mm512_setzero_si512(); R];
                for r in 0..R {
                    let a = &acc[r];
                    let upper = _mm512_add_epi32(a[1], _mm512_srai_epi32::<1>(_mm512_add_epi32(a[2], _mm512_srai_epi32::<1>(a[3]))));
                    rows[r] = _mm512_add_epi32(a[0], _mm512_srai_epi32::<1>(upper));
                }
                hsum::<R>(&rows)
            }

            /// t2 / b1 GEMV: R-row tiles, then single rows.
            #[target_feature(enable = $features)]
            unsafe fn gemv<const F: u8, const R: usize>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sum: i32, out: &mut [i32]) {
                let mut r = 0;
                while r < n_rows {
                    let wp = w.as_ptr().add(r * row_bytes);
                    if r + R <= n_rows {
                        let sums =
                            if F == T2 { gemv_t2::<R>(wp, row_bytes, row_bytes, x.as_ptr()) } else { gemv_b1::<R>(wp, row_bytes, row_bytes, x.as_ptr()) };
                        for (j, s) in sums.into_iter().enumerate() {
                            out[r + j] = signed_sum(F, s, x_sum);
                        }
                        r += R;
                    } else {
                        let [s] = if F == T2 { gemv_t2::<1>(wp, row_bytes, row_bytes, x.as_ptr()) } else { gemv_b1::<1>(wp, row_bytes, row_bytes, x.as_ptr()) };
                        out[r] = signed_sum(F, s, x_sum);
                        r += 1;
                    }
                }
            }

            /// t2 / b1 grouped GEMV (`GroupedGemvKernel`): each R-row tile walks its groups in
            /// turn with the GEMV loop above, so the tile's rows stay in cache across groups.
            #[target_feature(enable = $features)]
            unsafe fn gemv_grouped<const F: u8, const R: usize>(
                w: &[u8],
                n_rows: usize,
                row_bytes: usize,
                group_bytes: usize,
                x: &[i8],
                group_sums: &[i32],
                out: &mut [i32],
            ) {
                let groups = row_bytes.div_ceil(group_bytes);
                let group_weights = group_bytes / 64 * block_weights(F);
                assert!(w.len() >= n_rows * row_bytes && out.len() >= n_rows * groups && group_sums.len() >= groups);
                let o = out.as_mut_ptr();
                let mut r = 0;
                while r < n_rows {
                    let wp = w.as_ptr().add(r * row_bytes);
                    let full = r + R <= n_rows;
                    for g in 0..groups {
                        let (start, len) = (g * group_bytes, group_bytes.min(row_bytes - g * group_bytes));
                        let xg = x.as_ptr().add(g * group_weights);
                        let x_sum = *group_sums.get_unchecked(g);
                        // SAFETY (writes): r + j < n_rows and g < groups, checked above.
                        if full {
                            let sums = if F == T2 { gemv_t2::<R>(wp.add(start), row_bytes, len, xg) } else { gemv_b1::<R>(wp.add(start), row_bytes, len, xg) };
                            for (j, s) in sums.into_iter().enumerate() {
                                *o.add((r + j) * groups + g) = signed_sum(F, s, x_sum);
                            }
                        } else {
                            let [s] = if F == T2 { gemv_t2::<1>(wp.add(start), row_bytes, len, xg) } else { gemv_b1::<1>(wp.add(start), row_bytes, len, xg) };
                            *o.add(r * groups + g) = signed_sum(F, s, x_sum);
                        }
                    }
                    r += if full { R } else { 1 };
                }
            }

            /// Unsigned t1.6 sums of R rows with C activation rows (`kp` apart) by the z trick
            /// (module docs): per plane A += S(z_p, x), B += S(z_{p+1}, x); the trit sum is
            /// (3A - B) / 256, exact in every lane. Without VNNI, decoded trits and one dot.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn gemv_t16<const R: usize, const C: usize>(w: *const u8, row_bytes: usize, x: *const i8, kp: usize) -> [[i32; C]; R] {
                let blocks = row_bytes / 64;
                let mut total = [[_mm512_setzero_si512(); C]; R];
                let mut start = 0;
                while start < blocks {
                    let end = (start + T16_SEGMENT_BLOCKS).min(blocks);
                    let mut a = [[_mm512_setzero_si512(); C]; R];
                    let mut b_acc = [[_mm512_setzero_si512(); C]; R];
                    for b in start..end {
                        let mut z = [_mm512_setzero_si512(); R];
                        for r in 0..R {
                            prefetch(w, R * row_bytes, r * row_bytes + b * 64);
                            z[r] = load(w.add(r * row_bytes + b * 64));
                        }
                        for p in 0..5 {
                            let xs = loads::<C>(x.add(b * 320 + 64 * p) as *const u8, kp);
                            for r in 0..R {
                                if $vnni {
                                    for c in 0..C {
                                        a[r][c] = $dot(a[r][c], z[r], xs[c]);
                                    }
                                    z[r] = times3(z[r]);
                                    for c in 0..C {
                                        b_acc[r][c] = $dot(b_acc[r][c], z[r], xs[c]);
                                    }
                                } else {
                                    let (t, next) = t16_trit(z[r]);
                                    for c in 0..C {
                                        a[r][c] = $dot(a[r][c], t, xs[c]);
                                    }
                                    z[r] = next;
                                }
                            }
                        }
                    }
                    for r in 0..R {
                        for c in 0..C {
                            let segment = if $vnni {
                                let three_a = _mm512_add_epi32(_mm512_add_epi32(a[r][c], a[r][c]), a[r][c]);
                                _mm512_srai_epi32::<8>(_mm512_sub_epi32(three_a, b_acc[r][c]))
                            } else {
                                a[r][c]
                            };
                            total[r][c] = _mm512_add_epi32(total[r][c], segment);
                        }
                    }
                    start = end;
                }
                let mut sums = [[0i32; C]; R];
                if C == 1 {
                    let mut by_row = [_mm512_setzero_si512(); R];
                    for r in 0..R {
                        by_row[r] = total[r][0];
                    }
                    let by_row = hsum::<R>(&by_row);
                    for r in 0..R {
                        sums[r][0] = by_row[r];
                    }
                } else {
                    for r in 0..R {
                        sums[r] = hsum::<C>(&total[r]);
                    }
                }
                sums
            }

            /// t2 with m = C (2 to 4) activation rows (`gemv_t2_cols`) and t1.6 with 1 to 3
            /// (the z trick, `gemv_t16`): the GEMV's tiles with every row's dots, R rows at a time.
            #[target_feature(enable = $features)]
            unsafe fn gemm_few<const F: u8, const R: usize, const C: usize>(
                w: &[u8],
                n_rows: usize,
                row_bytes: usize,
                x: &[i8],
                x_sums: &[i32],
                kp: usize,
                out: &mut [i32],
            ) {
                #[inline(always)]
                unsafe fn tile_sums<const F: u8, const R: usize, const C: usize>(w: *const u8, row_bytes: usize, x: *const i8, kp: usize) -> [[i32; C]; R] {
                    if F == T2 {
                        gemv_t2_cols::<R, C>(w, row_bytes, row_bytes, x, kp)
                    } else {
                        gemv_t16::<R, C>(w, row_bytes, x, kp)
                    }
                }
                let mut r = 0;
                while r < n_rows {
                    let wp = w.as_ptr().add(r * row_bytes);
                    if r + R <= n_rows {
                        let sums = tile_sums::<F, R, C>(wp, row_bytes, x.as_ptr(), kp);
                        for j in 0..R {
                            for c in 0..C {
                                out[(r + j) * C + c] = signed_sum(F, sums[j][c], x_sums[c]);
                            }
                        }
                        r += R;
                    } else {
                        let [sums] = tile_sums::<F, 1, C>(wp, row_bytes, x.as_ptr(), kp);
                        for c in 0..C {
                            out[r * C + c] = signed_sum(F, sums[c], x_sums[c]);
                        }
                        r += 1;
                    }
                }
            }

            /// Unsigned sums of R packed t2 / b1 rows with C activation rows; each plane is
            /// decoded once in registers for all C rows.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn tile_packed<const F: u8, const R: usize, const C: usize>(w: *const u8, row_bytes: usize, x: *const i8, kp: usize) -> [[i32; C]; R] {
                let mut acc = [[_mm512_setzero_si512(); C]; R];
                for b in 0..row_bytes / 64 {
                    let v = loads::<R>(w.add(b * 64), row_bytes);
                    // Planes in groups of four (b1's second group shifted by 4 once) keep the
                    // loop small enough for LLVM to unroll it into immediate shifts.
                    for g in 0..planes(F) / 4 {
                        let mut src = v;
                        if g == 1 {
                            for r in 0..R {
                                src[r] = _mm512_srli_epi16::<4>(v[r]);
                            }
                        }
                        for q in 0..4 {
                            let p = 4 * g + q;
                            let xs = loads::<C>(x.add(b * block_weights(F) + 64 * p) as *const u8, kp);
                            for r in 0..R {
                                let u = decode_plane::<F>(src[r], q);
                                for c in 0..C {
                                    acc[r][c] = $dot(acc[r][c], u, xs[c]);
                                }
                            }
                        }
                    }
                }
                let mut sums = [[0i32; C]; R];
                for r in 0..R {
                    sums[r] = hsum::<C>(&acc[r]);
                }
                sums
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn packed_tile<const F: u8, const R: usize, const C: usize>(
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
                let sums = tile_packed::<F, R, C>(w.as_ptr().add(r0 * row_bytes), row_bytes, x.as_ptr().add(i0 * kp), kp);
                for r in 0..R {
                    for c in 0..C {
                        out[(r0 + r) * m + i0 + c] = signed_sum(F, sums[r][c], x_sums[i0 + c]);
                    }
                }
            }

            /// Every activation row against the R packed rows at r0.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn packed_rows<const F: u8, const R: usize>(
                w: &[u8],
                row_bytes: usize,
                x: &[i8],
                x_sums: &[i32],
                m: usize,
                kp: usize,
                out: &mut [i32],
                r0: usize,
            ) {
                let mut i = 0;
                while i + PACKED_COLS <= m {
                    packed_tile::<F, R, PACKED_COLS>(w, row_bytes, x, x_sums, m, kp, out, r0, i);
                    i += PACKED_COLS;
                }
                match m - i {
                    0 => {}
                    1 => packed_tile::<F, R, 1>(w, row_bytes, x, x_sums, m, kp, out, r0, i),
                    2 => packed_tile::<F, R, 2>(w, row_bytes, x, x_sums, m, kp, out, r0, i),
                    3 => packed_tile::<F, R, 3>(w, row_bytes, x, x_sums, m, kp, out, r0, i),
                    _ => packed_tile::<F, R, 4>(w, row_bytes, x, x_sums, m, kp, out, r0, i),
                }
            }

            /// t2 / b1 GEMM straight from the packed rows.
            #[target_feature(enable = $features)]
            unsafe fn gemm_packed<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
                let mut r = 0;
                while r + PACKED_ROWS <= n_rows {
                    packed_rows::<F, PACKED_ROWS>(w, row_bytes, x, x_sums, m, kp, out, r);
                    r += PACKED_ROWS;
                }
                while r < n_rows {
                    packed_rows::<F, 1>(w, row_bytes, x, x_sums, m, kp, out, r);
                    r += 1;
                }
            }

            /// Unsigned sums of R decoded rows (u8 codes, `stride` apart) with C activation
            /// rows (`kp` apart) over `len` values: R + C loads per R x C dots.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn tile_decoded<const R: usize, const C: usize>(codes: *const u8, stride: usize, x: *const i8, kp: usize, len: usize) -> [[i32; C]; R] {
                let mut acc = [[_mm512_setzero_si512(); C]; R];
                for k in (0..len).step_by(64) {
                    let u = loads::<R>(codes.add(k), stride);
                    for c in 0..C {
                        let xv = load(x.add(c * kp + k));
                        for r in 0..R {
                            acc[r][c] = $dot(acc[r][c], u[r], xv);
                        }
                    }
                }
                let mut sums = [[0i32; C]; R];
                for r in 0..R {
                    sums[r] = hsum::<C>(&acc[r]);
                }
                sums
            }

            /// Adds the tile's unsigned sums (rows r0.., activation rows i0.., the K-chunk at
            /// k0 of `len` values) into `out`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn decoded_tile<const R: usize, const C: usize>(
                codes: &[u8],
                stride: usize,
                x: &[i8],
                m: usize,
                kp: usize,
                k0: usize,
                len: usize,
                out: &mut [i32],
                r0: usize,
                i0: usize,
            ) {
                let sums = tile_decoded::<R, C>(codes.as_ptr(), stride, x.as_ptr().add(i0 * kp + k0), kp, len);
                for r in 0..R {
                    for c in 0..C {
                        out[(r0 + r) * m + i0 + c] += sums[r][c];
                    }
                }
            }

            /// Every activation row against the R decoded rows (one K-chunk) at r0.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn decoded_rows<const R: usize>(
                codes: &[u8],
                stride: usize,
                x: &[i8],
                m: usize,
                kp: usize,
                k0: usize,
                len: usize,
                out: &mut [i32],
                r0: usize,
            ) {
                let mut i = 0;
                while i + DECODED_COLS <= m {
                    decoded_tile::<R, DECODED_COLS>(codes, stride, x, m, kp, k0, len, out, r0, i);
                    i += DECODED_COLS;
                }
                match m - i {
                    0 => {}
                    1 => decoded_tile::<R, 1>(codes, stride, x, m, kp, k0, len, out, r0, i),
                    2 => decoded_tile::<R, 2>(codes, stride, x, m, kp, k0, len, out, r0, i),
                    3 => decoded_tile::<R, 3>(codes, stride, x, m, kp, k0, len, out, r0, i),
                    _ => decoded_tile::<R, 4>(codes, stride, x, m, kp, k0, len, out, r0, i),
                }
            }

            /// GEMM over decoded codes (t1.6): for each K-chunk, decode DECODED_ROWS rows once
            /// and run every activation row against them, adding unsigned sums into `out`.
            #[target_feature(enable = $features)]
            unsafe fn gemm_decoded<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
                let blocks = row_bytes / 64;
                let chunk_blocks = blocks.div_ceil((blocks * block_weights(F)).div_ceil(DECODED_CHUNK_WEIGHTS));
                let stride = chunk_blocks * block_weights(F);
                let mut codes = vec![0u8; DECODED_ROWS * stride];
                out[..n_rows * m].fill(0);
                let mut b0 = 0;
                while b0 < blocks {
                    let nb = chunk_blocks.min(blocks - b0);
                    let (k0, len) = (b0 * block_weights(F), nb * block_weights(F));
                    let mut r = 0;
                    while r < n_rows {
                        let rows = (n_rows - r).min(DECODED_ROWS);
                        for j in 0..rows {
                            decode_row::<F>(w.as_ptr().add((r + j) * row_bytes + b0 * 64), nb * 64, codes.as_mut_ptr().add(j * stride));
                        }
                        if rows == DECODED_ROWS {
                            decoded_rows::<DECODED_ROWS>(&codes, stride, x, m, kp, k0, len, out, r);
                        } else {
                            for j in 0..rows {
                                decoded_rows::<1>(&codes[j * stride..], stride, x, m, kp, k0, len, out, r + j);
                            }
                        }
                        r += rows;
                    }
                    b0 += nb;
                }
                for r in 0..n_rows {
                    for i in 0..m {
                        out[r * m + i] = signed_sum(F, out[r * m + i], x_sums[i]);
                    }
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn gemm<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
                match (F, m) {
                    (T2, 1) => gemv::<F, GEMV_ROWS_T2>(w, n_rows, row_bytes, x, x_sums[0], out),
                    (T2, 2) => gemm_few::<T2, 4, 2>(w, n_rows, row_bytes, x, x_sums, kp, out),
                    (T2, 3) => gemm_few::<T2, 2, 3>(w, n_rows, row_bytes, x, x_sums, kp, out),
                    (T2, 4) => gemm_few::<T2, 2, 4>(w, n_rows, row_bytes, x, x_sums, kp, out),
                    (B1, 1) => gemv::<F, GEMV_ROWS_B1>(w, n_rows, row_bytes, x, x_sums[0], out),
                    (T16, 1) => gemm_few::<T16, GEMV_ROWS_T16, 1>(w, n_rows, row_bytes, x, x_sums, kp, out),
                    (T16, 2) => gemm_few::<T16, 4, 2>(w, n_rows, row_bytes, x, x_sums, kp, out),
                    (T16, 3) => gemm_few::<T16, 2, 3>(w, n_rows, row_bytes, x, x_sums, kp, out),
                    (T16, _) => gemm_decoded::<F>(w, n_rows, row_bytes, x, x_sums, m, kp, out),
                    _ => gemm_packed::<F>(w, n_rows, row_bytes, x, x_sums, m, kp, out),
                }
            }

            pub unsafe fn $t2(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
                gemm::<T2>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
            }
            pub unsafe fn $t16(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
                gemm::<T16>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
            }
            pub unsafe fn $b1(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
                gemm::<B1>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
            }
            pub unsafe fn $grouped_t2(w: &[u8], n_rows: usize, row_bytes: usize, group_bytes: usize, x: &[i8], group_sums: &[i32], out: &mut [i32]) {
                gemv_grouped::<T2, GEMV_ROWS_T2>(w, n_rows, row_bytes, group_bytes, x, group_sums, out)
            }
            pub unsafe fn $grouped_b1(w: &[u8], n_rows: usize, row_bytes: usize, group_bytes: usize, x: &[i8], group_sums: &[i32], out: &mut [i32]) {
                gemv_grouped::<B1, GEMV_ROWS_B1>(w, n_rows, row_bytes, group_bytes, x, group_sums, out)
            }
        }
    };
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_vnni(acc: __m512i, codes: __m512i, x: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(acc, codes, x)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn dot_bw(acc: __m512i, codes: __m512i, x: __m512i) -> __m512i {
    // Every `codes` reaching here is at most 12 (t2's masked planes: 0x0C; b1's: 8; decoded
    // codes: 3), so the pairwise i16 sums (<= 2 * 12 * 128) never saturate.
    _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(codes, x), _mm512_set1_epi16(1)))
}

avx512_kernels!(
    vnni,
    "avx512f,avx512bw,avx512vnni",
    true,
    dot_vnni,
    gemm_t2_i8_avx512vnni,
    gemm_t16_i8_avx512vnni,
    gemm_b1_i8_avx512vnni,
    gemv_grouped_t2_i8_avx512vnni,
    gemv_grouped_b1_i8_avx512vnni
);
avx512_kernels!(
    bw,
    "avx512f,avx512bw",
    false,
    dot_bw,
    gemm_t2_i8_avx512,
    gemm_t16_i8_avx512,
    gemm_b1_i8_avx512,
    gemv_grouped_t2_i8_avx512,
    gemv_grouped_b1_i8_avx512
);

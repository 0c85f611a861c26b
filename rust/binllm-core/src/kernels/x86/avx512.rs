//! AVX-512 kernels, with VNNI (`vpdpbusd`) and without (`vpmaddubsw` + `vpmaddwd`).
//! Tiles: GEMV runs 8 weight rows at once (8 independent accumulators hide the dot latency);
//! GEMM runs 4 weight rows x 4 activation rows, so each decoded plane feeds 4 dot products
//! and each activation load feeds 4.

use super::{block_weights, planes, signed_sum, B1, POW3, T16, T2};
use crate::formats::WeightFormat;
use crate::kernels::GemmKernel;
use core::arch::x86_64::*;

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

macro_rules! avx512_kernels {
    ($module:ident, $features:literal, $dot:ident, $t2:ident, $t16:ident, $b1:ident) => {
        mod $module {
            use super::*;

            /// Plane `p` of a 64-byte block as unsigned codes, one per byte.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn decode<const F: u8>(v: __m512i, p: usize) -> __m512i {
                match F {
                    T2 => _mm512_and_si512(_mm512_srl_epi16(v, _mm_cvtsi32_si128(2 * p as i32)), _mm512_set1_epi8(3)),
                    B1 => _mm512_and_si512(_mm512_srl_epi16(v, _mm_cvtsi32_si128(p as i32)), _mm512_set1_epi8(1)),
                    _ => {
                        // Trit p of byte y is ((y * 3^p) mod 256) * 3 >> 8. Each byte is moved to
                        // the high half of its own 16-bit lane so the multiplies cannot carry
                        // between bytes; mulhi by 3 then leaves the trit in the low half.
                        let c = _mm512_set1_epi16(POW3[p]);
                        let three = _mm512_set1_epi16(3);
                        let high = _mm512_and_si512(v, _mm512_set1_epi16(0xFF00u16 as i16));
                        let low = _mm512_slli_epi16::<8>(v);
                        let t_high = _mm512_mulhi_epu16(_mm512_mullo_epi16(high, c), three);
                        let t_low = _mm512_mulhi_epu16(_mm512_mullo_epi16(low, c), three);
                        _mm512_or_si512(t_low, _mm512_slli_epi16::<8>(t_high))
                    }
                }
            }

            /// Unsigned sums of R weight rows (from `w`, `row_bytes` apart) with C activation
            /// rows (from `x`, `kp` apart).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn tile<const R: usize, const C: usize, const F: u8>(
                w: *const u8,
                row_bytes: usize,
                x: *const i8,
                kp: usize,
            ) -> [[i32; C]; R] {
                let mut acc = [[_mm512_setzero_si512(); C]; R];
                for b in 0..row_bytes / 64 {
                    let mut v = [_mm512_setzero_si512(); R];
                    for r in 0..R {
                        v[r] = _mm512_loadu_si512(w.add(r * row_bytes + b * 64) as *const _);
                    }
                    for p in 0..planes(F) {
                        let mut codes = [_mm512_setzero_si512(); R];
                        for r in 0..R {
                            codes[r] = decode::<F>(v[r], p);
                        }
                        for c in 0..C {
                            let xv = _mm512_loadu_si512(x.add(c * kp + b * block_weights(F) + 64 * p) as *const _);
                            for r in 0..R {
                                acc[r][c] = $dot(acc[r][c], codes[r], xv);
                            }
                        }
                    }
                }
                let mut sums = [[0i32; C]; R];
                for r in 0..R {
                    for c in 0..C {
                        sums[r][c] = _mm512_reduce_add_epi32(acc[r][c]);
                    }
                }
                sums
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn run_tile<const R: usize, const C: usize, const F: u8>(
                w: &[u8], row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32], r0: usize, i0: usize,
            ) {
                let sums = tile::<R, C, F>(w.as_ptr().add(r0 * row_bytes), row_bytes, x.as_ptr().add(i0 * kp), kp);
                for r in 0..R {
                    for c in 0..C {
                        out[(r0 + r) * m + i0 + c] = signed_sum(F, sums[r][c], x_sums[i0 + c]);
                    }
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn gemm<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
                let mut r = 0;
                if m == 1 {
                    while r + 8 <= n_rows {
                        run_tile::<8, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, 0);
                        r += 8;
                    }
                    while r < n_rows {
                        run_tile::<1, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, 0);
                        r += 1;
                    }
                    return;
                }
                while r < n_rows {
                    let four_rows = r + 4 <= n_rows;
                    let mut i = 0;
                    while i + 4 <= m {
                        if four_rows {
                            run_tile::<4, 4, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
                        } else {
                            run_tile::<1, 4, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
                        }
                        i += 4;
                    }
                    while i < m {
                        if four_rows {
                            run_tile::<4, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
                        } else {
                            run_tile::<1, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
                        }
                        i += 1;
                    }
                    r += if four_rows { 4 } else { 1 };
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
    // codes <= 2, so the pairwise i16 sums (<= 2 * 2 * 128) never saturate.
    _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(codes, x), _mm512_set1_epi16(1)))
}

avx512_kernels!(vnni, "avx512f,avx512bw,avx512vnni", dot_vnni, gemm_t2_i8_avx512vnni, gemm_t16_i8_avx512vnni, gemm_b1_i8_avx512vnni);
avx512_kernels!(bw, "avx512f,avx512bw", dot_bw, gemm_t2_i8_avx512, gemm_t16_i8_avx512, gemm_b1_i8_avx512);

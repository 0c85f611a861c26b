//! AVX2 kernels (`vpmaddubsw` + `vpmaddwd`). A 64-byte block is read as two 32-byte halves;
//! half h of plane p meets activations `64p + 32h ..`. Tiles: GEMV 4 weight rows, GEMM 2 weight
//! rows x 4 activation rows (16 ymm registers bound the tile).

use super::{block_weights, planes, signed_sum, B1, POW3, T16, T2};
use crate::formats::WeightFormat;
use crate::kernels::GemmKernel;
use core::arch::x86_64::*;

pub fn kernel(format: WeightFormat) -> GemmKernel {
    match format {
        WeightFormat::Ternary2 => gemm_t2_i8_avx2,
        WeightFormat::Ternary1_6 => gemm_t16_i8_avx2,
        WeightFormat::Binary1 => gemm_b1_i8_avx2,
    }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn decode<const F: u8>(v: __m256i, p: usize) -> __m256i {
    match F {
        T2 => _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * p as i32)), _mm256_set1_epi8(3)),
        B1 => _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(p as i32)), _mm256_set1_epi8(1)),
        _ => {
            // See avx512.rs: each byte multiplied in the high half of its own 16-bit lane.
            let c = _mm256_set1_epi16(POW3[p]);
            let three = _mm256_set1_epi16(3);
            let high = _mm256_and_si256(v, _mm256_set1_epi16(0xFF00u16 as i16));
            let low = _mm256_slli_epi16::<8>(v);
            let t_high = _mm256_mulhi_epu16(_mm256_mullo_epi16(high, c), three);
            let t_low = _mm256_mulhi_epu16(_mm256_mullo_epi16(low, c), three);
            _mm256_or_si256(t_low, _mm256_slli_epi16::<8>(t_high))
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tile<const R: usize, const C: usize, const F: u8>(w: *const u8, row_bytes: usize, x: *const i8, kp: usize) -> [[i32; C]; R] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); C]; R];
    for b in 0..row_bytes / 64 {
        for h in 0..2 {
            let mut v = [_mm256_setzero_si256(); R];
            for r in 0..R {
                v[r] = _mm256_loadu_si256(w.add(r * row_bytes + b * 64 + 32 * h) as *const _);
            }
            // i16 partial sums over the planes of this half: at most planes * 2 * 2 * 128 = 4096.
            let mut part = [[_mm256_setzero_si256(); C]; R];
            for p in 0..planes(F) {
                let mut codes = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    codes[r] = decode::<F>(v[r], p);
                }
                for c in 0..C {
                    let xv = _mm256_loadu_si256(x.add(c * kp + b * block_weights(F) + 64 * p + 32 * h) as *const _);
                    for r in 0..R {
                        part[r][c] = _mm256_add_epi16(part[r][c], _mm256_maddubs_epi16(codes[r], xv));
                    }
                }
            }
            for r in 0..R {
                for c in 0..C {
                    acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(part[r][c], ones));
                }
            }
        }
    }
    let mut sums = [[0i32; C]; R];
    for r in 0..R {
        for c in 0..C {
            sums[r][c] = hsum(acc[r][c]);
        }
    }
    sums
}

#[inline]
#[target_feature(enable = "avx2")]
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

#[target_feature(enable = "avx2")]
unsafe fn gemm<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    let mut r = 0;
    if m == 1 {
        while r + 4 <= n_rows {
            run_tile::<4, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, 0);
            r += 4;
        }
        while r < n_rows {
            run_tile::<1, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, 0);
            r += 1;
        }
        return;
    }
    while r < n_rows {
        let two_rows = r + 2 <= n_rows;
        let mut i = 0;
        while i + 4 <= m {
            if two_rows {
                run_tile::<2, 4, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
            } else {
                run_tile::<1, 4, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
            }
            i += 4;
        }
        while i < m {
            if two_rows {
                run_tile::<2, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
            } else {
                run_tile::<1, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
            }
            i += 1;
        }
        r += if two_rows { 2 } else { 1 };
    }
}

pub unsafe fn gemm_t2_i8_avx2(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    gemm::<T2>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
}
pub unsafe fn gemm_t16_i8_avx2(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    gemm::<T16>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
}
pub unsafe fn gemm_b1_i8_avx2(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    gemm::<B1>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
}

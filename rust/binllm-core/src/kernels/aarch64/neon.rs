//! NEON kernels (the AArch64 baseline: no dotprod or i8mm needed). A 64-byte block is read as
//! four 16-byte quarters; quarter q of plane p meets activations `64p + 16q ..` of the block
//! (see `formats`).
//!
//! Each plane is decoded to small int8 values `d` and multiplied into i16 lanes with
//! `smlal`/`smlal2` (`vmlal_s8`, `vmlal_high_s8`); a block's i16 sums are widened once with
//! `sadalp` (`vpadalq_s16`). The signed sum is recovered from `D = sum(d * x)` and the
//! activation sum `S`:
//!
//! | format | d                                        | signed sum  |
//! |--------|------------------------------------------|-------------|
//! | t2     | code + 1 (2-bit field)                   | `D - S`     |
//! | t1.6   | -(code + 1), from two byte compares      | `-D - S`    |
//! | b1     | bit (1 for +1)                           | `2D - S`    |
//!
//! Tiles: GEMV 4 weight rows; GEMM 2 weight rows x 4 activation rows.

#![allow(clippy::needless_range_loop)] // tiles index several arrays by row and column

use crate::formats::WeightFormat;
use crate::kernels::GemmKernel;
use core::arch::aarch64::*;

use crate::kernels::{planes, B1, T16, T2};

pub fn kernel(format: WeightFormat) -> GemmKernel {
    match format {
        WeightFormat::Ternary2 => gemm_t2_i8_neon,
        WeightFormat::Ternary1_6 => gemm_t16_i8_neon,
        WeightFormat::Binary1 => gemm_b1_i8_neon,
    }
}

/// Decodes the current plane of `state` (initially the packed bytes) into `d` (see the module
/// table) and advances `state` to the next plane.
///
/// Safety: NEON, which every AArch64 target has.
#[inline(always)]
unsafe fn decode_next<const F: u8>(state: &mut uint8x16_t) -> int8x16_t {
    let y = *state;
    match F {
        T2 => {
            *state = vshrq_n_u8::<2>(y);
            vreinterpretq_s8_u8(vandq_u8(y, vdupq_n_u8(3)))
        }
        B1 => {
            *state = vshrq_n_u8::<1>(y);
            vreinterpretq_s8_u8(vandq_u8(y, vdupq_n_u8(1)))
        }
        _ => {
            // `state` holds (byte * 3^p) mod 256; its trit is (state * 3) >> 8, which is 1 from
            // 86 up and 2 from 171 up. Each compare is -1 where true, so their sum is -trit.
            *state = vmulq_u8(y, vdupq_n_u8(3));
            vreinterpretq_s8_u8(vaddq_u8(vcgtq_u8(y, vdupq_n_u8(85)), vcgtq_u8(y, vdupq_n_u8(170))))
        }
    }
}

/// The signed sum from `D = sum(d * x)` and the activation sum.
#[inline(always)]
fn signed_sum<const F: u8>(d_sum: i32, x_sum: i32) -> i32 {
    match F {
        T2 => d_sum - x_sum,
        T16 => -d_sum - x_sum,
        _ => 2 * d_sum - x_sum,
    }
}

/// `D` sums of R weight rows (from `w`, `row_bytes` apart) with C activation rows (from `x`,
/// `kp` apart).
///
/// Safety: `w` must hold R rows of `row_bytes` and `x` C rows of `kp = row_bytes / 64 *
/// 64 * planes(F)` bytes.
#[inline(always)]
unsafe fn tile<const R: usize, const C: usize, const F: u8>(w: *const u8, row_bytes: usize, x: *const i8, kp: usize) -> [[i32; C]; R] {
    let block_weights = 64 * planes(F);
    let mut acc = [[vdupq_n_s32(0); C]; R];
    for b in 0..row_bytes / 64 {
        // i16 sums over the block: each lane gets 4 quarters x planes x 2 products of at most
        // 256 in magnitude, at most 4 * 5 * 2 * 256 = 10240 (t1.6).
        let mut part = [[vdupq_n_s16(0); C]; R];
        for q in 0..4 {
            let mut state = [vdupq_n_u8(0); R];
            for r in 0..R {
                state[r] = vld1q_u8(w.add(r * row_bytes + b * 64 + 16 * q));
            }
            for p in 0..planes(F) {
                let mut d = [vdupq_n_s8(0); R];
                for r in 0..R {
                    d[r] = decode_next::<F>(&mut state[r]);
                }
                for c in 0..C {
                    let xv = vld1q_s8(x.add(c * kp + b * block_weights + 64 * p + 16 * q));
                    for r in 0..R {
                        part[r][c] = vmlal_s8(part[r][c], vget_low_s8(d[r]), vget_low_s8(xv));
                        part[r][c] = vmlal_high_s8(part[r][c], d[r], xv);
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                acc[r][c] = vpadalq_s16(acc[r][c], part[r][c]);
            }
        }
    }
    let mut sums = [[0i32; C]; R];
    for r in 0..R {
        for c in 0..C {
            sums[r][c] = vaddvq_s32(acc[r][c]);
        }
    }
    sums
}

/// Weight rows per GEMV tile (NEON has 32 vector registers).
const GEMV_ROWS: usize = 4;

kernels_128!("NEON", gemm_t2_i8_neon, gemm_t16_i8_neon, gemm_b1_i8_neon);

#[cfg(test)]
mod tests {
    //! The shared backend matrix (`kernels::tests`) covers random cases; these pin that NEON is
    //! really in that matrix here, and hit the i16 partial sums' worst case: every code at its
    //! largest `d` against activations of -128 or 127.
    use crate::formats::FORMATS;
    use crate::kernels::{available_backends, Backend, QuantizedActivations};
    use crate::{PackedMatrix, ScaleKind};

    #[test]
    fn neon_is_an_available_backend() {
        assert!(available_backends().contains(&Backend::Neon));
    }

    #[test]
    fn extreme_codes_and_activations_match_scalar() {
        let (n, k, m) = (5, 1537, 3);
        for spec in &FORMATS {
            for code in [-1i8, 1] {
                for value in [-128i8, 127] {
                    let w = PackedMatrix::pack(spec.format, &vec![code; n * k], n, k, ScaleKind::PerTensor(1.0)).unwrap();
                    let kp = w.padded_k();
                    let mut q = vec![0i8; m * kp];
                    for row in q.chunks_exact_mut(kp) {
                        row[..k].fill(value);
                    }
                    let sums = vec![value as i32 * k as i32; m];
                    let act = QuantizedActivations { q, scales: vec![1.0; m], sums, m, padded_k: kp };
                    let neon = w.integer_sums(Backend::Neon, &act).unwrap();
                    assert_eq!(neon, w.integer_sums(Backend::Scalar, &act).unwrap(), "{} code {code} x {value}", spec.name);
                    assert!(neon.iter().all(|&s| s == code as i32 * value as i32 * k as i32));
                }
            }
        }
    }
}

//! WebAssembly SIMD128 kernels. A 64-byte block is read as four 16-byte quarters; quarter q of
//! plane p meets activations `64p + 16q ..` of the block (see `formats`).
//!
//! SIMD128 has no `u8 x i8` multiply-add, so each plane is decoded to small int8 values `d`
//! and multiplied with `i16x8.extmul_{low,high}_i8x16`. The products of a whole block are summed
//! in i16 lanes, then widened once per block with `i32x4.extadd_pairwise_i16x8`. The signed sum
//! is recovered from `D = sum(d * x)` and the activation sum `S`:
//!
//! | format | d                                        | signed sum  |
//! |--------|------------------------------------------|-------------|
//! | t2     | code + 1 (2-bit field)                   | `D - S`     |
//! | t1.6   | -(code + 1), from two byte compares      | `-D - S`    |
//! | b1     | bit (1 for +1)                           | `2D - S`    |
//!
//! Tiles: GEMV 2 weight rows (4 in the relaxed build, whose t2 GEMV runs them as pairs); GEMM 2
//! weight rows x 4 activation rows.
//!
//! Built with relaxed SIMD (`-C target-feature=+relaxed-simd`, the second module
//! `scripts/build-wasm.sh` writes), t2 and b1 use `i32x4.relaxed_dot_i8x16_i7x16_add_s`: one
//! instruction for four products and their sum where SIMD128 needs an extmul pair, an add and
//! a widening. Its result is implementation-defined only where the second operand has its top
//! bit set; t2's and b1's `d` is 0..2, so every engine gives the exact sum. t1.6's `d` is
//! negative and stays on the SIMD128 path.

#![allow(clippy::needless_range_loop)] // tiles index several arrays by row and column

use crate::formats::WeightFormat;
use crate::kernels::GemmKernel;
use core::arch::wasm32::*;

use crate::kernels::{planes, B1, T16, T2};

pub fn kernel(format: WeightFormat) -> GemmKernel {
    match format {
        WeightFormat::Ternary2 => gemm_t2_i8_simd128,
        WeightFormat::Ternary1_6 => gemm_t16_i8_simd128,
        WeightFormat::Binary1 => gemm_b1_i8_simd128,
    }
}

/// The decoder state of 16 packed bytes: the bytes themselves, or for t1.6 the bytes ^ 0x80.
#[inline(always)]
fn load_state<const F: u8>(bytes: v128) -> v128 {
    match F {
        T16 => v128_xor(bytes, u8x16_splat(0x80)),
        _ => bytes,
    }
}

/// Decodes the current plane of `state` (from `load_state`) into `d` (see the module
/// table) and advances `state` to the next plane.
#[inline(always)]
fn decode_next<const F: u8>(state: &mut v128) -> v128 {
    let y = *state;
    // t2 and b1 shift 16-bit lanes: each byte's low bits, all that the AND keeps, still come
    // from that byte (for the 8 bits it has), and engines on x86 run a 16-bit shift as one
    // instruction where an 8-bit one takes a shift, a mask and an AND.
    match F {
        T2 => {
            *state = u16x8_shr(y, 2);
            v128_and(y, u8x16_splat(3))
        }
        B1 => {
            *state = u16x8_shr(y, 1);
            v128_and(y, u8x16_splat(1))
        }
        _ => {
            // With u = (byte * 3^p) mod 256, the trit is (u * 3) >> 8: 1 from u = 86 up, 2 from
            // 171 up. `state` holds u ^ 0x80 (see `load_state`) so that signed byte compares
            // (native on x86 engines, unlike unsigned ones) do the job: u >= 86 is state > -43,
            // u >= 171 is state > 42. Since (u ^ 0x80) * 3 = (u * 3) ^ 0x80 mod 256, state advances by *3
            // too. Each compare is -1 where true, so their sum is -trit.
            *state = i8x16_add(i8x16_add(y, y), y);
            i8x16_add(i8x16_gt(y, i8x16_splat(-43)), i8x16_gt(y, i8x16_splat(42)))
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

#[inline(always)]
fn hsum(v: v128) -> i32 {
    let v = i32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    let v = i32x4_add(v, i32x4_shuffle::<1, 0, 3, 2>(v, v));
    i32x4_extract_lane::<0>(v)
}

/// `D` sums of R weight rows (from `w`, `row_bytes` apart) with C activation rows (from `x`,
/// `kp` apart).
///
/// Safety: `w` must hold R rows of `row_bytes` and `x` C rows of `kp = row_bytes / 64 *
/// 64 * planes(F)` bytes.
#[inline(always)]
unsafe fn tile<const R: usize, const C: usize, const F: u8>(w: *const u8, row_bytes: usize, x: *const i8, kp: usize) -> [[i32; C]; R] {
    #[cfg(target_feature = "relaxed-simd")]
    if F == T2 && C == 1 {
        return gemv_t2_relaxed_tile::<R, C>(w, row_bytes, x);
    }
    let relaxed = RELAXED_DOT && F != T16;
    let block_weights = 64 * planes(F);
    let mut acc = [[i32x4_splat(0); C]; R];
    for b in 0..row_bytes / 64 {
        // i16 sums over the block: each lane gets 4 quarters x planes x 2 products of at most
        // 256 in magnitude, at most 4 * 5 * 2 * 256 = 10240 (t1.6).
        let mut part = [[i16x8_splat(0); C]; R];
        for q in 0..4 {
            let mut state = [i8x16_splat(0); R];
            for r in 0..R {
                state[r] = load_state::<F>(v128_load(w.add(r * row_bytes + b * 64 + 16 * q) as *const v128));
            }
            for p in 0..planes(F) {
                let mut d = [i8x16_splat(0); R];
                for r in 0..R {
                    d[r] = decode_next::<F>(&mut state[r]);
                }
                for c in 0..C {
                    let xv = v128_load(x.add(c * kp + b * block_weights + 64 * p + 16 * q) as *const v128);
                    for r in 0..R {
                        if relaxed {
                            acc[r][c] = dot_add(xv, d[r], acc[r][c]);
                        } else {
                            let products = i16x8_add(i16x8_extmul_low_i8x16(d[r], xv), i16x8_extmul_high_i8x16(d[r], xv));
                            part[r][c] = i16x8_add(part[r][c], products);
                        }
                    }
                }
            }
        }
        if !relaxed {
            for r in 0..R {
                for c in 0..C {
                    acc[r][c] = i32x4_add(acc[r][c], i32x4_extadd_pairwise_i16x8(part[r][c]));
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

/// Whether this build has relaxed SIMD's dot product (`dot_add`).
const RELAXED_DOT: bool = cfg!(target_feature = "relaxed-simd");

/// `acc + (4-product sums of a x b)`, b's values in 0..63: relaxed SIMD's dot product, exact on
/// every engine for such b (see the module docs). Only called where `RELAXED_DOT`.
#[inline(always)]
fn dot_add(a: v128, b: v128, acc: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    return i32x4_relaxed_dot_i8x16_i7x16_add(a, b, acc);
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        let _ = (a, b, acc);
        unreachable!("relaxed SIMD dot product in a build without relaxed SIMD")
    }
}

/// The t2 GEMV tile of the relaxed-SIMD build: two rows at a time, then a single one. Each
/// row keeps four accumulators (one per plane), so no chain of dependent dot products is
/// longer than a block's four quarters; with two rows, the eight accumulators, four
/// activation vectors and masks fit x86's sixteen vector registers. Measured in Chromium
/// on a decode step of a 1536-wide model (bench_wasm's "large" shape): 24% faster than four
/// rows with three accumulators each, which spilled; one, three or four rows with four
/// accumulators are 7-33% slower than two.
#[cfg(target_feature = "relaxed-simd")]
#[inline(always)]
unsafe fn gemv_t2_relaxed_tile<const R: usize, const C: usize>(w: *const u8, row_bytes: usize, x: *const i8) -> [[i32; C]; R] {
    let mut sums = [[0i32; C]; R];
    let mut r = 0;
    while r + 2 <= R {
        let pair = gemv_t2_relaxed::<2>(w.add(r * row_bytes), row_bytes, x);
        sums[r][0] = pair[0];
        sums[r + 1][0] = pair[1];
        r += 2;
    }
    while r < R {
        sums[r][0] = gemv_t2_relaxed::<1>(w.add(r * row_bytes), row_bytes, x)[0];
        r += 1;
    }
    sums
}

/// `D` sums of R t2 rows with one activation row. Each 16-byte group is decoded with one
/// 16-bit shift and four masks: planes 0 and 2 as `d` (mask 0x03 of the bytes and of the
/// bytes shifted right by 4), planes 1 and 3 as `4d` (mask 0x0c of the same), all valid i7
/// operands (at most 8). The `4d` sums are divided by 4 at the end, exactly (they are
/// multiples of 4).
#[cfg(target_feature = "relaxed-simd")]
#[inline(always)]
unsafe fn gemv_t2_relaxed<const R: usize>(w: *const u8, row_bytes: usize, x: *const i8) -> [i32; R] {
    let (low, high) = (u8x16_splat(0x03), u8x16_splat(0x0c));
    let mut acc = [[i32x4_splat(0); 4]; R];
    for b in 0..row_bytes / 64 {
        for q in 0..4 {
            let xp = x.add(b * 256 + 16 * q);
            let xs = [0, 1, 2, 3].map(|p| v128_load(xp.add(64 * p) as *const v128));
            for r in 0..R {
                let y = v128_load(w.add(r * row_bytes + b * 64 + 16 * q) as *const v128);
                let h = u16x8_shr(y, 4);
                acc[r][0] = dot_add(xs[0], v128_and(y, low), acc[r][0]);
                acc[r][1] = dot_add(xs[1], v128_and(y, high), acc[r][1]);
                acc[r][2] = dot_add(xs[2], v128_and(h, low), acc[r][2]);
                acc[r][3] = dot_add(xs[3], v128_and(h, high), acc[r][3]);
            }
        }
    }
    acc.map(|[a0, a1, a2, a3]| hsum(i32x4_add(a0, a2)) + hsum(i32x4_add(a1, a3)) / 4)
}

/// Weight rows per GEMV tile. SIMD128's tile with four rows spills x86's sixteen vector
/// registers in V8: two rows measured 6% faster there. The relaxed build's t2 GEMV runs its
/// own pairs inside a four-row tile, measured 10-14% faster than two-row tiles.
const GEMV_ROWS: usize = if cfg!(target_feature = "relaxed-simd") { 4 } else { 2 };

kernels_128!("SIMD128", gemm_t2_i8_simd128, gemm_t16_i8_simd128, gemm_b1_i8_simd128);

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
//! `scripts/build-wasm.sh` writes), t2 and b1 use relaxed SIMD's i8 x i7 dot products. Their
//! results are implementation-defined only where the second operand has its top bit set; t2's
//! and b1's `d` is 0..2 (at most 8 as `4d`), so every engine gives the exact sum. t1.6's `d` is
//! negative and stays on the SIMD128 path. Which of the two dot products runs is decided once,
//! from how the engine computes them (`dot_form`):
//!
//! - `i32x4.relaxed_dot_i8x16_i7x16_add_s`, four products and their sum into i32 lanes, where
//!   the engine has a four-way dot instruction (V8: `vpdpbusd` with AVX-VNNI, `sdot` on arm64):
//!   one instruction where SIMD128 needs an extmul pair, an add and a widening;
//! - `i16x8.relaxed_dot_i8x16_i7x16_s`, pair sums in i16 lanes added up over a block and
//!   widened once per block, where the engine builds the i32 form from the pair dot (V8 on x86
//!   without AVX-VNNI: `pmaddubsw`, then `pmaddwd` by ones and an add), so that the i32 form
//!   costs several instructions per pair dot. On a Zen 3 in Chromium 156 (2026-12-07, both
//!   forms alternating in one page) the i16 form decoded 29% faster at a 729M shape and 70-86%
//!   faster at BitNet 2B4T's, and ran prompts 27% faster (729M).

#![allow(clippy::needless_range_loop)] // tiles index several arrays by row and column

use crate::formats::WeightFormat;
use crate::kernels::GemmKernel;
use core::arch::wasm32::*;
use core::sync::atomic::{AtomicU8, Ordering};

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
    // The i32 dot adds into `acc` directly; the i16 dot and SIMD128's extmul sum a block in
    // `part` first.
    let dot32 = relaxed && dot_form() == Some(DotForm::I32);
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
                        if dot32 {
                            acc[r][c] = dot_add(xv, d[r], acc[r][c]);
                        } else if relaxed {
                            part[r][c] = i16x8_add(part[r][c], dot_pairs(xv, d[r]));
                        } else {
                            let products = i16x8_add(i16x8_extmul_low_i8x16(d[r], xv), i16x8_extmul_high_i8x16(d[r], xv));
                            part[r][c] = i16x8_add(part[r][c], products);
                        }
                    }
                }
            }
        }
        if !dot32 {
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

/// Whether this build has relaxed SIMD's dot products (`dot_add`, `dot_pairs`).
const RELAXED_DOT: bool = cfg!(target_feature = "relaxed-simd");

/// Which relaxed SIMD dot product the t2 and b1 kernels use (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotForm {
    /// `i32x4.relaxed_dot_i8x16_i7x16_add_s` into i32 accumulators.
    I32,
    /// `i16x8.relaxed_dot_i8x16_i7x16_s` into i16 block sums.
    I16,
}

impl DotForm {
    pub fn name(self) -> &'static str {
        match self {
            DotForm::I32 => "i32",
            DotForm::I16 => "i16",
        }
    }
}

/// 0 until decided, then 1 + the `DotForm` in use.
static DOT_FORM: AtomicU8 = AtomicU8::new(0);

/// The dot product form this engine runs best, decided on first use: `I16` where the i32 form
/// saturates like a pair dot followed by a widening (x86's `pmaddubsw` then `pmaddwd`), which
/// shows the engine has no four-way dot instruction and builds the i32 form from the i16 one;
/// `I32` everywhere else. `None` in builds without relaxed SIMD.
pub fn dot_form() -> Option<DotForm> {
    if !RELAXED_DOT {
        return None;
    }
    Some(match DOT_FORM.load(Ordering::Relaxed) {
        1 => DotForm::I32,
        2 => DotForm::I16,
        _ => {
            let form = if i32_dot_saturates() { DotForm::I16 } else { DotForm::I32 };
            DOT_FORM.store(1 + form as u8, Ordering::Relaxed);
            form
        }
    })
}

/// Makes the kernels use `form` (`None`: decide again from the engine), so that tests and
/// benchmarks can run both on any engine; both give the same exact sums. An error in builds
/// without relaxed SIMD.
pub fn force_dot_form(form: Option<DotForm>) -> crate::error::Result<()> {
    if !RELAXED_DOT && form.is_some() {
        crate::bail!(Backend, "this build has no relaxed SIMD dot product to choose");
    }
    DOT_FORM.store(form.map_or(0, |f| 1 + f as u8), Ordering::Relaxed);
    Ok(())
}

/// Whether this engine's `i32x4.relaxed_dot_i8x16_i7x16_add_s` of 127s with 0xff bytes (255
/// read unsigned, -1 signed) gives 65534 in a lane: two pair sums of 2 x 255 x 127 = 64770,
/// each saturated to 32767 in i16 (`pmaddubsw`), then added. A four-way dot gives 129540
/// unsigned or -508 signed. `black_box` keeps the compiler from folding it.
fn i32_dot_saturates() -> bool {
    #[cfg(target_feature = "relaxed-simd")]
    {
        let a = core::hint::black_box(i8x16_splat(127));
        let b = core::hint::black_box(i8x16_splat(-1));
        i32x4_extract_lane::<0>(i32x4_relaxed_dot_i8x16_i7x16_add(a, b, i32x4_splat(0))) == 65534
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    false
}

/// Pair sums `a[2i] b[2i] + a[2i+1] b[2i+1]` in i16 lanes, b's values in 0..63 (at most 2 x
/// 128 x 63 in magnitude, no saturation): relaxed SIMD's i16 dot product, exact on every
/// engine for such b. Only called where `RELAXED_DOT`.
#[inline(always)]
fn dot_pairs(a: v128, b: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    return i16x8_relaxed_dot_i8x16_i7x16(a, b);
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        let _ = (a, b);
        unreachable!("relaxed SIMD dot product in a build without relaxed SIMD")
    }
}

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

/// The t2 GEMV tile of the relaxed-SIMD build. In the `I16` form one row at a time
/// (`gemv_t2_relaxed_i16`); in the `I32` form two rows at a time, then a single one. Each
/// row keeps four accumulators (one per plane), so no chain of dependent dot products is
/// longer than a block's four quarters; with two rows, the eight accumulators, four
/// activation vectors and masks fit x86's sixteen vector registers. Measured in Chromium
/// (on a Xeon with AVX-VNNI) on a decode step of a 1536-wide model (bench_wasm's "large" shape): 24% faster than four
/// rows with three accumulators each, which spilled; one, three or four rows with four
/// accumulators are 7-33% slower than two.
#[cfg(target_feature = "relaxed-simd")]
#[inline(always)]
unsafe fn gemv_t2_relaxed_tile<const R: usize, const C: usize>(w: *const u8, row_bytes: usize, x: *const i8) -> [[i32; C]; R] {
    let mut sums = [[0i32; C]; R];
    if dot_form() == Some(DotForm::I16) {
        for r in 0..R {
            sums[r][0] = gemv_t2_relaxed_i16(w.add(r * row_bytes), row_bytes, x);
        }
        return sums;
    }
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

/// `D` sum of one t2 row with one activation row, in the `I16` form: each 16-byte group is
/// decoded as in `gemv_t2_relaxed`, its pair sums added in i16 lanes (planes 0 and 2 in one,
/// the `4d` planes 1 and 3 in the other: a block's four groups sum at most 8 x 2 x 128 x 2 =
/// 4096 and 16384 in magnitude) and widened once per block. Measured in Chromium 156 on a
/// Zen 3 without AVX-VNNI (decode steps of a 729M-shaped model, alternating in one page,
/// 2026-12-07): one row 29% faster than the `I32` pairs, equal to one row with a single
/// accumulator (three shifts a group), and two rows at a time 4-7% slower than one.
#[cfg(target_feature = "relaxed-simd")]
#[inline(always)]
unsafe fn gemv_t2_relaxed_i16(w: *const u8, row_bytes: usize, x: *const i8) -> i32 {
    let (low, high) = (u8x16_splat(0x03), u8x16_splat(0x0c));
    let (mut acc02, mut acc13) = (i32x4_splat(0), i32x4_splat(0));
    for b in 0..row_bytes / 64 {
        let (mut part02, mut part13) = (i16x8_splat(0), i16x8_splat(0));
        for q in 0..4 {
            let xp = x.add(b * 256 + 16 * q);
            let xs = [0, 1, 2, 3].map(|p| v128_load(xp.add(64 * p) as *const v128));
            let y = v128_load(w.add(b * 64 + 16 * q) as *const v128);
            let h = u16x8_shr(y, 4);
            part02 = i16x8_add(part02, i16x8_add(dot_pairs(xs[0], v128_and(y, low)), dot_pairs(xs[2], v128_and(h, low))));
            part13 = i16x8_add(part13, i16x8_add(dot_pairs(xs[1], v128_and(y, high)), dot_pairs(xs[3], v128_and(h, high))));
        }
        acc02 = i32x4_add(acc02, i32x4_extadd_pairwise_i16x8(part02));
        acc13 = i32x4_add(acc13, i32x4_extadd_pairwise_i16x8(part13));
    }
    hsum(acc02) + hsum(acc13) / 4
}

/// Weight rows per GEMV tile. SIMD128's tile with four rows spills x86's sixteen vector
/// registers in V8: two rows measured 6% faster there. The relaxed build's t2 GEMV runs its
/// own pairs inside a four-row tile, measured 10-14% faster than two-row tiles.
const GEMV_ROWS: usize = if cfg!(target_feature = "relaxed-simd") { 4 } else { 2 };

kernels_128!("SIMD128", gemm_t2_i8_simd128, gemm_t16_i8_simd128, gemm_b1_i8_simd128);

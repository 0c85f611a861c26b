//! x86-64 kernels. Both files share the plane layout of `formats`: a block's byte j holds
//! weight j + 64p of plane p, so plane p of 64 bytes meets 64 consecutive activations.
//! Codes are decoded to unsigned values (t2, t1.6: code + 1; b1: bit) and multiplied with
//! int8 activations by `u8 x i8` instructions; the signed sum is recovered as
//! `sum(u * x) - sum(x)` (ternary) or `2 * sum(u * x) - sum(x)` (binary).

pub mod avx2;
pub mod avx512;

pub(crate) const T2: u8 = 0;
pub(crate) const T16: u8 = 1;
pub(crate) const B1: u8 = 2;

pub(crate) const fn planes(f: u8) -> usize {
    match f {
        T2 => 4,
        T16 => 5,
        _ => 8,
    }
}

pub(crate) const fn block_weights(f: u8) -> usize {
    planes(f) * 64
}

pub(crate) const POW3: [i16; 5] = [1, 3, 9, 27, 81];

/// Turns the unsigned sum into the signed one.
#[inline(always)]
pub(crate) fn signed_sum(f: u8, unsigned: i32, x_sum: i32) -> i32 {
    if f == B1 {
        2 * unsigned - x_sum
    } else {
        unsigned - x_sum
    }
}

//! The reference kernels: plain loops over the format table's `dot_block`. Every SIMD backend
//! is tested bit-exact against these; keep them simple rather than fast.

use super::GemmKernel;
use crate::formats::{WeightFormat, BLOCK_BYTES};

pub fn kernel(_format: WeightFormat) -> GemmKernel {
    match _format {
        WeightFormat::Ternary2 => gemm_t2_i8_scalar,
        WeightFormat::Ternary1_6 => gemm_t16_i8_scalar,
        WeightFormat::Binary1 => gemm_b1_i8_scalar,
    }
}

fn gemm_scalar(format: WeightFormat, w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], m: usize, kp: usize, out: &mut [i32]) {
    let spec = format.spec();
    let bw = spec.block_weights;
    for r in 0..n_rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for i in 0..m {
            let xr = &x[i * kp..(i + 1) * kp];
            out[r * m + i] = row.chunks_exact(BLOCK_BYTES).enumerate().map(|(b, block)| (spec.dot_block)(block, &xr[b * bw..(b + 1) * bw])).sum();
        }
    }
}

macro_rules! scalar_kernel {
    ($name:ident, $format:expr) => {
        /// Reference kernel (see module docs). Unsafe only to share `GemmKernel`'s signature.
        ///
        /// # Safety
        /// None beyond the lengths `GemmKernel` documents, which are checked (slices panic).
        pub unsafe fn $name(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], _x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
            gemm_scalar($format, w, n_rows, row_bytes, x, m, kp, out)
        }
    };
}
scalar_kernel!(gemm_t2_i8_scalar, WeightFormat::Ternary2);
scalar_kernel!(gemm_t16_i8_scalar, WeightFormat::Ternary1_6);
scalar_kernel!(gemm_b1_i8_scalar, WeightFormat::Binary1);

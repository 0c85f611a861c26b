//! A linear layer of a model: packed 1-bit/ternary (the kernels) or float.

use crate::error::Result;
use crate::formats::PackedMatrix;
use crate::kernels::{float, Backend};

pub enum Linear {
    /// Packed codes; activations int8-quantized per token unless the model runs without
    /// activation quantization (a reference mode).
    Packed(PackedMatrix),
    /// Float weights, row-major (n x k).
    Float { w: Vec<f32>, n: usize, k: usize },
}

impl Linear {
    /// (out features, in features).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Linear::Packed(p) => p.shape(),
            Linear::Float { n, k, .. } => (*n, *k),
        }
    }

    /// Bytes of weights (and scales) held.
    pub fn nbytes(&self) -> usize {
        match self {
            Linear::Packed(p) => p.nbytes(),
            Linear::Float { w, .. } => w.len() * 4,
        }
    }

    /// Storage name for `Model::info`.
    pub fn storage(&self) -> &'static str {
        match self {
            Linear::Packed(p) => p.format().name(),
            Linear::Float { .. } => "f32",
        }
    }

    /// `y (m x n) = x (m x k) W^T`.
    pub fn forward(&self, backend: Backend, x: &[f32], m: usize, y: &mut [f32], act_quant: bool) -> Result<()> {
        match self {
            Linear::Packed(p) if act_quant => p.matmul_into(backend, x, m, y),
            Linear::Packed(p) => {
                let (n, k) = p.shape();
                float::gemm_rows(n, k, x, m, y, |r, scratch| {
                    p.decode_row_f32(r, scratch);
                    float::RowRef::Scratch(scratch)
                });
                Ok(())
            }
            Linear::Float { w, n, k } => {
                float::gemm_f32(w, *n, *k, x, m, y);
                Ok(())
            }
        }
    }
}

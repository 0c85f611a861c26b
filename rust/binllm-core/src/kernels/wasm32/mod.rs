//! WebAssembly kernels. SIMD128 is a compile-time feature of a wasm module (there is no run-time
//! detection inside one), so `simd128` exists only in builds with `-C target-feature=+simd128`;
//! other wasm32 builds run the scalar kernels.

#[cfg(target_feature = "simd128")]
pub mod simd128;

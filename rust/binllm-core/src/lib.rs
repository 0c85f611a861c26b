//! binllm-core: packed 1-bit and ternary weight formats, their SIMD kernels, model file
//! loaders and the transformer forward pass. Pure Rust: the Python (PyO3) and WebAssembly
//! layers are thin translations over this crate and hold no logic of their own.
//!
//! Data flows one way: file bytes -> `loader` -> `model` -> `kernels`.

// Kernels index several arrays with one loop variable (rows, lanes, planes): clearer than zips.
#![allow(clippy::needless_range_loop)]

pub mod engine;
pub mod error;
pub mod formats;
pub mod kernels;
pub mod loader;
pub mod memory;
pub mod model;
pub mod threads;
pub mod tokenizer;

pub use error::{Error, Result};
pub use formats::{PackedMatrix, ScaleKind, WeightFormat};

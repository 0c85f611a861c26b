//! Model file loaders: bytes in, validated tensor views out.
//!
//! The parsers take `&[u8]` and never touch the file system, so the same code runs natively (the
//! caller memory-maps the file) and in the browser (the caller passes an `ArrayBuffer`). Tensor
//! views borrow their bytes from that buffer; nothing is copied until a caller dequantizes.
//!
//! Invariants every parser upholds, because model files come from strangers:
//! - every count, length, offset and dimension is checked against the bytes that remain
//!   before anything is allocated or sliced, with checked arithmetic (no overflow on wasm32);
//! - a tensor's byte range lies inside the file, does not overlap another tensor, and its size
//!   is exactly what its dtype and shape require (row length a multiple of the block size);
//! - malformed input is an `Error::Format`, an unknown type an `Error::Unsupported`; nothing on
//!   these paths can panic.
//!
//! `DTYPES` is the single table of storage types: block size, block bytes, and the ids the two
//! file formats use. Dequantization and the ternary quantizers live in `dequant`.

mod dequant;
mod gguf;
mod safetensors;

pub use dequant::{
    dequantize_q6_k, dequantize_q6_k_into, f32_to_f16_bytes, quantize_i2_s, quantize_q6_k, quantize_q6_k_block, quantize_q8_0, quantize_tq1_0, quantize_tq2_0,
};
pub use gguf::{GgufFile, GgufValue, GgufWriter};
pub use safetensors::SafetensorsFile;

use crate::error::{Error, Result};

/// Storage type of a tensor in a model file.
///
/// Block types store `block_size()` weights in `block_bytes()` bytes. `I2_S` (bitnet.cpp) is
/// the one type with a per-tensor part: after the `numel / 4` packed bytes comes a 32-byte
/// tail whose first 4 bytes are the tensor's f32 scale; `storage_bytes` counts it.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    U8,
    I8,
    I16,
    I32,
    I64,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    TQ1_0,
    TQ2_0,
    I2_S,
}

/// One row of the storage-type table.
struct DTypeInfo {
    dtype: DType,
    name: &'static str,
    block_size: usize,
    block_bytes: usize,
    /// ggml type id (llama.cpp numbering; I2_S = 36 is bitnet.cpp's fork).
    gguf_id: Option<u32>,
    /// dtype string in a safetensors header.
    safetensors: Option<&'static str>,
}

const fn row(dtype: DType, name: &'static str, block_size: usize, block_bytes: usize, gguf_id: Option<u32>, safetensors: Option<&'static str>) -> DTypeInfo {
    DTypeInfo { dtype, name, block_size, block_bytes, gguf_id, safetensors }
}

/// Rows are in `DType` declaration order (checked at compile time below).
#[rustfmt::skip]
const DTYPES: [DTypeInfo; 24] = [
    //   dtype          name     block bytes  gguf      safetensors
    row(DType::F32,   "F32",   1,   4,   Some(0),  Some("F32")),
    row(DType::F16,   "F16",   1,   2,   Some(1),  Some("F16")),
    row(DType::BF16,  "BF16",  1,   2,   Some(30), Some("BF16")),
    row(DType::F64,   "F64",   1,   8,   Some(28), Some("F64")),
    row(DType::U8,    "U8",    1,   1,   None,     Some("U8")),
    row(DType::I8,    "I8",    1,   1,   Some(24), Some("I8")),
    row(DType::I16,   "I16",   1,   2,   Some(25), Some("I16")),
    row(DType::I32,   "I32",   1,   4,   Some(26), Some("I32")),
    row(DType::I64,   "I64",   1,   8,   Some(27), Some("I64")),
    // 32-weight blocks: fp16 d [, fp16 m] [, u32 high bits], packed quants.
    row(DType::Q4_0,  "Q4_0",  32,  18,  Some(2),  None),
    row(DType::Q4_1,  "Q4_1",  32,  20,  Some(3),  None),
    row(DType::Q5_0,  "Q5_0",  32,  22,  Some(6),  None),
    row(DType::Q5_1,  "Q5_1",  32,  24,  Some(7),  None),
    row(DType::Q8_0,  "Q8_0",  32,  34,  Some(8),  None),
    row(DType::Q8_1,  "Q8_1",  32,  36,  Some(9),  None),
    // 256-weight super-blocks (k-quants).
    row(DType::Q2_K,  "Q2_K",  256, 84,  Some(10), None),
    row(DType::Q3_K,  "Q3_K",  256, 110, Some(11), None),
    row(DType::Q4_K,  "Q4_K",  256, 144, Some(12), None),
    row(DType::Q5_K,  "Q5_K",  256, 176, Some(13), None),
    row(DType::Q6_K,  "Q6_K",  256, 210, Some(14), None),
    row(DType::Q8_K,  "Q8_K",  256, 292, Some(15), None),
    // Ternary: 1.6875, 2.0625 and 2 bits per weight (+ a 32-byte tensor tail for I2_S).
    row(DType::TQ1_0, "TQ1_0", 256, 54,  Some(34), None),
    row(DType::TQ2_0, "TQ2_0", 256, 66,  Some(35), None),
    row(DType::I2_S,  "I2_S",  128, 32,  Some(36), None),
];

const _: () = {
    let mut i = 0;
    while i < DTYPES.len() {
        assert!(DTYPES[i].dtype as usize == i, "DTYPES rows must follow DType order");
        assert!(DTYPES[i].block_size > 0 && DTYPES[i].block_bytes > 0);
        i += 1;
    }
};

/// Bytes in the I2_S tensor tail (f32 scale + padding).
pub(crate) const I2_S_TAIL_BYTES: usize = 32;

impl DType {
    fn info(self) -> &'static DTypeInfo {
        &DTYPES[self as usize]
    }

    /// Upper-case name, the same spelling as the variant (and as safetensors dtypes).
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// Weights per block (1 for plain element types).
    pub fn block_size(&self) -> usize {
        self.info().block_size
    }

    /// Bytes per block (the element size for plain types).
    pub fn block_bytes(&self) -> usize {
        self.info().block_bytes
    }

    /// The ggml type id written in GGUF tensor infos; `None` for types GGUF cannot hold (U8).
    pub fn gguf_type_id(&self) -> Option<u32> {
        self.info().gguf_id
    }

    pub fn from_gguf_type_id(id: u32) -> Option<DType> {
        DTYPES.iter().find(|r| r.gguf_id == Some(id)).map(|r| r.dtype)
    }

    /// The dtype string of a safetensors header; `None` for block-quantized types.
    pub fn safetensors_name(&self) -> Option<&'static str> {
        self.info().safetensors
    }

    pub fn from_safetensors_name(name: &str) -> Option<DType> {
        DTYPES.iter().find(|r| r.safetensors == Some(name)).map(|r| r.dtype)
    }

    /// TQ1_0, TQ2_0 and I2_S: weights in {-1, 0, +1} times a scale.
    pub fn is_ternary(&self) -> bool {
        matches!(self, DType::TQ1_0 | DType::TQ2_0 | DType::I2_S)
    }

    /// Exact bytes a tensor of this type and shape (numpy order) occupies, or why the shape
    /// cannot be stored: the innermost dimension must be a multiple of the block size.
    pub fn storage_bytes(&self, shape: &[usize]) -> Result<usize> {
        storage_bytes(*self, shape).map_err(Error::InvalidArgument)
    }
}

/// `storage_bytes` with a bare reason, so each parser can wrap it with the tensor's name.
pub(crate) fn storage_bytes(dtype: DType, shape: &[usize]) -> std::result::Result<usize, String> {
    let numel = checked_numel(shape).ok_or_else(|| format!("shape {shape:?} has more elements than fit in memory"))?;
    let block = dtype.block_size();
    let row_len = shape.last().copied().unwrap_or(1);
    if row_len % block != 0 {
        return Err(format!("row length {row_len} is not a multiple of the {} block size {block}", dtype.name()));
    }
    let bytes = (numel / block).checked_mul(dtype.block_bytes()).ok_or_else(|| format!("shape {shape:?} of type {} overflows memory", dtype.name()))?;
    if dtype == DType::I2_S {
        bytes.checked_add(I2_S_TAIL_BYTES).ok_or_else(|| format!("shape {shape:?} of type I2_S overflows memory"))
    } else {
        Ok(bytes)
    }
}

pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// A tensor inside a parsed file: its bytes are borrowed from the file buffer, or, for a file
/// parsed from its header alone (`GgufFile::parse_header`), read from `lazy` when converted.
///
/// `shape` is in numpy order (outermost first). For GGUF this is `ne[]` reversed, so a weight
/// matrix is `[rows, row_len]` and `row_len` is the dimension that blocks run along.
#[derive(Clone, PartialEq)]
pub struct TensorView<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// The bytes; empty when `lazy` says where they are instead.
    pub data: &'a [u8],
    pub lazy: Option<LazyBytes<'a>>,
}

/// Reads byte ranges of a model file that is not in memory as a whole. The browser build
/// reads a GGUF file tensor by tensor from a `Blob` this way, so that wasm memory never holds
/// the file and the model unpacked from it at once.
pub trait TensorSource {
    /// Fills `dst` with the file's bytes from `offset` on.
    fn read(&self, offset: u64, dst: &mut [u8]) -> Result<()>;
}

/// `len` bytes at `offset` of the file behind `source`.
#[derive(Clone, Copy)]
pub struct LazyBytes<'a> {
    pub source: &'a dyn TensorSource,
    pub offset: u64,
    pub len: usize,
}

impl PartialEq for LazyBytes<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(self.source, other.source) && self.offset == other.offset && self.len == other.len
    }
}

/// Shows the byte count, not the bytes (a view can span hundreds of megabytes).
impl std::fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorView")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("data", &format_args!("<{} bytes{}>", self.byte_len(), if self.lazy.is_some() { ", not read" } else { "" }))
            .finish()
    }
}

/// Ternary weights unpacked to one code per weight.
///
/// `value[r][c] = codes[r * cols + c] * row_scales[r]`. Files store scales per block
/// (`block_len` weights of a row share `block_scales[r * cols / block_len + c / block_len]`):
/// 256 for TQ1_0/TQ2_0, the whole row for I2_S (whose one scale is per tensor).
#[derive(Clone, Debug, PartialEq)]
pub struct TernaryTensor {
    pub rows: usize,
    pub cols: usize,
    /// rows * cols codes in {-1, 0, +1}, row-major.
    pub codes: Vec<i8>,
    /// One scale per row. Empty only from `to_ternary_block_scaled` when some row's blocks
    /// carry different scales.
    pub row_scales: Vec<f32>,
    /// rows * (cols / block_len) scales, as stored in the file.
    pub block_scales: Vec<f32>,
    pub block_len: usize,
}

impl<'a> TensorView<'a> {
    /// Number of elements (product of `shape`; saturates at `usize::MAX` for a hand-built view
    /// whose shape overflows, which every conversion below then rejects).
    pub fn numel(&self) -> usize {
        checked_numel(&self.shape).unwrap_or(usize::MAX)
    }

    /// Dequantize to f32 in row-major (numpy) order, exactly as ggml / bitnet.cpp would.
    /// Ternary types give `code * scale`.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let numel = self.checked_size()?;
        dequant::dequantize(self.dtype, &self.bytes()?, numel).map_err(|reason| Error::Format(format!("tensor '{}': {reason}", self.name)))
    }

    /// An F16 or BF16 tensor as f16 values in row-major order, without an f32 copy: F16 is
    /// taken as stored, BF16 converted value by value as `f16::from_f32` of its exact f32 (what
    /// `to_f32` then an f16 conversion gives).
    pub fn to_f16(&self) -> Result<Vec<half::f16>> {
        let numel = self.checked_size()?;
        // On huge pages: an output layer is what a decode step streams most of.
        let mut out = crate::memory::huge_page_vec(numel, half::f16::ZERO);
        match self.dtype {
            DType::F16 => {
                // SAFETY: f16 is 2 plain bytes; `out` holds exactly numel * 2 of them.
                let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, numel * 2) };
                match &self.lazy {
                    Some(lazy) => lazy.source.read(lazy.offset, bytes)?,
                    None => bytes.copy_from_slice(self.data),
                }
                if cfg!(target_endian = "big") {
                    out.iter_mut().for_each(|v| *v = half::f16::from_bits(u16::from_le(v.to_bits())));
                }
            }
            DType::BF16 => {
                let bytes = self.bytes()?;
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_f32(half::bf16::from_le_bytes([b[0], b[1]]).to_f32());
                }
            }
            other => crate::bail!(InvalidArgument, "tensor '{}' is {}, not F16 or BF16", self.name, other.name()),
        }
        Ok(out)
    }

    /// Bytes the tensor occupies in its file.
    pub fn byte_len(&self) -> usize {
        self.lazy.map_or(self.data.len(), |l| l.len)
    }

    /// The tensor's bytes: borrowed, or read from the file for a lazy view (then they live
    /// only as long as the conversion that asked for them).
    pub fn bytes(&self) -> Result<std::borrow::Cow<'a, [u8]>> {
        match &self.lazy {
            None => Ok(std::borrow::Cow::Borrowed(self.data)),
            Some(lazy) => {
                let mut out = vec![0u8; lazy.len];
                lazy.source.read(lazy.offset, &mut out).map_err(|e| match e {
                    Error::Io(io) => Error::Io(std::io::Error::new(io.kind(), format!("reading tensor '{}': {io}", self.name))),
                    other => other,
                })?;
                Ok(std::borrow::Cow::Owned(out))
            }
        }
    }

    /// Exact ternary codes and scales of a TQ1_0, TQ2_0 or I2_S tensor.
    ///
    /// Fails with `Unsupported` when the blocks of one row carry different scales (llama.cpp's
    /// own quantizer writes one absmax scale per 256-block; binllm's writer repeats the row
    /// scale). Blocks whose codes are all zero do not constrain the row scale. Use
    /// `to_ternary_block_scaled` to get codes and per-block scales in that case.
    pub fn to_ternary(&self) -> Result<TernaryTensor> {
        let t = self.to_ternary_block_scaled()?;
        if t.row_scales.is_empty() && t.rows > 0 {
            let row = dequant::first_row_with_varying_scales(&t).unwrap_or(0);
            return Err(Error::Unsupported(format!(
                "tensor '{}' ({}): the {}-weight blocks of row {row} have different scales; \
                 binllm's ternary kernels take one scale per row \
                 (use to_ternary_block_scaled for per-block scales)",
                self.name,
                self.dtype.name(),
                t.block_len
            )));
        }
        Ok(t)
    }

    /// Like `to_ternary`, but never fails on scales: `row_scales` is left empty when some row's
    /// blocks differ, and `block_scales` always holds the stored scales.
    pub fn to_ternary_block_scaled(&self) -> Result<TernaryTensor> {
        if !self.dtype.is_ternary() {
            return Err(Error::InvalidArgument(format!("tensor '{}' is {}, not a ternary type (TQ1_0, TQ2_0, I2_S)", self.name, self.dtype.name())));
        }
        self.checked_size()?;
        let cols = self.shape.last().copied().unwrap_or(1);
        let rows = self.numel().checked_div(cols).unwrap_or(0);
        dequant::unpack_ternary(self.dtype, &self.bytes()?, rows, cols).map_err(|reason| Error::Format(format!("tensor '{}': {reason}", self.name)))
    }

    /// Check `data` against dtype and shape (views are public, so a caller may build one by
    /// hand); returns the element count.
    fn checked_size(&self) -> Result<usize> {
        let expected = storage_bytes(self.dtype, &self.shape).map_err(|reason| Error::Format(format!("tensor '{}': {reason}", self.name)))?;
        if self.byte_len() != expected {
            return Err(Error::Format(format!(
                "tensor '{}' ({} {:?}) holds {} bytes, expected {expected}",
                self.name,
                self.dtype.name(),
                self.shape,
                self.byte_len()
            )));
        }
        Ok(self.numel())
    }
}

/// Deterministic test data without the rand crate.
#[cfg(test)]
pub(crate) mod test_util {
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
        }

        /// splitmix64
        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        pub fn next_u32(&mut self) -> u32 {
            (self.next_u64() >> 32) as u32
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n.max(1) as u64) as usize
        }

        /// Uniform in [0, 1).
        pub fn uniform(&mut self) -> f32 {
            (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
        }

        /// Roughly standard normal (sum of 4 uniforms, rescaled).
        pub fn normal(&mut self) -> f32 {
            let s: f32 = (0..4).map(|_| self.uniform()).sum();
            (s - 2.0) * 3f32.sqrt()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_table_round_trips_ids_and_names() {
        for info in DTYPES.iter() {
            let d = info.dtype;
            assert_eq!(d.name(), format!("{d:?}"));
            if let Some(id) = d.gguf_type_id() {
                assert_eq!(DType::from_gguf_type_id(id), Some(d));
            }
            if let Some(n) = d.safetensors_name() {
                assert_eq!(DType::from_safetensors_name(n), Some(d));
            }
        }
        assert_eq!(DType::from_gguf_type_id(99), None);
        assert_eq!(DType::from_gguf_type_id(4), None); // removed Q4_2
    }

    #[test]
    fn storage_bytes_checks_rows_and_overflow() {
        assert_eq!(DType::Q8_0.storage_bytes(&[3, 64]).unwrap(), 3 * 2 * 34);
        assert_eq!(DType::TQ1_0.storage_bytes(&[2, 512]).unwrap(), 2 * 2 * 54);
        assert_eq!(DType::I2_S.storage_bytes(&[4, 128]).unwrap(), 4 * 128 / 4 + 32);
        assert_eq!(DType::F32.storage_bytes(&[]).unwrap(), 4);
        assert_eq!(DType::F16.storage_bytes(&[0, 7]).unwrap(), 0);
        assert!(DType::Q8_0.storage_bytes(&[2, 33]).is_err());
        assert!(DType::F32.storage_bytes(&[usize::MAX, 2]).is_err());
        assert!(DType::F64.storage_bytes(&[usize::MAX / 4]).is_err());
    }

    #[test]
    fn view_rejects_wrong_data_length_and_non_ternary() {
        let bytes = [0u8; 12];
        let v = TensorView { name: "x".into(), dtype: DType::F32, shape: vec![2, 2], data: &bytes, lazy: None };
        assert!(matches!(v.to_f32(), Err(Error::Format(_))));
        let v = TensorView { name: "x".into(), dtype: DType::F32, shape: vec![3], data: &bytes, lazy: None };
        assert_eq!(v.to_f32().unwrap(), vec![0.0; 3]);
        assert!(format!("{v:?}").contains("data: <12 bytes>"));
        assert!(matches!(v.to_ternary(), Err(Error::InvalidArgument(_))));
        let v = TensorView { name: "big".into(), dtype: DType::F32, shape: vec![usize::MAX, usize::MAX], data: &bytes, lazy: None };
        assert_eq!(v.numel(), usize::MAX);
        assert!(v.to_f32().is_err());
    }
}

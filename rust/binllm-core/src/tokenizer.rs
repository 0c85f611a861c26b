//! Byte-level BPE (the GPT-2 family: GPT-2, SmolLM2, Llama-2-style BitNet vocabularies), built
//! from a GGUF file's `tokenizer.ggml.*` metadata or a Hugging Face `tokenizer.json`, so that
//! every binding (the browser build first) tokenizes without the `tokenizers` library.
//!
//! The reference is what `python/binllm/tokenizer.py` builds with `tokenizers`, and ids must
//! equal it exactly:
//! - added tokens (GGUF control / user-defined tokens, tokenizer.json `added_tokens`) are cut
//!   out of the raw text first, leftmost-longest, and map to their id whole;
//! - the pre-tokenizer is optionally `Digits(individual_digits)` (llama.cpp's `smollm` and
//!   `smaug-bpe`) followed by GPT-2's byte-level regex
//!   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, matched by hand
//!   here (no regex crate): `\p{N}` is `char::is_numeric`, `\p{L}` is alphabetic minus numbers
//!   and a table of alphabetic marks (`ALPHABETIC_NON_LETTERS`);
//! - each piece's bytes map to GPT-2's printable byte alphabet, then merges apply lowest rank
//!   first, leftmost on ties (what `tokenizers`' merge heap does).
//!
//! Decoding maps the byte alphabet back and replaces invalid UTF-8 with U+FFFD, as the
//! `ByteLevel` decoder does; special added tokens are skipped when asked.

use crate::error::{Error, Result};
use crate::loader::{GgufFile, GgufValue};
use std::collections::HashMap;

/// llama.cpp pre-tokenizer names that split digits one by one before the GPT-2 regex.
const DIGIT_SPLITTING: [&str; 2] = ["smollm", "smaug-bpe"];

#[derive(Clone, Debug)]
struct AddedToken {
    content: String,
    id: u32,
    special: bool,
}

#[derive(Clone, Debug)]
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    /// Token text by id (added tokens included); empty where an id has no token.
    id_to_token: Vec<String>,
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    added: Vec<AddedToken>,
    special_ids: Vec<bool>,
    split_digits: bool,
    use_regex: bool,
    add_prefix_space: bool,
    ignore_merges: bool,
    /// Ids the post-processor puts around the text (tokenizer.json `TemplateProcessing`).
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// A GGUF file's `tokenizer.ggml.add_bos_token`: prepend this id unless the text starts with it.
    bos_if_missing: Option<u32>,
}

/// GPT-2's map from bytes to printable characters: printable Latin-1 maps to itself, the rest
/// to 256, 257, ... in byte order.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).expect("GPT-2 byte characters are valid");
    }
    table
}

/// Characters Rust calls alphabetic that are not letters (`\p{L}`): the Other_Alphabetic marks
/// (Indic vowel signs, Hebrew and Arabic points, ...) and circled letters, as (first, last).
/// Generated from Unicode 14 (Python's unicodedata) against `char::is_alphabetic`; unassigned
/// there, newer letters stay letters.
const ALPHABETIC_NON_LETTERS: &[(u32, u32)] = &[
    (0x0345, 0x0345), (0x0363, 0x036F), (0x05B0, 0x05BD), (0x05BF, 0x05BF), (0x05C1, 0x05C2), (0x05C4, 0x05C5),
    (0x05C7, 0x05C7), (0x0610, 0x061A), (0x064B, 0x0657), (0x0659, 0x065F), (0x0670, 0x0670), (0x06D6, 0x06DC),
    (0x06E1, 0x06E4), (0x06E7, 0x06E8), (0x06ED, 0x06ED), (0x0711, 0x0711), (0x0730, 0x073F), (0x07A6, 0x07B0),
    (0x0816, 0x0817), (0x081B, 0x0823), (0x0825, 0x0827), (0x0829, 0x082C), (0x08D4, 0x08DF), (0x08E3, 0x08E9),
    (0x08F0, 0x0903), (0x093A, 0x093B), (0x093E, 0x094C), (0x094E, 0x094F), (0x0955, 0x0957), (0x0962, 0x0963),
    (0x0981, 0x0983), (0x09BE, 0x09C4), (0x09C7, 0x09C8), (0x09CB, 0x09CC), (0x09D7, 0x09D7), (0x09E2, 0x09E3),
    (0x0A01, 0x0A03), (0x0A3E, 0x0A42), (0x0A47, 0x0A48), (0x0A4B, 0x0A4C), (0x0A51, 0x0A51), (0x0A70, 0x0A71),
    (0x0A75, 0x0A75), (0x0A81, 0x0A83), (0x0ABE, 0x0AC5), (0x0AC7, 0x0AC9), (0x0ACB, 0x0ACC), (0x0AE2, 0x0AE3),
    (0x0AFA, 0x0AFC), (0x0B01, 0x0B03), (0x0B3E, 0x0B44), (0x0B47, 0x0B48), (0x0B4B, 0x0B4C), (0x0B56, 0x0B57),
    (0x0B62, 0x0B63), (0x0B82, 0x0B82), (0x0BBE, 0x0BC2), (0x0BC6, 0x0BC8), (0x0BCA, 0x0BCC), (0x0BD7, 0x0BD7),
    (0x0C00, 0x0C04), (0x0C3E, 0x0C44), (0x0C46, 0x0C48), (0x0C4A, 0x0C4C), (0x0C55, 0x0C56), (0x0C62, 0x0C63),
    (0x0C81, 0x0C83), (0x0CBE, 0x0CC4), (0x0CC6, 0x0CC8), (0x0CCA, 0x0CCC), (0x0CD5, 0x0CD6), (0x0CE2, 0x0CE3),
    (0x0D00, 0x0D03), (0x0D3E, 0x0D44), (0x0D46, 0x0D48), (0x0D4A, 0x0D4C), (0x0D57, 0x0D57), (0x0D62, 0x0D63),
    (0x0D81, 0x0D83), (0x0DCF, 0x0DD4), (0x0DD6, 0x0DD6), (0x0DD8, 0x0DDF), (0x0DF2, 0x0DF3), (0x0E31, 0x0E31),
    (0x0E34, 0x0E3A), (0x0E4D, 0x0E4D), (0x0EB1, 0x0EB1), (0x0EB4, 0x0EB9), (0x0EBB, 0x0EBC), (0x0ECD, 0x0ECD),
    (0x0F71, 0x0F83), (0x0F8D, 0x0F97), (0x0F99, 0x0FBC), (0x102B, 0x1036), (0x1038, 0x1038), (0x103B, 0x103E),
    (0x1056, 0x1059), (0x105E, 0x1060), (0x1062, 0x1064), (0x1067, 0x106D), (0x1071, 0x1074), (0x1082, 0x108D),
    (0x108F, 0x108F), (0x109A, 0x109D), (0x1712, 0x1713), (0x1732, 0x1733), (0x1752, 0x1753), (0x1772, 0x1773),
    (0x17B6, 0x17C8), (0x1885, 0x1886), (0x18A9, 0x18A9), (0x1920, 0x192B), (0x1930, 0x1938), (0x1A17, 0x1A1B),
    (0x1A55, 0x1A5E), (0x1A61, 0x1A74), (0x1ABF, 0x1AC0), (0x1ACC, 0x1ACE), (0x1B00, 0x1B04), (0x1B35, 0x1B43),
    (0x1B80, 0x1B82), (0x1BA1, 0x1BA9), (0x1BAC, 0x1BAD), (0x1BE7, 0x1BF1), (0x1C24, 0x1C36), (0x1DD3, 0x1DF4),
    (0x24B6, 0x24E9), (0x2DE0, 0x2DFF), (0xA674, 0xA67B), (0xA69E, 0xA69F), (0xA802, 0xA802), (0xA80B, 0xA80B),
    (0xA823, 0xA827), (0xA880, 0xA881), (0xA8B4, 0xA8C3), (0xA8C5, 0xA8C5), (0xA8FF, 0xA8FF), (0xA926, 0xA92A),
    (0xA947, 0xA952), (0xA980, 0xA983), (0xA9B4, 0xA9BF), (0xA9E5, 0xA9E5), (0xAA29, 0xAA36), (0xAA43, 0xAA43),
    (0xAA4C, 0xAA4D), (0xAA7B, 0xAA7D), (0xAAB0, 0xAAB0), (0xAAB2, 0xAAB4), (0xAAB7, 0xAAB8), (0xAABE, 0xAABE),
    (0xAAEB, 0xAAEF), (0xAAF5, 0xAAF5), (0xABE3, 0xABEA), (0xFB1E, 0xFB1E), (0x10376, 0x1037A), (0x10A01, 0x10A03),
    (0x10A05, 0x10A06), (0x10A0C, 0x10A0F), (0x10D24, 0x10D27), (0x10EAB, 0x10EAC), (0x11000, 0x11002), (0x11038, 0x11045),
    (0x11073, 0x11074), (0x11080, 0x11082), (0x110B0, 0x110B8), (0x110C2, 0x110C2), (0x11100, 0x11102), (0x11127, 0x11132),
    (0x11145, 0x11146), (0x11180, 0x11182), (0x111B3, 0x111BF), (0x111CE, 0x111CF), (0x1122C, 0x11234), (0x11237, 0x11237),
    (0x1123E, 0x1123E), (0x112DF, 0x112E8), (0x11300, 0x11303), (0x1133E, 0x11344), (0x11347, 0x11348), (0x1134B, 0x1134C),
    (0x11357, 0x11357), (0x11362, 0x11363), (0x11435, 0x11441), (0x11443, 0x11445), (0x114B0, 0x114C1), (0x115AF, 0x115B5),
    (0x115B8, 0x115BE), (0x115DC, 0x115DD), (0x11630, 0x1163E), (0x11640, 0x11640), (0x116AB, 0x116B5), (0x1171D, 0x1172A),
    (0x1182C, 0x11838), (0x11930, 0x11935), (0x11937, 0x11938), (0x1193B, 0x1193C), (0x11940, 0x11940), (0x11942, 0x11942),
    (0x119D1, 0x119D7), (0x119DA, 0x119DF), (0x119E4, 0x119E4), (0x11A01, 0x11A0A), (0x11A35, 0x11A39), (0x11A3B, 0x11A3E),
    (0x11A51, 0x11A5B), (0x11A8A, 0x11A97), (0x11C2F, 0x11C36), (0x11C38, 0x11C3E), (0x11C92, 0x11CA7), (0x11CA9, 0x11CB6),
    (0x11D31, 0x11D36), (0x11D3A, 0x11D3A), (0x11D3C, 0x11D3D), (0x11D3F, 0x11D41), (0x11D43, 0x11D43), (0x11D47, 0x11D47),
    (0x11D8A, 0x11D8E), (0x11D90, 0x11D91), (0x11D93, 0x11D96), (0x11EF3, 0x11EF6), (0x16F4F, 0x16F4F), (0x16F51, 0x16F87),
    (0x16F8F, 0x16F92), (0x16FF0, 0x16FF1), (0x1BC9E, 0x1BC9E), (0x1E000, 0x1E006), (0x1E008, 0x1E018), (0x1E01B, 0x1E021),
    (0x1E023, 0x1E024), (0x1E026, 0x1E02A), (0x1E947, 0x1E947), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189),
];

/// `\p{L}`: alphabetic, not numeric (`Nl`), and not one of the marks above.
fn is_letter(c: char) -> bool {
    if !c.is_alphabetic() || c.is_numeric() {
        return false;
    }
    let cp = c as u32;
    cp < 0x0345 || ALPHABETIC_NON_LETTERS.binary_search_by(|&(a, b)| if b < cp { std::cmp::Ordering::Less } else if a > cp { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Equal }).is_err()
}

fn is_other(c: char) -> bool {
    !c.is_whitespace() && !is_letter(c) && !c.is_numeric()
}

/// Splits `text` by GPT-2's byte-level regex; returns byte ranges covering all of `text`.
fn gpt2_split(text: &str) -> Vec<(usize, usize)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let offset = |i: usize| if i < n { chars[i].0 } else { text.len() };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let c = chars[i].1;
        let next = |k: usize| chars.get(i + k).map(|x| x.1);
        // 's 't 're 've 'm 'll 'd
        if c == '\'' {
            let len = match (next(1), next(2)) {
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
                (Some('s' | 't' | 'm' | 'd'), _) => 2,
                _ => 0,
            };
            if len > 0 {
                out.push((offset(i), offset(i + len)));
                i += len;
                continue;
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let start = if c == ' ' { i + 1 } else { i };
        if let Some(&(_, first)) = chars.get(start) {
            let class: Option<fn(char) -> bool> = if is_letter(first) {
                Some(is_letter)
            } else if first.is_numeric() {
                Some(|c: char| c.is_numeric())
            } else if is_other(first) {
                Some(is_other)
            } else {
                None
            };
            if let Some(class) = class {
                let mut end = start + 1;
                while end < n && class(chars[end].1) {
                    end += 1;
                }
                out.push((offset(i), offset(end)));
                i = end;
                continue;
            }
        }
        // `\s+(?!\S)|\s+`: a run of spaces leaves its last one to the word that follows.
        let mut end = i + 1;
        while end < n && chars[end].1.is_whitespace() {
            end += 1;
        }
        if end < n && end - i > 1 {
            end -= 1;
        }
        out.push((offset(i), offset(end)));
        i = end;
    }
    out
}

/// `Digits(individual_digits=True)`: every numeric character becomes a piece of its own.
fn split_digits(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if c.is_numeric() {
            if at > start {
                out.push((start, at));
            }
            out.push((at, at + c.len_utf8()));
            start = at + c.len_utf8();
        }
    }
    if start < text.len() {
        out.push((start, text.len()));
    }
    out
}

impl Tokenizer {
    fn new(id_to_token: Vec<String>, merge_pairs: &[(String, String)], mut added: Vec<AddedToken>) -> Result<Tokenizer> {
        // A text listed twice maps to its last id, as a Python dict built from the list does.
        let mut vocab = HashMap::with_capacity(id_to_token.len());
        for (id, t) in id_to_token.iter().enumerate() {
            if !t.is_empty() {
                vocab.insert(t.clone(), id as u32);
            }
        }
        // Added tokens whose text is in the vocabulary take the vocabulary's id.
        for t in &mut added {
            if let Some(&id) = vocab.get(&t.content) {
                t.id = id;
            }
        }
        let mut merges = HashMap::with_capacity(merge_pairs.len());
        for (rank, (a, b)) in merge_pairs.iter().enumerate() {
            let (Some(&left), Some(&right)) = (vocab.get(a), vocab.get(b)) else {
                crate::bail!(Format, "tokenizer merge '{a} {b}' names a token outside the vocabulary");
            };
            let Some(&merged) = vocab.get(&format!("{a}{b}")) else {
                crate::bail!(Format, "tokenizer merge '{a} {b}' makes a token outside the vocabulary");
            };
            merges.entry((left, right)).or_insert((rank as u32, merged));
        }
        let mut special_ids = vec![false; id_to_token.len()];
        for t in &added {
            if t.special {
                special_ids[t.id as usize] = true;
            }
        }
        Ok(Tokenizer {
            vocab,
            id_to_token,
            merges,
            added,
            special_ids,
            split_digits: false,
            use_regex: true,
            add_prefix_space: false,
            ignore_merges: false,
            prefix: Vec::new(),
            suffix: Vec::new(),
            bos_if_missing: None,
        })
    }

    /// The tokenizer a GGUF file describes (`tokenizer.ggml.*`, or an embedded
    /// `tokenizer.huggingface.json`).
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Tokenizer> {
        if let Some(json) = file.get("tokenizer.huggingface.json").and_then(GgufValue::as_str) {
            return Tokenizer::from_json(json);
        }
        let kind = file.get("tokenizer.ggml.model").and_then(GgufValue::as_str);
        let tokens = file.get("tokenizer.ggml.tokens").and_then(GgufValue::as_string_list);
        let (Some(kind), Some(tokens)) = (kind, tokens) else {
            crate::bail!(Unsupported, "the GGUF file carries no tokenizer (no tokenizer.ggml.model / tokens)");
        };
        if kind != "gpt2" {
            crate::bail!(Unsupported, "GGUF tokenizer model '{kind}': binllm reads byte-level BPE ('gpt2') tokenizers");
        }
        let tokens: Vec<String> = tokens.into_iter().map(String::from).collect();
        let merges = match file.get("tokenizer.ggml.merges") {
            None => Vec::new(),
            Some(v) => v
                .as_string_list()
                .ok_or_else(|| Error::Format("tokenizer.ggml.merges is not a list of strings".into()))?
                .into_iter()
                .map(|m| match m.split_once(' ') {
                    Some((a, b)) => Ok((a.to_string(), b.to_string())),
                    None => Err(Error::Format(format!("tokenizer merge '{m}' has no space"))),
                })
                .collect::<Result<Vec<_>>>()?,
        };
        // Control tokens (type 3) and user-defined ones (type 4) are matched whole, never split.
        let types = file.get("tokenizer.ggml.token_type").and_then(GgufValue::as_array).unwrap_or(&[]);
        let added = types
            .iter()
            .enumerate()
            .filter(|(i, t)| *i < tokens.len() && matches!(t.as_i64(), Some(3 | 4)))
            .map(|(i, _)| AddedToken { content: tokens[i].clone(), id: i as u32, special: true })
            .filter(|t| !t.content.is_empty())
            .collect();
        let mut tok = Tokenizer::new(tokens, &merges, added)?;
        let pre = file.get("tokenizer.ggml.pre").and_then(GgufValue::as_str).unwrap_or("");
        tok.split_digits = DIGIT_SPLITTING.contains(&pre);
        if file.get("tokenizer.ggml.add_bos_token").and_then(GgufValue::as_bool).unwrap_or(false) {
            tok.bos_if_missing = file.get("tokenizer.ggml.bos_token_id").and_then(GgufValue::as_u64).map(|v| v as u32);
        }
        Ok(tok)
    }

    /// A Hugging Face `tokenizer.json` with a byte-level BPE model. Anything else (a
    /// normalizer, a regex `Split` pre-tokenizer, WordPiece, ...) is `Unsupported`, never a
    /// silently different tokenization.
    pub fn from_json(text: &str) -> Result<Tokenizer> {
        use serde_json::Value;
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Format(format!("tokenizer.json: {e}")))?;
        let unsupported = |what: &str| Error::Unsupported(format!("tokenizer.json: {what}"));
        let model = v.get("model").ok_or_else(|| Error::Format("tokenizer.json has no model".into()))?;
        if model.get("type").and_then(Value::as_str) != Some("BPE") {
            return Err(unsupported("only BPE models are supported"));
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix", "dropout"] {
            if !model.get(key).is_none_or(|x| x.is_null() || x.as_str() == Some("")) {
                return Err(unsupported(&format!("BPE option '{key}' is not supported")));
            }
        }
        if model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false) {
            return Err(unsupported("byte_fallback BPE (SentencePiece-style) is not supported"));
        }
        if !v.get("normalizer").is_none_or(Value::is_null) {
            return Err(unsupported("normalizers are not supported"));
        }
        let vocab_map = model.get("vocab").and_then(Value::as_object).ok_or_else(|| Error::Format("tokenizer.json: model.vocab is not an object".into()))?;
        let mut entries: Vec<(String, u32)> = Vec::with_capacity(vocab_map.len());
        for (t, id) in vocab_map {
            let id = id.as_u64().filter(|&i| i < (1 << 24)).ok_or_else(|| Error::Format(format!("tokenizer.json: bad id for '{t}'")))?;
            entries.push((t.clone(), id as u32));
        }
        let mut added = Vec::new();
        for a in v.get("added_tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            let content = a.get("content").and_then(Value::as_str).unwrap_or("").to_string();
            let id = a.get("id").and_then(Value::as_u64).filter(|&i| i < (1 << 24));
            let (Some(id), false) = (id, content.is_empty()) else {
                return Err(Error::Format("tokenizer.json: an added token lacks its id or content".into()));
            };
            let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
            entries.push((content.clone(), id as u32));
            added.push(AddedToken { content, id: id as u32, special });
        }
        let size = entries.iter().map(|e| e.1 as usize + 1).max().unwrap_or(0);
        let mut id_to_token = vec![String::new(); size];
        for (t, id) in entries {
            id_to_token[id as usize] = t;
        }
        let mut merges = Vec::new();
        for m in model.get("merges").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            let pair = match m {
                Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(p) if p.len() == 2 => p[0].as_str().zip(p[1].as_str()).map(|(a, b)| (a.to_string(), b.to_string())),
                _ => None,
            };
            merges.push(pair.ok_or_else(|| Error::Format(format!("tokenizer.json: bad merge {m}")))?);
        }
        let mut tok = Tokenizer::new(id_to_token, &merges, added)?;
        tok.ignore_merges = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);
        tok.configure_pre_tokenizer(v.get("pre_tokenizer").unwrap_or(&Value::Null))?;
        tok.configure_post_processor(v.get("post_processor").unwrap_or(&Value::Null))?;
        match v.get("decoder").and_then(|d| d.get("type")).and_then(Value::as_str) {
            None | Some("ByteLevel") => Ok(tok),
            Some(other) => Err(unsupported(&format!("decoder '{other}' is not supported"))),
        }
    }

    fn configure_pre_tokenizer(&mut self, pre: &serde_json::Value) -> Result<()> {
        use serde_json::Value;
        let kind = pre.get("type").and_then(Value::as_str);
        match kind {
            Some("Sequence") => {
                let items = pre.get("pretokenizers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                match items {
                    [one] => self.configure_pre_tokenizer(one),
                    [digits, byte_level] if digits.get("type").and_then(Value::as_str) == Some("Digits") => {
                        self.configure_pre_tokenizer(digits)?;
                        self.configure_pre_tokenizer(byte_level)
                    }
                    _ => crate::bail!(Unsupported, "tokenizer.json: this pre-tokenizer sequence is not supported"),
                }
            }
            Some("Digits") => {
                if !pre.get("individual_digits").and_then(Value::as_bool).unwrap_or(false) {
                    crate::bail!(Unsupported, "tokenizer.json: Digits without individual_digits is not supported");
                }
                self.split_digits = true;
                Ok(())
            }
            Some("ByteLevel") => {
                self.use_regex = pre.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
                self.add_prefix_space = pre.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false);
                Ok(())
            }
            _ => crate::bail!(Unsupported, "tokenizer.json: pre-tokenizer {:?} is not supported (binllm reads byte-level BPE)", kind),
        }
    }

    fn configure_post_processor(&mut self, post: &serde_json::Value) -> Result<()> {
        use serde_json::Value;
        match post.get("type").and_then(Value::as_str) {
            None | Some("ByteLevel") => Ok(()),
            Some("Sequence") => {
                for p in post.get("processors").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
                    self.configure_post_processor(p)?;
                }
                Ok(())
            }
            Some("TemplateProcessing") => {
                let special = post.get("special_tokens").and_then(Value::as_object);
                let mut seen_text = false;
                for piece in post.get("single").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
                    if piece.get("Sequence").is_some() {
                        seen_text = true;
                    } else if let Some(name) = piece.get("SpecialToken").and_then(|s| s.get("id")).and_then(Value::as_str) {
                        let ids = special
                            .and_then(|s| s.get(name))
                            .and_then(|s| s.get("ids"))
                            .and_then(Value::as_array)
                            .ok_or_else(|| Error::Format(format!("tokenizer.json: template names unknown special token '{name}'")))?;
                        let ids = ids.iter().map(|i| i.as_u64().map(|i| i as u32)).collect::<Option<Vec<_>>>();
                        let ids = ids.ok_or_else(|| Error::Format(format!("tokenizer.json: bad ids for '{name}'")))?;
                        if seen_text { &mut self.suffix } else { &mut self.prefix }.extend(ids);
                    }
                }
                Ok(())
            }
            Some(other) => crate::bail!(Unsupported, "tokenizer.json: post-processor '{other}' is not supported"),
        }
    }

    /// Ids in the vocabulary (the largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.id_to_token.len()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.id_to_token.get(id as usize).map(String::as_str).filter(|t| !t.is_empty())
    }

    /// Ids of `text`, with the special tokens the tokenizer adds (BOS, a template's ids) when
    /// `add_special` is set, as `binllm.Model.encode` does.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        if add_special {
            ids.extend(&self.prefix);
        }
        let table = byte_to_char_table();
        let mut start = 0;
        while start < text.len() {
            let (plain_end, token) = self.next_added(text, start);
            if plain_end > start {
                self.encode_plain(&text[start..plain_end], &table, &mut ids);
            }
            match token {
                Some(t) => {
                    ids.push(t.id);
                    start = plain_end + t.content.len();
                }
                None => start = plain_end,
            }
        }
        if add_special {
            ids.extend(&self.suffix);
            if let Some(bos) = self.bos_if_missing {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        ids
    }

    /// The leftmost added token at or after `from` (longest there): where it starts, and it.
    fn next_added(&self, text: &str, from: usize) -> (usize, Option<&AddedToken>) {
        if self.added.is_empty() {
            return (text.len(), None);
        }
        for (at, _) in text[from..].char_indices() {
            let rest = &text[from + at..];
            let best = self.added.iter().filter(|t| rest.starts_with(t.content.as_str())).max_by_key(|t| t.content.len());
            if best.is_some() {
                return (from + at, best);
            }
        }
        (text.len(), None)
    }

    fn encode_plain(&self, text: &str, table: &[char; 256], ids: &mut Vec<u32>) {
        let prefixed;
        let text = if self.add_prefix_space && !text.starts_with(' ') {
            prefixed = format!(" {text}");
            prefixed.as_str()
        } else {
            text
        };
        let pieces = if self.split_digits { split_digits(text) } else { vec![(0, text.len())] };
        for (a, b) in pieces {
            let piece = &text[a..b];
            let words = if self.use_regex { gpt2_split(piece) } else { vec![(0, piece.len())] };
            for (c, d) in words {
                let mapped: String = piece[c..d].bytes().map(|byte| table[byte as usize]).collect();
                self.bpe(&mapped, ids);
            }
        }
    }

    /// Merges one pre-tokenized word: lowest rank first, leftmost among equal ranks.
    fn bpe(&self, word: &str, ids: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = self.vocab.get(word) {
                ids.push(id);
                return;
            }
        }
        // Characters outside the vocabulary are dropped, as `tokenizers` does without an unk token.
        let mut symbols: Vec<u32> =
            word.chars().filter_map(|c| self.vocab.get(c.encode_utf8(&mut [0u8; 4]) as &str).copied()).collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(pos, pair)| self.merges.get(&(pair[0], pair[1])).map(|&(rank, id)| (rank, pos, id)))
                .min();
            let Some((_, pos, id)) = best else { break };
            symbols[pos] = id;
            symbols.remove(pos + 1);
        }
        ids.extend(symbols);
    }

    /// Text of `ids`; special added tokens are left out when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let table = byte_to_char_table();
        let mut char_to_byte = HashMap::with_capacity(256);
        for (b, c) in table.iter().enumerate() {
            char_to_byte.insert(*c, b as u8);
        }
        let mut bytes = Vec::new();
        for &id in ids {
            if skip_special && self.special_ids.get(id as usize).copied().unwrap_or(false) {
                continue;
            }
            let Some(token) = self.id_to_token(id) else { continue };
            for c in token.chars() {
                match char_to_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        gpt2_split(text).into_iter().map(|(a, b)| &text[a..b]).collect()
    }

    #[test]
    fn gpt2_regex_splits_like_the_reference() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(split("it's   three\n\nspaces "), ["it", "'s", "  ", " three", "\n", "\n", "spaces", " "]);
        assert_eq!(split("a1b2 3.5!?"), ["a", "1", "b", "2", " 3", ".", "5", "!?"]);
        assert_eq!(split("don't 'xy"), ["don", "'t", " '", "xy"]);
        assert_eq!(split("héllo 世界"), ["héllo", " 世界"]);
        assert_eq!(split(" \n x"), [" \n", " x"]);
        // Marks are not letters: Devanagari vowel signs and a combining accent break the run.
        assert_eq!(split("नमस्ते e\u{301}x"), ["नमस", "्", "त", "े", " e", "\u{301}", "x"]);
    }

    #[test]
    fn digits_are_isolated() {
        let t = "ab 123x";
        let pieces: Vec<&str> = split_digits(t).into_iter().map(|(a, b)| &t[a..b]).collect();
        assert_eq!(pieces, ["ab ", "1", "2", "3", "x"]);
    }

    fn tiny() -> Tokenizer {
        let table = byte_to_char_table();
        let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
        tokens.extend(["ab", "abc", "Ġa", "<s>"].map(String::from));
        let merges = [("a", "b"), ("ab", "c"), ("Ġ", "a")].map(|(a, b)| (a.to_string(), b.to_string()));
        let added = vec![AddedToken { content: "<s>".into(), id: 259, special: true }];
        Tokenizer::new(tokens, &merges, added).unwrap()
    }

    #[test]
    fn merges_apply_by_rank_and_round_trip() {
        let t = tiny();
        let ids = t.encode("abc a<s>ab", true);
        assert_eq!(ids, vec![257, 258, 259, 256]);
        assert_eq!(t.decode(&ids, false), "abc a<s>ab");
        assert_eq!(t.decode(&ids, true), "abc aab");
        // Half of a two-byte character decodes to the replacement character.
        let e_acute = t.encode("é", false);
        assert_eq!(e_acute.len(), 2);
        assert_eq!(t.decode(&e_acute[..1], false), "\u{fffd}");
    }
}

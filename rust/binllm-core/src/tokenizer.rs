//! Byte-level BPE (GPT-2, SmolLM2, Llama-3 and the BitNet / Falcon vocabularies built on them),
//! built from a GGUF file's `tokenizer.ggml.*` metadata or a Hugging Face `tokenizer.json`, so
//! that every binding (the browser build first) tokenizes without the `tokenizers` library.
//!
//! There is one mapping from GGUF metadata to a tokenizer: [`hf_json_from_gguf`] writes the
//! `tokenizer.json` that the metadata describes (the Python package hands it to `tokenizers`),
//! and [`Tokenizer::from_gguf`] reads that same text with [`Tokenizer::from_json`].
//!
//! The reference is the `tokenizers` library, and ids must equal it exactly:
//! - added tokens (GGUF control / user-defined tokens, tokenizer.json `added_tokens`) are cut
//!   out of the raw text first, leftmost-longest, and map to their id whole;
//! - the pre-tokenizer is a sequence of steps, each splitting every piece the earlier ones made:
//!   `Digits(individual_digits)`, `Split` by one of the regexes in [`PRE_TOKENIZERS`] (matched
//!   by hand here, no regex crate), and last `ByteLevel`, optionally with GPT-2's regex
//!   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`. `\p{N}` is
//!   `char::is_numeric`, `\p{L}` is alphabetic minus numbers and a table of alphabetic marks
//!   (`ALPHABETIC_NON_LETTERS`), `\s` is `char::is_whitespace` (Unicode White_Space, as
//!   Oniguruma's `\s`, which `tokenizers` uses);
//! - each piece's bytes map to GPT-2's printable byte alphabet, then merges apply lowest rank
//!   first, leftmost on ties (what `tokenizers`' merge heap does).
//!
//! Decoding maps the byte alphabet back and replaces invalid UTF-8 with U+FFFD, as the
//! `ByteLevel` decoder does; special added tokens are skipped when asked.

use crate::error::{Error, Result};
use crate::loader::{GgufFile, GgufValue};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The Llama-3 pre-tokenizer regex, verbatim as Meta-Llama-3's tokenizer.json `Split` pattern
/// holds it (and as llama.cpp's src/llama-vocab.cpp quotes it for `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a pre-tokenizer splits text, as `tokenizers` pre-tokenizers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// `ByteLevel(add_prefix_space=false, use_regex=true)`: GPT-2's regex.
    Gpt2,
    /// `Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]`.
    DigitsThenGpt2,
    /// `Sequence[Split(Regex(LLAMA3_REGEX), Isolated), ByteLevel(use_regex=false)]`.
    Llama3,
}

/// A llama.cpp `tokenizer.ggml.pre` name binllm implements.
#[derive(Clone, Copy, Debug)]
pub struct PreTokenizerName {
    pub name: &'static str,
    pub kind: PreTokenizerKind,
    /// llama.cpp sets `ignore_merges` for this name (a word in the vocabulary is one token).
    pub ignore_merges: bool,
}

/// The `tokenizer.ggml.pre` names binllm reads. Sources: llama.cpp src/llama-vocab.cpp (the
/// name -> `LLAMA_VOCAB_PRE_TYPE_*` table in `llama_vocab::impl::load`, and the regexes of each
/// type in `llm_tokenizer_bpe`), convert_hf_to_gguf.py (which model gets which name):
/// - `gpt-2` (type GPT2: GPT-2's regex alone) is openai-community/gpt2's;
/// - `smollm` (type SMOLLM: `\p{N}`, then GPT-2's regex) is SmolLM / SmolLM2's, whose
///   tokenizer.json says `Sequence[Digits(individual_digits), ByteLevel]`;
/// - `llama-bpe` (also `llama3`, `llama-v3`) is Meta-Llama-3's (BitNet b1.58 2B4T and
///   HF1BitLLM/Llama3-8B-1.58 use its tokenizer), `falcon3` is tiiuae/Falcon3-*'s (the
///   Falcon3 1.58bit GGUFs): type LLAMA3, the Llama-3 regex, `ignore_merges`;
/// - `falcon_e` is what microsoft/BitNet's utils/convert-hf-to-gguf-bitnet.py writes for
///   tiiuae/Falcon-E-*; mainline llama.cpp has no such name, and BitNet's and ik_llama.cpp's
///   llama.cpp (ik_llama.cpp #555) read it as type LLAMA3 with `ignore_merges`, like `falcon3`;
/// - `smaug-bpe` (type SMAUG) is "same as llama3" in llama-vocab.cpp, without `ignore_merges`.
///
/// llama.cpp's `default` (used when `tokenizer.ggml.pre` is missing) splits by four regexes
/// (punctuation runs, GPT-2's, `\p{N}+`, `[0-9][0-9][0-9]`) that binllm does not implement, so
/// it is refused like any other name not listed.
pub const PRE_TOKENIZERS: &[PreTokenizerName] = &[
    PreTokenizerName { name: "gpt-2", kind: PreTokenizerKind::Gpt2, ignore_merges: false },
    PreTokenizerName { name: "smollm", kind: PreTokenizerKind::DigitsThenGpt2, ignore_merges: false },
    PreTokenizerName { name: "llama-bpe", kind: PreTokenizerKind::Llama3, ignore_merges: true },
    PreTokenizerName { name: "llama3", kind: PreTokenizerKind::Llama3, ignore_merges: true },
    PreTokenizerName { name: "llama-v3", kind: PreTokenizerKind::Llama3, ignore_merges: true },
    PreTokenizerName { name: "falcon3", kind: PreTokenizerKind::Llama3, ignore_merges: true },
    PreTokenizerName { name: "falcon_e", kind: PreTokenizerKind::Llama3, ignore_merges: true },
    PreTokenizerName { name: "smaug-bpe", kind: PreTokenizerKind::Llama3, ignore_merges: false },
];

impl PreTokenizerKind {
    /// The `tokenizers` pre-tokenizer (tokenizer.json `pre_tokenizer`) that splits text this way.
    pub fn to_json(self) -> Value {
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        match self {
            PreTokenizerKind::Gpt2 => byte_level(true),
            PreTokenizerKind::DigitsThenGpt2 => json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
            }),
            PreTokenizerKind::Llama3 => json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
                    byte_level(false),
                ],
            }),
        }
    }
}

/// One step of a pre-tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreStep {
    /// `Digits(individual_digits=true)`.
    Digits,
    /// `Split(Regex(LLAMA3_REGEX), Isolated, invert=false)`.
    SplitLlama3,
    ByteLevel {
        add_prefix_space: bool,
        use_regex: bool,
    },
}

/// The steps of a tokenizer.json `pre_tokenizer`; anything binllm does not implement exactly is
/// `Unsupported`. `ByteLevel` comes once, last.
fn parse_pre_tokenizer(pre: &Value) -> Result<Vec<PreStep>> {
    fn walk(pre: &Value, out: &mut Vec<PreStep>) -> Result<()> {
        let kind = pre.get("type").and_then(Value::as_str);
        match kind {
            Some("Sequence") => {
                for p in pre.get("pretokenizers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
                    walk(p, out)?;
                }
            }
            Some("Digits") => {
                if !pre.get("individual_digits").and_then(Value::as_bool).unwrap_or(false) {
                    crate::bail!(Unsupported, "tokenizer.json: Digits without individual_digits is not supported");
                }
                out.push(PreStep::Digits);
            }
            Some("Split") => {
                let regex = pre.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str);
                let behavior = pre.get("behavior").and_then(Value::as_str);
                let invert = pre.get("invert").and_then(Value::as_bool).unwrap_or(false);
                match (regex, behavior, invert) {
                    (Some(LLAMA3_REGEX), Some("Isolated"), false) => out.push(PreStep::SplitLlama3),
                    (Some(r), Some("Isolated"), false) => crate::bail!(Unsupported, "tokenizer.json: Split pattern {r:?} is not one binllm implements"),
                    _ => crate::bail!(Unsupported, "tokenizer.json: only Split by a known regex, Isolated, not inverted, is supported (got {pre})"),
                }
            }
            Some("ByteLevel") => out.push(PreStep::ByteLevel {
                add_prefix_space: pre.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false),
                use_regex: pre.get("use_regex").and_then(Value::as_bool).unwrap_or(true),
            }),
            _ => crate::bail!(Unsupported, "tokenizer.json: pre-tokenizer {:?} is not supported (binllm reads byte-level BPE)", kind),
        }
        Ok(())
    }
    let mut steps = Vec::new();
    walk(pre, &mut steps)?;
    let byte_levels = steps.iter().filter(|s| matches!(s, PreStep::ByteLevel { .. })).count();
    if byte_levels != 1 || !matches!(steps.last(), Some(PreStep::ByteLevel { .. })) {
        crate::bail!(Unsupported, "tokenizer.json: the pre-tokenizer must end with its one ByteLevel step (binllm reads byte-level BPE)");
    }
    Ok(steps)
}

/// llama.cpp's `tokenizer.ggml.pre` name for a tokenizer.json `pre_tokenizer` (JSON text): the
/// first name in [`PRE_TOKENIZERS`] that splits text the same way, or None.
pub fn pre_tokenizer_name(pre_tokenizer_json: &str) -> Option<&'static str> {
    let pre: Value = serde_json::from_str(pre_tokenizer_json).ok()?;
    let steps = parse_pre_tokenizer(&pre).ok()?;
    let kind = match steps.as_slice() {
        [PreStep::ByteLevel { add_prefix_space: false, use_regex: true }] => PreTokenizerKind::Gpt2,
        [PreStep::Digits, PreStep::ByteLevel { add_prefix_space: false, use_regex: true }] => PreTokenizerKind::DigitsThenGpt2,
        [PreStep::SplitLlama3, PreStep::ByteLevel { add_prefix_space: false, use_regex: false }] => PreTokenizerKind::Llama3,
        _ => return None,
    };
    PRE_TOKENIZERS.iter().find(|p| p.kind == kind).map(|p| p.name)
}

/// The Hugging Face tokenizer.json a GGUF file's metadata describes: its embedded
/// `tokenizer.huggingface.json` when present, else one built from `tokenizer.ggml.*`.
pub fn hf_json_from_gguf(file: &GgufFile<'_>) -> Result<String> {
    hf_json_from_metadata(&file.metadata)
}

/// [`hf_json_from_gguf`] for metadata as (key, value) pairs.
///
/// From `tokenizer.ggml.*`: a BPE model (`tokens` with their ids, `merges`), the pre-tokenizer
/// that `tokenizer.ggml.pre` names (see [`PRE_TOKENIZERS`]; any other name, `default`, or none
/// at all is `Unsupported`), a ByteLevel decoder, and control (type 3) and user-defined (type 4)
/// tokens as special added tokens. BOS handling (`add_bos_token`) is left to the caller.
pub fn hf_json_from_metadata(meta: &[(String, GgufValue)]) -> Result<String> {
    let get = |key: &str| meta.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    if let Some(v) = get("tokenizer.huggingface.json") {
        let text = v.as_str().ok_or_else(|| Error::Format("tokenizer.huggingface.json is not a string".into()))?;
        return Ok(text.to_string());
    }
    let kind = get("tokenizer.ggml.model").and_then(GgufValue::as_str);
    let tokens = get("tokenizer.ggml.tokens").and_then(GgufValue::as_string_list);
    let (Some(kind), Some(tokens)) = (kind, tokens) else {
        crate::bail!(Unsupported, "the GGUF file carries no tokenizer (no tokenizer.ggml.model / tokens)");
    };
    if kind != "gpt2" {
        crate::bail!(Unsupported, "GGUF tokenizer model '{kind}': binllm reads byte-level BPE ('gpt2') tokenizers");
    }
    let pre = match get("tokenizer.ggml.pre") {
        None => crate::bail!(
            Unsupported,
            "the GGUF file has no tokenizer.ggml.pre; llama.cpp then splits text by its 'default' rules, which binllm does not implement"
        ),
        Some(v) => v.as_str().ok_or_else(|| Error::Format("tokenizer.ggml.pre is not a string".into()))?,
    };
    let Some(pre) = PRE_TOKENIZERS.iter().find(|p| p.name == pre) else {
        let known: Vec<&str> = PRE_TOKENIZERS.iter().map(|p| p.name).collect();
        crate::bail!(Unsupported, "GGUF pre-tokenizer (tokenizer.ggml.pre) '{pre}' is not one binllm implements ({})", known.join(", "));
    };
    let merges: Vec<Value> = match get("tokenizer.ggml.merges") {
        None => Vec::new(),
        Some(v) => v
            .as_string_list()
            .ok_or_else(|| Error::Format("tokenizer.ggml.merges is not a list of strings".into()))?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok(json!([a, b])),
                None => Err(Error::Format(format!("tokenizer merge '{m}' has no space"))),
            })
            .collect::<Result<_>>()?,
    };
    // A text listed twice maps to its last id, as a Python dict built from the list does.
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        vocab.insert(t.to_string(), json!(id));
    }
    // Control tokens (type 3) and user-defined ones (type 4) are matched whole, never split.
    let types = get("tokenizer.ggml.token_type").and_then(GgufValue::as_array).unwrap_or(&[]);
    let added: Vec<Value> = types
        .iter()
        .zip(&tokens)
        .filter(|(t, text)| matches!(t.as_i64(), Some(3 | 4)) && !text.is_empty())
        .map(|(_, text)| {
            let id = &vocab[*text];
            json!({"id": id, "content": text, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre.kind.to_json(),
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": pre.ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    });
    Ok(spec.to_string())
}

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
    /// The pre-tokenizer's steps, `ByteLevel` last.
    pre: Vec<PreStep>,
    ignore_merges: bool,
    /// Ids the post-processor puts around the text (tokenizer.json `TemplateProcessing`).
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// A GGUF file's `tokenizer.ggml.add_bos_token`: prepend this id unless the text starts with it.
    bos_if_missing: Option<u32>,
    /// At least the bytes of text any one id stands for (the longest token's or added token's
    /// UTF-8 length; 0 without tokens); see [`Tokenizer::min_token_count`].
    max_token_bytes: usize,
    /// Whether each byte's character is in the vocabulary: a byte that is not is dropped.
    byte_kept: [bool; 256],
}

/// Token ids at or above this are refused: real vocabularies stop near 2^18, and an id table
/// must not be sized by a hostile number.
pub(crate) const ID_LIMIT: u64 = 1 << 24;

/// The id tokenizer.json gives `token` (`id` as written), or the error naming both (the caller
/// names the file: `Error::at`).
pub(crate) fn token_id(token: &str, id: &Value) -> Result<u32> {
    match id.as_u64() {
        Some(i) if i < ID_LIMIT => Ok(i as u32),
        _ => crate::bail!(Format, "token '{token}' has id {id}; ids are integers from 0 to {}", ID_LIMIT - 1),
    }
}

/// The length of an id-indexed table for `count` tokens whose largest id is `largest`. Ids may
/// have a few gaps, but a table far longer than the file's own tokens is refused before it is
/// allocated: one token with id 16,777,215 must not cost hundreds of megabytes. The caller
/// names the file (`Error::at`).
pub(crate) fn id_table_len(largest: Option<u32>, count: usize) -> Result<usize> {
    let len = largest.map_or(0, |id| id as usize + 1);
    if len > 2 * count + 1024 {
        crate::bail!(Format, "token id {} is far beyond its {count} tokens (ids must run from 0 with few gaps)", len - 1);
    }
    Ok(len)
}

/// GPT-2's byte alphabet read backwards: the byte each of its 256 characters stands for.
pub(crate) fn char_to_byte_table() -> HashMap<char, u8> {
    byte_to_char_table().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect()
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
    (0x0345, 0x0345),
    (0x0363, 0x036F),
    (0x05B0, 0x05BD),
    (0x05BF, 0x05BF),
    (0x05C1, 0x05C2),
    (0x05C4, 0x05C5),
    (0x05C7, 0x05C7),
    (0x0610, 0x061A),
    (0x064B, 0x0657),
    (0x0659, 0x065F),
    (0x0670, 0x0670),
    (0x06D6, 0x06DC),
    (0x06E1, 0x06E4),
    (0x06E7, 0x06E8),
    (0x06ED, 0x06ED),
    (0x0711, 0x0711),
    (0x0730, 0x073F),
    (0x07A6, 0x07B0),
    (0x0816, 0x0817),
    (0x081B, 0x0823),
    (0x0825, 0x0827),
    (0x0829, 0x082C),
    (0x08D4, 0x08DF),
    (0x08E3, 0x08E9),
    (0x08F0, 0x0903),
    (0x093A, 0x093B),
    (0x093E, 0x094C),
    (0x094E, 0x094F),
    (0x0955, 0x0957),
    (0x0962, 0x0963),
    (0x0981, 0x0983),
    (0x09BE, 0x09C4),
    (0x09C7, 0x09C8),
    (0x09CB, 0x09CC),
    (0x09D7, 0x09D7),
    (0x09E2, 0x09E3),
    (0x0A01, 0x0A03),
    (0x0A3E, 0x0A42),
    (0x0A47, 0x0A48),
    (0x0A4B, 0x0A4C),
    (0x0A51, 0x0A51),
    (0x0A70, 0x0A71),
    (0x0A75, 0x0A75),
    (0x0A81, 0x0A83),
    (0x0ABE, 0x0AC5),
    (0x0AC7, 0x0AC9),
    (0x0ACB, 0x0ACC),
    (0x0AE2, 0x0AE3),
    (0x0AFA, 0x0AFC),
    (0x0B01, 0x0B03),
    (0x0B3E, 0x0B44),
    (0x0B47, 0x0B48),
    (0x0B4B, 0x0B4C),
    (0x0B56, 0x0B57),
    (0x0B62, 0x0B63),
    (0x0B82, 0x0B82),
    (0x0BBE, 0x0BC2),
    (0x0BC6, 0x0BC8),
    (0x0BCA, 0x0BCC),
    (0x0BD7, 0x0BD7),
    (0x0C00, 0x0C04),
    (0x0C3E, 0x0C44),
    (0x0C46, 0x0C48),
    (0x0C4A, 0x0C4C),
    (0x0C55, 0x0C56),
    (0x0C62, 0x0C63),
    (0x0C81, 0x0C83),
    (0x0CBE, 0x0CC4),
    (0x0CC6, 0x0CC8),
    (0x0CCA, 0x0CCC),
    (0x0CD5, 0x0CD6),
    (0x0CE2, 0x0CE3),
    (0x0D00, 0x0D03),
    (0x0D3E, 0x0D44),
    (0x0D46, 0x0D48),
    (0x0D4A, 0x0D4C),
    (0x0D57, 0x0D57),
    (0x0D62, 0x0D63),
    (0x0D81, 0x0D83),
    (0x0DCF, 0x0DD4),
    (0x0DD6, 0x0DD6),
    (0x0DD8, 0x0DDF),
    (0x0DF2, 0x0DF3),
    (0x0E31, 0x0E31),
    (0x0E34, 0x0E3A),
    (0x0E4D, 0x0E4D),
    (0x0EB1, 0x0EB1),
    (0x0EB4, 0x0EB9),
    (0x0EBB, 0x0EBC),
    (0x0ECD, 0x0ECD),
    (0x0F71, 0x0F83),
    (0x0F8D, 0x0F97),
    (0x0F99, 0x0FBC),
    (0x102B, 0x1036),
    (0x1038, 0x1038),
    (0x103B, 0x103E),
    (0x1056, 0x1059),
    (0x105E, 0x1060),
    (0x1062, 0x1064),
    (0x1067, 0x106D),
    (0x1071, 0x1074),
    (0x1082, 0x108D),
    (0x108F, 0x108F),
    (0x109A, 0x109D),
    (0x1712, 0x1713),
    (0x1732, 0x1733),
    (0x1752, 0x1753),
    (0x1772, 0x1773),
    (0x17B6, 0x17C8),
    (0x1885, 0x1886),
    (0x18A9, 0x18A9),
    (0x1920, 0x192B),
    (0x1930, 0x1938),
    (0x1A17, 0x1A1B),
    (0x1A55, 0x1A5E),
    (0x1A61, 0x1A74),
    (0x1ABF, 0x1AC0),
    (0x1ACC, 0x1ACE),
    (0x1B00, 0x1B04),
    (0x1B35, 0x1B43),
    (0x1B80, 0x1B82),
    (0x1BA1, 0x1BA9),
    (0x1BAC, 0x1BAD),
    (0x1BE7, 0x1BF1),
    (0x1C24, 0x1C36),
    (0x1DD3, 0x1DF4),
    (0x24B6, 0x24E9),
    (0x2DE0, 0x2DFF),
    (0xA674, 0xA67B),
    (0xA69E, 0xA69F),
    (0xA802, 0xA802),
    (0xA80B, 0xA80B),
    (0xA823, 0xA827),
    (0xA880, 0xA881),
    (0xA8B4, 0xA8C3),
    (0xA8C5, 0xA8C5),
    (0xA8FF, 0xA8FF),
    (0xA926, 0xA92A),
    (0xA947, 0xA952),
    (0xA980, 0xA983),
    (0xA9B4, 0xA9BF),
    (0xA9E5, 0xA9E5),
    (0xAA29, 0xAA36),
    (0xAA43, 0xAA43),
    (0xAA4C, 0xAA4D),
    (0xAA7B, 0xAA7D),
    (0xAAB0, 0xAAB0),
    (0xAAB2, 0xAAB4),
    (0xAAB7, 0xAAB8),
    (0xAABE, 0xAABE),
    (0xAAEB, 0xAAEF),
    (0xAAF5, 0xAAF5),
    (0xABE3, 0xABEA),
    (0xFB1E, 0xFB1E),
    (0x10376, 0x1037A),
    (0x10A01, 0x10A03),
    (0x10A05, 0x10A06),
    (0x10A0C, 0x10A0F),
    (0x10D24, 0x10D27),
    (0x10EAB, 0x10EAC),
    (0x11000, 0x11002),
    (0x11038, 0x11045),
    (0x11073, 0x11074),
    (0x11080, 0x11082),
    (0x110B0, 0x110B8),
    (0x110C2, 0x110C2),
    (0x11100, 0x11102),
    (0x11127, 0x11132),
    (0x11145, 0x11146),
    (0x11180, 0x11182),
    (0x111B3, 0x111BF),
    (0x111CE, 0x111CF),
    (0x1122C, 0x11234),
    (0x11237, 0x11237),
    (0x1123E, 0x1123E),
    (0x112DF, 0x112E8),
    (0x11300, 0x11303),
    (0x1133E, 0x11344),
    (0x11347, 0x11348),
    (0x1134B, 0x1134C),
    (0x11357, 0x11357),
    (0x11362, 0x11363),
    (0x11435, 0x11441),
    (0x11443, 0x11445),
    (0x114B0, 0x114C1),
    (0x115AF, 0x115B5),
    (0x115B8, 0x115BE),
    (0x115DC, 0x115DD),
    (0x11630, 0x1163E),
    (0x11640, 0x11640),
    (0x116AB, 0x116B5),
    (0x1171D, 0x1172A),
    (0x1182C, 0x11838),
    (0x11930, 0x11935),
    (0x11937, 0x11938),
    (0x1193B, 0x1193C),
    (0x11940, 0x11940),
    (0x11942, 0x11942),
    (0x119D1, 0x119D7),
    (0x119DA, 0x119DF),
    (0x119E4, 0x119E4),
    (0x11A01, 0x11A0A),
    (0x11A35, 0x11A39),
    (0x11A3B, 0x11A3E),
    (0x11A51, 0x11A5B),
    (0x11A8A, 0x11A97),
    (0x11C2F, 0x11C36),
    (0x11C38, 0x11C3E),
    (0x11C92, 0x11CA7),
    (0x11CA9, 0x11CB6),
    (0x11D31, 0x11D36),
    (0x11D3A, 0x11D3A),
    (0x11D3C, 0x11D3D),
    (0x11D3F, 0x11D41),
    (0x11D43, 0x11D43),
    (0x11D47, 0x11D47),
    (0x11D8A, 0x11D8E),
    (0x11D90, 0x11D91),
    (0x11D93, 0x11D96),
    (0x11EF3, 0x11EF6),
    (0x16F4F, 0x16F4F),
    (0x16F51, 0x16F87),
    (0x16F8F, 0x16F92),
    (0x16FF0, 0x16FF1),
    (0x1BC9E, 0x1BC9E),
    (0x1E000, 0x1E006),
    (0x1E008, 0x1E018),
    (0x1E01B, 0x1E021),
    (0x1E023, 0x1E024),
    (0x1E026, 0x1E02A),
    (0x1E947, 0x1E947),
    (0x1F130, 0x1F149),
    (0x1F150, 0x1F169),
    (0x1F170, 0x1F189),
];

/// `\p{L}`: alphabetic, not numeric (`Nl`), and not one of the marks above.
fn is_letter(c: char) -> bool {
    if !c.is_alphabetic() || c.is_numeric() {
        return false;
    }
    let cp = c as u32;
    cp < 0x0345
        || ALPHABETIC_NON_LETTERS
            .binary_search_by(|&(a, b)| {
                if b < cp {
                    std::cmp::Ordering::Less
                } else if a > cp {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_err()
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

/// End of the run of `class` characters starting at `from`.
fn run_end(chars: &[char], from: usize, class: impl Fn(char) -> bool) -> usize {
    chars[from..].iter().position(|&c| !class(c)).map_or(chars.len(), |k| from + k)
}

fn is_newline(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// Splits `text` by [`LLAMA3_REGEX`] (`Split` with `Isolated`); returns byte ranges covering all
/// of `text`. At each position the first alternative that matches wins (leftmost-first, as
/// Oniguruma and Rust's regex match), each with its greedy extent after backtracking:
/// 1. `(?i:'s|'t|'re|'ve|'m|'ll|'d)`, any case (and `ſ`, which folds to `s`);
/// 2. `[^\r\n\p{L}\p{N}]?\p{L}+`: letters, after one optional character that is neither a
///    newline, a letter nor a number (a space, a tab, punctuation, ...);
/// 3. `\p{N}{1,3}`: at most three numbers;
/// 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`: symbols after an optional space, then any newlines;
/// 5. `\s*[\r\n]+`: in a run of whitespace that holds newlines, up to its last newline;
/// 6. `\s+(?!\S)`: a run of whitespace at the end of the text, or all of it but its last
///    character, which goes to what follows;
/// 7. `\s+`: one whitespace character before a non-space.
///
/// Every character is whitespace, a letter, a number, or none of them, so the matches leave no
/// gaps.
fn llama3_split(text: &str) -> Vec<(usize, usize)> {
    let offsets: Vec<usize> = text.char_indices().map(|(at, _)| at).chain([text.len()]).collect();
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let end = llama3_match(&chars, i);
        out.push((offsets[i], offsets[end]));
        i = end;
    }
    out
}

/// Where the [`LLAMA3_REGEX`] match starting at `i` ends (always after `i`).
fn llama3_match(chars: &[char], i: usize) -> usize {
    let n = chars.len();
    let at = |k: usize| chars.get(k).copied();
    let c = chars[i];
    if c == '\'' {
        let lower = |k: usize| at(k).map(|c| if c == 'ſ' { 's' } else { c.to_ascii_lowercase() });
        match (lower(i + 1), lower(i + 2)) {
            (Some('s' | 't' | 'm' | 'd'), _) => return i + 2,
            (Some('r' | 'v'), Some('e')) | (Some('l'), Some('l')) => return i + 3,
            _ => {}
        }
    }
    if is_letter(c) {
        return run_end(chars, i, is_letter);
    }
    if !is_newline(c) && !c.is_numeric() && at(i + 1).is_some_and(is_letter) {
        return run_end(chars, i + 1, is_letter);
    }
    if c.is_numeric() {
        return run_end(&chars[..n.min(i + 3)], i, char::is_numeric);
    }
    let symbols = if c == ' ' && at(i + 1).is_some_and(is_other) { i + 1 } else { i };
    if is_other(chars[symbols]) {
        let end = run_end(chars, symbols, is_other);
        return run_end(chars, end, is_newline);
    }
    // `c` is whitespace.
    let end = run_end(chars, i, char::is_whitespace);
    if let Some(last) = (i..end).rev().find(|&k| is_newline(chars[k])) {
        return last + 1;
    }
    if end == n || end - i == 1 {
        end
    } else {
        end - 1
    }
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
        // A BPE token's characters each stand for one byte of text, an added token for its
        // content's bytes: either way at most the text's UTF-8 length.
        let byte_kept = byte_to_char_table().map(|c| vocab.contains_key(c.encode_utf8(&mut [0u8; 4]) as &str));
        let max_token_bytes = vocab.keys().map(String::len).chain(added.iter().map(|t| t.content.len())).max().unwrap_or(0);
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
            pre: vec![PreStep::ByteLevel { add_prefix_space: false, use_regex: true }],
            ignore_merges: false,
            prefix: Vec::new(),
            suffix: Vec::new(),
            bos_if_missing: None,
            max_token_bytes,
            byte_kept,
        })
    }

    /// The tokenizer a GGUF file describes: [`hf_json_from_gguf`] read by [`Tokenizer::from_json`].
    /// Without an embedded tokenizer.json, `tokenizer.ggml.add_bos_token` makes `encode` put
    /// `tokenizer.ggml.bos_token_id` first unless the ids start with it.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Tokenizer> {
        let mut tok = Tokenizer::from_json(&hf_json_from_gguf(file)?)?;
        let embedded = file.get("tokenizer.huggingface.json").is_some();
        if !embedded && file.get("tokenizer.ggml.add_bos_token").and_then(GgufValue::as_bool).unwrap_or(false) {
            tok.bos_if_missing = file.get("tokenizer.ggml.bos_token_id").and_then(GgufValue::as_u64).map(|v| v as u32);
        }
        Ok(tok)
    }

    /// A Hugging Face `tokenizer.json` with a byte-level BPE model. Anything else (a
    /// normalizer, a `Split` by a regex not in [`PRE_TOKENIZERS`], WordPiece, ...) is
    /// `Unsupported`, never a silently different tokenization.
    pub fn from_json(text: &str) -> Result<Tokenizer> {
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
            entries.push((t.clone(), token_id(t, id).map_err(|e| e.at("tokenizer.json"))?));
        }
        let mut added = Vec::new();
        for a in v.get("added_tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            let content = a.get("content").and_then(Value::as_str).unwrap_or("").to_string();
            let (Some(id), false) = (a.get("id"), content.is_empty()) else {
                return Err(Error::Format("tokenizer.json: an added token lacks its id or content".into()));
            };
            let id = token_id(&content, id).map_err(|e| e.at("tokenizer.json"))?;
            let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
            entries.push((content.clone(), id));
            added.push(AddedToken { content, id, special });
        }
        let size = id_table_len(entries.iter().map(|e| e.1).max(), entries.len()).map_err(|e| e.at("tokenizer.json"))?;
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
        tok.pre = parse_pre_tokenizer(v.get("pre_tokenizer").unwrap_or(&Value::Null))?;
        tok.configure_post_processor(v.get("post_processor").unwrap_or(&Value::Null))?;
        match v.get("decoder").and_then(|d| d.get("type")).and_then(Value::as_str) {
            None | Some("ByteLevel") => Ok(tok),
            Some(other) => Err(unsupported(&format!("decoder '{other}' is not supported"))),
        }
    }

    fn configure_post_processor(&mut self, post: &Value) -> Result<()> {
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

    /// A lower bound on `encode(text, _).len()` from one pass over the text's bytes, without
    /// tokenizing it: every byte whose character is in the vocabulary ends up in some id, and
    /// no id stands for more bytes than the longest token (bytes outside the vocabulary, such
    /// as the control bytes SmolLM2's lacks, are dropped and not counted). A caller refuses a
    /// prompt longer than its context with this before spending time on tokenizing it.
    pub fn min_token_count(&self, text: &str) -> usize {
        if self.max_token_bytes == 0 {
            return 0;
        }
        text.bytes().filter(|&b| self.byte_kept[b as usize]).count().div_ceil(self.max_token_bytes)
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
        // Each step splits every piece the steps before it made, as `tokenizers` does.
        let mut pieces = vec![text.to_string()];
        for step in &self.pre {
            let split: fn(&str) -> Vec<(usize, usize)> = match *step {
                PreStep::Digits => split_digits,
                PreStep::SplitLlama3 => llama3_split,
                PreStep::ByteLevel { add_prefix_space, use_regex } => {
                    for piece in &pieces {
                        let prefixed;
                        let piece = if add_prefix_space && !piece.starts_with(' ') {
                            prefixed = format!(" {piece}");
                            prefixed.as_str()
                        } else {
                            piece.as_str()
                        };
                        let words = if use_regex { gpt2_split(piece) } else { vec![(0, piece.len())] };
                        for (a, b) in words {
                            let mapped: String = piece[a..b].bytes().map(|byte| table[byte as usize]).collect();
                            self.bpe(&mapped, ids);
                        }
                    }
                    return;
                }
            };
            pieces = pieces.iter().flat_map(|p| split(p).into_iter().map(|(a, b)| p[a..b].to_string())).collect();
        }
    }

    /// Merges one pre-tokenized word: lowest rank first, leftmost among equal ranks.
    ///
    /// The symbols form a linked list (index arrays) and a heap holds candidate merges keyed by
    /// (rank, position of the left symbol), so a word of n characters costs O(n log n): one long
    /// unbroken word (a pasted blob, a run of one character) cannot stall the caller. An entry
    /// whose pair has changed since it was pushed is skipped when it comes up (lazy deletion).
    fn bpe(&self, word: &str, ids: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = self.vocab.get(word) {
                ids.push(id);
                return;
            }
        }
        // Characters outside the vocabulary are dropped, as `tokenizers` does without an unk token.
        let mut symbols: Vec<u32> = word.chars().filter_map(|c| self.vocab.get(c.encode_utf8(&mut [0u8; 4]) as &str).copied()).collect();
        let n = symbols.len();
        // Neighbours by index (NONE at the ends); a symbol merged into its left neighbour is
        // unlinked and marked dead. Symbol 0 is never a right symbol, so it heads the list.
        const NONE: usize = usize::MAX;
        let mut prev: Vec<usize> = (0..n).map(|i| i.checked_sub(1).unwrap_or(NONE)).collect();
        let mut next: Vec<usize> = (0..n).map(|i| if i + 1 < n { i + 1 } else { NONE }).collect();
        let mut alive = vec![true; n];
        let rank_of = |left: u32, right: u32| self.merges.get(&(left, right)).map(|&(rank, _)| rank);
        // Min-heap of (rank, left symbol's index): positions keep their order as symbols merge,
        // so the smallest entry is the lowest rank, leftmost among equal ranks.
        let mut heap: BinaryHeap<Reverse<(u32, usize)>> =
            symbols.windows(2).enumerate().filter_map(|(left, pair)| rank_of(pair[0], pair[1]).map(|rank| Reverse((rank, left)))).collect();
        while let Some(Reverse((rank, left))) = heap.pop() {
            // Stale unless the left symbol still lives and the pair starting there still has this
            // rank (a rank names one pair, so the pair is the one pushed).
            let right = next[left];
            if !alive[left] || right == NONE {
                continue;
            }
            let Some(&(current, merged)) = self.merges.get(&(symbols[left], symbols[right])) else { continue };
            if current != rank {
                continue;
            }
            symbols[left] = merged;
            alive[right] = false;
            let after = next[right];
            next[left] = after;
            if after != NONE {
                prev[after] = left;
            }
            // The merged symbol makes new pairs with both neighbours.
            let before = prev[left];
            if before != NONE {
                if let Some(rank) = rank_of(symbols[before], merged) {
                    heap.push(Reverse((rank, before)));
                }
            }
            if after != NONE {
                if let Some(rank) = rank_of(merged, symbols[after]) {
                    heap.push(Reverse((rank, left)));
                }
            }
        }
        let mut at = if n > 0 { 0 } else { NONE };
        while at != NONE {
            ids.push(symbols[at]);
            at = next[at];
        }
    }

    /// Text of `ids`; special added tokens are left out when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let char_to_byte = char_to_byte_table();
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

    fn tokenizer_with_ids(ids: &[u64]) -> String {
        let vocab: serde_json::Map<String, Value> = ids.iter().enumerate().map(|(i, &id)| (format!("t{i}"), json!(id))).collect();
        json!({"model": {"type": "BPE", "vocab": vocab, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"}}).to_string()
    }

    #[test]
    fn a_far_token_id_is_refused_before_its_table_is_allocated() {
        // What a real vocabulary looks like: dense, or a few gaps.
        assert_eq!(Tokenizer::from_json(&tokenizer_with_ids(&[0, 1, 2, 3])).unwrap().vocab_size(), 4);
        assert_eq!(Tokenizer::from_json(&tokenizer_with_ids(&[0, 1, 1000])).unwrap().vocab_size(), 1001);
        for far in [2000u64, 16_777_215] {
            let err = Tokenizer::from_json(&tokenizer_with_ids(&[0, 1, far])).unwrap_err();
            assert!(matches!(&err, Error::Format(m) if m.contains(&format!("token id {far} is far beyond its 3 tokens"))), "{err}");
            let err = crate::engine::Detokenizer::from_json(&tokenizer_with_ids(&[0, 1, far])).unwrap_err();
            assert!(matches!(&err, Error::Format(m) if m.contains("far beyond")), "{err}");
        }
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

    fn split3(text: &str) -> Vec<&str> {
        llama3_split(text).into_iter().map(|(a, b)| &text[a..b]).collect()
    }

    #[test]
    fn llama3_regex_splits_like_the_reference() {
        assert_eq!(split3("I'M you'LL it's ſ'ſ"), ["I", "'M", " you", "'LL", " it", "'s", " ſ", "'ſ"]);
        assert_eq!(split3("1234567 x1"), ["123", "456", "7", " x", "1"]);
        assert_eq!(split3("\r\n\r\n"), ["\r\n\r\n"]);
        assert_eq!(split3("hi  \n  x"), ["hi", "  \n", " ", " x"]);
        assert_eq!(split3("trailing   "), ["trailing", "   "]);
        assert_eq!(split3("a...b .com 'hello .x"), ["a", "...", "b", " .", "com", " '", "hello", " .", "x"]);
        assert_eq!(split3("'hello.com\tx"), ["'hello", ".com", "\tx"]);
        assert_eq!(split3(" ?!\n\nx\t.y"), [" ?!\n\n", "x", "\t", ".y"]);
        assert_eq!(split3("$123 don't"), ["$", "123", " don", "'t"]);
        assert_eq!(split3("日本語 🤖👍🏽!"), ["日本語", " 🤖👍🏽!"]);
        // Marks are not letters: a combining accent is a symbol and starts the next word.
        assert_eq!(split3("e\u{301}x"), ["e", "\u{301}x"]);
    }

    #[test]
    fn pre_tokenizer_names_round_trip() {
        for p in PRE_TOKENIZERS {
            let name = pre_tokenizer_name(&p.kind.to_json().to_string()).unwrap();
            assert_eq!(PRE_TOKENIZERS.iter().find(|q| q.name == name).unwrap().kind, p.kind);
        }
        assert_eq!(pre_tokenizer_name(r#"{"type":"ByteLevel","add_prefix_space":true}"#), None);
        let other = json!({"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false});
        assert_eq!(pre_tokenizer_name(&other.to_string()), None);
        assert!(matches!(parse_pre_tokenizer(&other), Err(Error::Unsupported(_))));
    }

    #[test]
    fn gguf_metadata_maps_pre_tokenizer_names() {
        let table = byte_to_char_table();
        let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
        tokens.extend(["12", "123", "<s>", "'S"].map(String::from));
        let meta = |pre: Option<&str>| {
            let mut m = vec![
                ("tokenizer.ggml.model".to_string(), GgufValue::String("gpt2".into())),
                ("tokenizer.ggml.tokens".to_string(), GgufValue::Array(tokens.iter().map(|t| GgufValue::String(t.clone())).collect())),
                ("tokenizer.ggml.merges".to_string(), GgufValue::Array(["1 2", "12 3", "' S"].map(|m| GgufValue::String(m.into())).to_vec())),
                ("tokenizer.ggml.token_type".to_string(), GgufValue::Array((0..tokens.len()).map(|i| GgufValue::I32(if i == 258 { 3 } else { 1 })).collect())),
            ];
            if let Some(pre) = pre {
                m.push(("tokenizer.ggml.pre".to_string(), GgufValue::String(pre.into())));
            }
            m
        };
        let encode = |pre: &str| Tokenizer::from_json(&hf_json_from_metadata(&meta(Some(pre))).unwrap()).unwrap().encode("1234'S<s>", false);
        // Byte b is token b; 256 = "12", 257 = "123", 258 = "<s>", 259 = "'S".
        assert_eq!(encode("gpt-2"), [257, b'4' as u32, b'\'' as u32, b'S' as u32, 258]);
        assert_eq!(encode("smollm"), [b'1', b'2', b'3', b'4', b'\'', b'S'].map(u32::from).into_iter().chain([258]).collect::<Vec<_>>());
        assert_eq!(encode("llama-bpe"), [257, b'4' as u32, 259, 258]);
        for bad in [Some("default"), Some("qwen2"), None] {
            let err = hf_json_from_metadata(&meta(bad)).unwrap_err();
            assert!(matches!(&err, Error::Unsupported(m) if m.contains(bad.unwrap_or("no tokenizer.ggml.pre"))), "{err}");
        }
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

    #[test]
    fn min_token_count_bounds_the_ids() {
        // tiny's longest tokens are 3 bytes ("abc", "Ġa", "<s>"), so "abc" * k is exactly k ids.
        let t = tiny();
        let word = "abc".repeat(1000);
        assert_eq!(t.min_token_count(&word), 1000);
        assert_eq!(t.encode(&word, false).len(), 1000);
        let mut rng = crate::loader::test_util::Rng::new(4);
        let alphabet = ['a', 'b', 'c', ' ', 'é', '<', 's', '>', '\n', '日'];
        for _ in 0..500 {
            let text: String = (0..rng.below(40)).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            assert!(t.min_token_count(&text) <= t.encode(&text, false).len(), "{text:?}");
        }
        // A vocabulary missing a byte drops that byte: only the kept bytes count ("ab ab" keeps 4
        // bytes, the longest token holds 2).
        let few = Tokenizer::new(["a", "b", "ab"].map(String::from).to_vec(), &[("a".into(), "b".into())], Vec::new()).unwrap();
        assert_eq!(few.min_token_count("ab ab"), 2);
        assert_eq!(few.encode("ab ab", false).len(), 2);
        assert_eq!(few.min_token_count("   "), 0);
    }

    /// The quadratic merge loop `bpe` replaced: scan every pair, merge the lowest rank
    /// (leftmost on ties), repeat. Slow, plainly right; what `bpe` must equal.
    fn bpe_reference(t: &Tokenizer, word: &str) -> Vec<u32> {
        if t.ignore_merges {
            if let Some(&id) = t.vocab.get(word) {
                return vec![id];
            }
        }
        let mut symbols: Vec<u32> = word.chars().filter_map(|c| t.vocab.get(c.encode_utf8(&mut [0u8; 4]) as &str).copied()).collect();
        loop {
            let best = symbols.windows(2).enumerate().filter_map(|(pos, pair)| t.merges.get(&(pair[0], pair[1])).map(|&(rank, id)| (rank, pos, id))).min();
            let Some((_, pos, id)) = best else { break };
            symbols[pos] = id;
            symbols.remove(pos + 1);
        }
        symbols
    }

    fn bpe(t: &Tokenizer, word: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        t.bpe(word, &mut ids);
        ids
    }

    /// A tokenizer over the characters of `alphabet` (the last one left out of the vocabulary,
    /// so that it is dropped) with `n_merges` random merges of tokens made so far: merged tokens
    /// merge again, and different merges may make the same text.
    fn random_merges(alphabet: &[char], n_merges: usize, rng: &mut crate::loader::test_util::Rng) -> Tokenizer {
        let mut tokens: Vec<String> = alphabet[..alphabet.len() - 1].iter().map(|c| c.to_string()).collect();
        let mut merges = Vec::new();
        for _ in 0..n_merges {
            let a = tokens[rng.below(tokens.len())].clone();
            let b = tokens[rng.below(tokens.len())].clone();
            let ab = format!("{a}{b}");
            if !tokens.contains(&ab) {
                tokens.push(ab);
            }
            merges.push((a, b));
        }
        Tokenizer::new(tokens, &merges, Vec::new()).unwrap()
    }

    #[test]
    fn bpe_equals_the_quadratic_reference() {
        let mut rng = crate::loader::test_util::Rng::new(18);
        let alphabet = ['a', 'b', 'c', 'd', '\u{20ac}'];
        for round in 0..200 {
            let k = 2 + rng.below(alphabet.len() - 1);
            let mut t = random_merges(&alphabet[alphabet.len() - k..], 1 + rng.below(40), &mut rng);
            t.ignore_merges = round % 4 == 0;
            let tokens: Vec<String> = t.vocab.keys().cloned().collect();
            for _ in 0..50 {
                let word: String = match rng.below(4) {
                    // A word in the vocabulary (one token under ignore_merges).
                    0 => tokens[rng.below(tokens.len())].clone(),
                    // Runs of one character: long chains of equal-rank ties.
                    1 => alphabet[rng.below(alphabet.len())].to_string().repeat(rng.below(40)),
                    _ => (0..rng.below(60)).map(|_| alphabet[rng.below(alphabet.len())]).collect(),
                };
                assert_eq!(bpe(&t, &word), bpe_reference(&t, &word), "round {round}, word {word:?}");
            }
        }
    }

    #[test]
    fn a_long_word_merges_in_n_log_n() {
        // The quadratic loop took minutes on these; `bpe` takes milliseconds.
        let tokens = ["a", "b", "aa", "aaaa", "ab", "abab"].map(String::from).to_vec();
        let merges = [("a", "a"), ("aa", "aa"), ("a", "b"), ("ab", "ab")].map(|(a, b)| (a.to_string(), b.to_string()));
        let t = Tokenizer::new(tokens, &merges, Vec::new()).unwrap();
        let (a, aaaa, abab) = (0, 3, 5);
        assert_eq!(bpe(&t, &"a".repeat(200_000)), vec![aaaa; 50_000]);
        let mut odd = vec![aaaa; 50_000];
        odd.push(a);
        assert_eq!(bpe(&t, &"a".repeat(200_001)), odd);
        assert_eq!(bpe(&t, &"ab".repeat(100_000)), vec![abab; 50_000]);

        // Random characters: the ids spell the word less its dropped character, and no pair
        // left could merge (BPE stops only there).
        let mut rng = crate::loader::test_util::Rng::new(200_000);
        let alphabet = ['a', 'b', 'c', 'd', '\u{20ac}'];
        let t = random_merges(&alphabet, 60, &mut rng);
        let word: String = (0..200_000).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        let ids = bpe(&t, &word);
        let spelled: String = ids.iter().map(|&id| t.id_to_token(id).unwrap()).collect();
        assert_eq!(spelled, word.replace('\u{20ac}', ""));
        assert!(ids.len() < 150_000, "{} ids", ids.len());
        assert!(ids.windows(2).all(|p| !t.merges.contains_key(&(p[0], p[1]))));
    }
}

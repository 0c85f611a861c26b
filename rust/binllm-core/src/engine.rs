//! Text generation, the one loop every binding drives: Python's `Model.generate` and `Engine`,
//! the browser's `generate`, the server.
//!
//! An [`Engine`] holds any number of sequences of one model, each with its own KV cache,
//! sampler and text stream. [`Engine::step`] runs every unfinished sequence one token further
//! in a single batched forward pass (`Model::forward_batch`: a new sequence's whole prompt, or
//! the previous token of a running one), samples, turns tokens into text and reports, per
//! sequence, the text that is ready and whether it finished and why. Sequences join with
//! [`Engine::add`] and leave with [`Engine::cancel`] between steps (continuous batching).
//!
//! Text comes out incrementally with O(1) work per token: a [`Detokenizer`] maps each token to
//! its bytes once, and [`TextStream`] holds back bytes that do not yet end a UTF-8 character
//! and text that may be the start of a stop string. The text equals the tokenizer's
//! `decode(new_tokens, skip_special_tokens=True)` (the `tokenizers` library's), cut before the
//! first stop string.

use crate::error::{Error, Result};
use crate::model::sampler::{Sampler, SamplingParams};
use crate::model::{KvCache, Model, Segment};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;

/// Each token's bytes in decoded text, read from a Hugging Face `tokenizer.json`'s decoder.
///
/// Decoders read: `ByteLevel` (GPT-2's byte alphabet; GPT-2, Llama-3, SmolLM2, BitNet 2B4T),
/// `Metaspace` (`▁` is a space; the first token's leading space is dropped unless the
/// prepend scheme is "never"), and Llama-2's `Sequence[Replace("▁", " "), ByteFallback, Fuse,
/// Strip(" ", 1, 0)]` (with `<0xNN>` tokens as bytes). Special added tokens decode to nothing
/// (`skip_special_tokens`). Any other decoder is `Unsupported`.
#[derive(Clone, Debug)]
pub struct Detokenizer {
    pieces: Vec<Box<[u8]>>,
    /// Drop one leading space of the text (Metaspace's first token, Llama-2's Strip).
    strip_first_space: bool,
}

impl Detokenizer {
    /// The detokenizer of tokenizer.json's text; an error names tokenizer.json.
    pub fn from_json(text: &str) -> Result<Detokenizer> {
        Self::from_json_at(text, "tokenizer.json")
    }

    /// [`Detokenizer::from_json`] of a tokenizer that came from `place` (a GGUF file's
    /// metadata, say): an error starts with `place`, as [`Detokenizer::check`]'s does.
    pub fn from_json_at(text: &str, place: &str) -> Result<Detokenizer> {
        let (entries, size, plan) = DetokenizerSource::read(text).and_then(DetokenizerSource::checked).map_err(|e| e.at(place))?;
        let mut pieces: Vec<Box<[u8]>> = vec![Box::default(); size];
        let table = crate::tokenizer::char_to_byte_table();
        for (token, id, special) in entries {
            if special {
                pieces[id as usize] = Box::default();
                continue;
            }
            pieces[id as usize] = plan.bytes(&token, &table).into_boxed_slice();
        }
        Ok(Detokenizer { pieces, strip_first_space: plan.strip_first_space })
    }

    /// Fails exactly where [`Detokenizer::from_json`] would (every id, the table's length, the
    /// decoder) without building the table: one pass over the file that skips the merges and
    /// decodes no token. A model load calls it, so a tokenizer.json the detokenizer cannot hold
    /// is refused there, while the table waits for the first generation (at a 128k vocabulary
    /// the check costs about 2/3 of the build: both are mostly this one pass). An error starts
    /// with `place`: "tokenizer.json" for a folder's file, the GGUF file for the tokenizer in
    /// its metadata.
    pub fn check(text: &str, place: &str) -> Result<()> {
        DetokenizerSource::read(text).and_then(DetokenizerSource::checked).map(|_| ()).map_err(|e| e.at(place))
    }

    /// Bytes of token `id` (empty for special tokens and ids outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map(|p| &p[..]).unwrap_or(&[])
    }

    /// The text of `ids`, all at once (what a [`TextStream`] hands out piece by piece).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut stream = TextStream::new(Vec::new());
        let mut text = String::new();
        for &id in ids {
            text.push_str(&stream.push(self, id).0);
        }
        text + &stream.finish()
    }
}

/// What a [`Detokenizer`] reads from tokenizer.json: `model.vocab` (a map of token to id, or
/// Unigram's list of `[piece, score]`), `added_tokens` and `decoder`, with the vocabulary's
/// tokens borrowed from the text where it has no escapes. Everything else (the merges above
/// all) is skipped unparsed.
struct DetokenizerSource<'a> {
    model_found: bool,
    vocab: Option<Vocab<'a>>,
    added_tokens: Vec<AddedToken<'a>>,
    decoder: Value,
}

/// One of `added_tokens`; what is missing is None.
#[derive(Default)]
struct AddedToken<'a> {
    content: Option<Cow<'a, str>>,
    id: Option<Value>,
    special: bool,
}

enum Vocab<'a> {
    /// `(token, id as written)`; the id is checked after parsing so the error can name it.
    Map(Vec<(Cow<'a, str>, Value)>),
    List(Vec<Value>),
}

/// `(token, id, special)` for every token, the id table's length, the decoder.
type CheckedSource<'a> = (Vec<(Cow<'a, str>, u32, bool)>, usize, DecoderPlan);

impl<'a> DetokenizerSource<'a> {
    fn read(text: &'a str) -> Result<DetokenizerSource<'a>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let source = (&mut de).deserialize_map(SourceVisitor).and_then(|s| de.end().map(|()| s));
        source.map_err(|e| Error::Format(e.to_string()))
    }

    /// The entries with their ids checked, the table's length and the decoder's plan: every
    /// check a Detokenizer makes, in one place. Errors do not name the file: callers do.
    fn checked(self) -> Result<CheckedSource<'a>> {
        if !self.model_found {
            crate::bail!(Format, "no model");
        }
        let token_id = crate::tokenizer::token_id;
        let mut entries = Vec::new();
        match self.vocab {
            None => crate::bail!(Format, "model has no vocab"),
            Some(Vocab::Map(map)) => {
                entries.reserve(map.len());
                for (token, id) in map {
                    let id = token_id(&token, &id)?;
                    entries.push((token, id, false));
                }
            }
            Some(Vocab::List(list)) => {
                entries.reserve(list.len());
                for (id, e) in list.into_iter().enumerate() {
                    let Some(token) = e.get(0).and_then(Value::as_str).map(str::to_string) else {
                        crate::bail!(Format, "bad Unigram vocabulary entry");
                    };
                    let id = token_id(&token, &Value::from(id))?;
                    entries.push((Cow::Owned(token), id, false));
                }
            }
        }
        for a in self.added_tokens {
            let (Some(content), Some(id)) = (a.content, a.id) else {
                crate::bail!(Format, "an added token lacks its id or content");
            };
            let id = token_id(&content, &id)?;
            entries.push((content, id, a.special));
        }
        let size = crate::tokenizer::id_table_len(entries.iter().map(|e| e.1).max(), entries.len())?;
        let plan = DecoderPlan::read(&self.decoder)?;
        Ok((entries, size, plan))
    }
}

/// tokenizer.json's top level: `model`, `added_tokens` and `decoder` are read, the rest skipped.
struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = DetokenizerSource<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut source = DetokenizerSource { model_found: false, vocab: None, added_tokens: Vec::new(), decoder: Value::Null };
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match &*key.0 {
                "model" => {
                    source.model_found = true;
                    source.vocab = map.next_value_seed(Any(ModelVisitor))?;
                }
                "added_tokens" => source.added_tokens = map.next_value_seed(Any(AddedTokensVisitor))?,
                "decoder" => source.decoder = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(source)
    }
}

/// `model`: its `vocab` is read, the rest (the merges) skipped. A model that is not an object
/// has no vocab.
struct ModelVisitor;

impl<'de> Visitor<'de> for ModelVisitor {
    type Value = Option<Vocab<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("model as an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut vocab = None;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if &*key.0 == "vocab" {
                vocab = Some(map.next_value_seed(Any(VocabVisitor))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(vocab)
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
}

struct VocabVisitor;

impl<'de> Visitor<'de> for VocabVisitor {
    type Value = Vocab<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("model.vocab as a map of token to id or a list of [piece, score]")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((token, id)) = map.next_entry::<Text<'de>, Value>()? {
            entries.push((token.0, id));
        }
        Ok(Vocab::Map(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(e) = seq.next_element::<Value>()? {
            entries.push(e);
        }
        Ok(Vocab::List(entries))
    }
}

/// `added_tokens`: a list (or null) of objects whose `content`, `id` and `special` are read.
struct AddedTokensVisitor;

impl<'de> Visitor<'de> for AddedTokensVisitor {
    type Value = Vec<AddedToken<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("added_tokens as a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        let mut tokens = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(token) = seq.next_element_seed(Any(AddedTokenVisitor))? {
            tokens.push(token);
        }
        Ok(tokens)
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(Vec::new())
    }
}

/// One added token: an object.
struct AddedTokenVisitor;

impl<'de> Visitor<'de> for AddedTokenVisitor {
    type Value = AddedToken<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an added token object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut token = AddedToken::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match &*key.0 {
                "content" => token.content = map.next_value::<MaybeText<'de>>()?.0,
                "id" => token.id = Some(map.next_value()?),
                "special" => token.special = map.next_value::<Value>()?.as_bool().unwrap_or(false),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(token)
    }
}

/// A visitor as a seed that takes whatever JSON value comes (serde's own seeds must name a
/// type): each visitor says what it accepts.
struct Any<V>(V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for Any<V> {
    type Value = V::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> std::result::Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self.0)
    }
}

/// A JSON string, borrowed from the text unless it has escapes (serde's `Cow` always copies).
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> std::result::Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// A JSON value that is a string (borrowed as [`Text`] is), or None for any other value.
struct MaybeText<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for MaybeText<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct MaybeTextVisitor;
        impl<'de> Visitor<'de> for MaybeTextVisitor {
            type Value = MaybeText<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> std::result::Result<MaybeText<'de>, E> {
                Ok(MaybeText(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<MaybeText<'de>, E> {
                Ok(MaybeText(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> std::result::Result<MaybeText<'de>, E> {
                Ok(MaybeText(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> std::result::Result<MaybeText<'de>, E> {
                Ok(MaybeText(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> std::result::Result<MaybeText<'de>, E> {
                Ok(MaybeText(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<MaybeText<'de>, E> {
                Ok(MaybeText(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<MaybeText<'de>, E> {
                Ok(MaybeText(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<MaybeText<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeText(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<MaybeText<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeText(None))
            }
        }
        deserializer.deserialize_any(MaybeTextVisitor)
    }
}

/// What a tokenizer.json decoder does to each token.
struct DecoderPlan {
    byte_level: bool,
    /// `(from, to)` replacements, in order (Metaspace's and Replace's).
    replace: Vec<(String, String)>,
    byte_fallback: bool,
    strip_first_space: bool,
}

impl DecoderPlan {
    fn read(decoder: &Value) -> Result<DecoderPlan> {
        let mut plan = DecoderPlan { byte_level: false, replace: Vec::new(), byte_fallback: false, strip_first_space: false };
        let steps: Vec<&Value> = match decoder.get("type").and_then(Value::as_str) {
            None if decoder.is_null() => {
                // No decoder: tokenizers joins the tokens as they are.
                return Ok(plan);
            }
            Some("Sequence") => decoder.get("decoders").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default(),
            _ => vec![decoder],
        };
        let unsupported = |what: String| Error::Unsupported(format!("decoder {what} is not supported"));
        let mut fused = false;
        for (i, step) in steps.iter().enumerate() {
            match step.get("type").and_then(Value::as_str) {
                Some("ByteLevel") if steps.len() == 1 => plan.byte_level = true,
                Some("Metaspace") => {
                    let replacement = step.get("replacement").and_then(Value::as_str).unwrap_or("▁");
                    plan.replace.push((replacement.to_string(), " ".into()));
                    let scheme = step.get("prepend_scheme").and_then(Value::as_str);
                    let add_prefix = step.get("add_prefix_space").and_then(Value::as_bool);
                    plan.strip_first_space = match (scheme, add_prefix) {
                        (Some(s), _) => s != "never",
                        (None, Some(a)) => a,
                        (None, None) => true,
                    };
                }
                Some("Replace") if !fused => {
                    let from = step.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str);
                    let to = step.get("content").and_then(Value::as_str);
                    match (from, to) {
                        (Some(from), Some(to)) if !from.is_empty() => plan.replace.push((from.into(), to.into())),
                        _ => return Err(unsupported(format!("Replace {step} (only a plain string pattern)"))),
                    }
                }
                Some("ByteFallback") if !fused => plan.byte_fallback = true,
                Some("Fuse") => fused = true,
                // After Fuse the text is one token: Strip(" ", 1, 0) drops its first space.
                Some("Strip")
                    if (fused || i == steps.len() - 1)
                        && step.get("content").and_then(Value::as_str) == Some(" ")
                        && step.get("start").and_then(Value::as_u64) == Some(1)
                        && step.get("stop").and_then(Value::as_u64) == Some(0) =>
                {
                    plan.strip_first_space = true
                }
                _ => return Err(unsupported(format!("{step}"))),
            }
        }
        Ok(plan)
    }

    fn bytes(&self, token: &str, table: &std::collections::HashMap<char, u8>) -> Vec<u8> {
        if self.byte_level {
            let mut out = Vec::with_capacity(token.len());
            for c in token.chars() {
                match table.get(&c) {
                    Some(&b) => out.push(b),
                    None => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
                }
            }
            return out;
        }
        if self.byte_fallback {
            if let Some(b) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')).filter(|h| h.len() == 2).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                return vec![b];
            }
        }
        let mut text = token.to_string();
        for (from, to) in &self.replace {
            text = text.replace(from.as_str(), to);
        }
        text.into_bytes()
    }
}

/// Text handed out as tokens arrive: whole UTF-8 characters only, held back while they may
/// start one of the stop strings, cut before the first stop string found.
#[derive(Clone, Debug)]
pub struct TextStream {
    bytes: Vec<u8>,
    /// Bytes of `bytes` already turned into text.
    decoded: usize,
    /// Text decoded and not yet handed out.
    pending: String,
    stops: Vec<String>,
    /// Characters held back: the longest stop string's length minus one.
    hold: usize,
    started: bool,
    stopped: bool,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> TextStream {
        let hold = stops.iter().map(|s| s.chars().count()).max().unwrap_or(1).saturating_sub(1);
        TextStream { bytes: Vec::new(), decoded: 0, pending: String::new(), stops, hold, started: false, stopped: false }
    }

    /// Adds a token. Returns the text now ready and whether a stop string was reached (the
    /// text then ends before it, and nothing more comes out).
    pub fn push(&mut self, detok: &Detokenizer, id: u32) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        let mut piece = detok.token_bytes(id);
        if !self.started && !piece.is_empty() {
            self.started = true;
            if detok.strip_first_space && piece[0] == b' ' {
                piece = &piece[1..];
            }
        }
        self.bytes.extend_from_slice(piece);
        self.decode(false);
        self.ready()
    }

    /// Everything left (an unfinished character at the end becomes U+FFFD), cut before a stop
    /// string.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        self.decode(true);
        self.hold = 0;
        let (text, _) = self.ready();
        self.stopped = true;
        text
    }

    /// Moves decodable bytes into `pending`; invalid bytes become U+FFFD as in
    /// `String::from_utf8_lossy`; an unfinished character at the end waits unless `all`.
    fn decode(&mut self, all: bool) {
        let mut rest = &self.bytes[self.decoded..];
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.pending.push_str(s);
                    rest = &[];
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // SAFETY-free: `good` was just validated.
                    self.pending.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            self.pending.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None if all => {
                            self.pending.push('\u{FFFD}');
                            rest = &[];
                        }
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.decoded = self.bytes.len() - rest.len();
        // Bytes before `decoded` are never read again.
        if self.decoded > 4096 {
            self.bytes.drain(..self.decoded);
            self.decoded = 0;
        }
    }

    fn ready(&mut self) -> (String, bool) {
        let cut = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min();
        if let Some(cut) = cut {
            self.pending.truncate(cut);
            self.stopped = true;
            return (std::mem::take(&mut self.pending), true);
        }
        let keep = self.pending.char_indices().rev().nth(self.hold.saturating_sub(1)).map(|(i, _)| i);
        let split = if self.hold == 0 { self.pending.len() } else { keep.unwrap_or(0) };
        let rest = self.pending.split_off(split);
        (std::mem::replace(&mut self.pending, rest), false)
    }
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// The text reached one of the stop strings.
    StopString,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The context (the model's, or the sequence's cache) is full.
    Context,
}

impl FinishReason {
    /// OpenAI's name: "stop" or "length".
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Eos | FinishReason::StopString => "stop",
            FinishReason::MaxTokens | FinishReason::Context => "length",
        }
    }

    /// The precise reason: "eos", "stop_string", "max_tokens" or "context".
    pub fn detail(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::StopString => "stop_string",
            FinishReason::MaxTokens => "max_tokens",
            FinishReason::Context => "context",
        }
    }
}

/// What one generation asks for.
#[derive(Clone, Debug, Default)]
pub struct GenerationParams {
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Stop strings (not included in the text).
    pub stop: Vec<String>,
}

/// What a step did for one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct StepEvent {
    pub id: u64,
    /// Text ready since the last step (may be empty).
    pub text: String,
    /// Tokens generated so far (end-of-sequence tokens are not counted).
    pub tokens: usize,
    /// Set on the sequence's last event; it has left the engine.
    pub finished: Option<FinishReason>,
}

struct Sequence {
    id: u64,
    cache: KvCache,
    sampler: Sampler,
    /// Tokens the next step runs: the prompt, then each sampled token.
    feed: Vec<u32>,
    /// Distinct tokens of prompt and output (kept only for a repetition penalty).
    seen: Vec<u32>,
    seen_mask: Vec<bool>,
    generated: usize,
    max_new_tokens: usize,
    text: TextStream,
}

/// Checks a prompt and its parameters as `Engine::add` does, without an engine: bindings
/// call it when a request arrives, before it waits in a queue.
pub fn validate(model: &Model, prompt: &[u32], params: &GenerationParams) -> Result<()> {
    let cfg = model.config();
    if prompt.is_empty() {
        crate::bail!(InvalidArgument, "the prompt is empty");
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= cfg.vocab) {
        crate::bail!(InvalidArgument, "token id {bad} is outside the vocabulary (size {})", cfg.vocab);
    }
    if prompt.len() >= cfg.max_positions {
        crate::bail!(
            InvalidArgument,
            "the prompt is {} tokens; the model's context is {} (leave room for at least one new token)",
            prompt.len(),
            cfg.max_positions
        );
    }
    if params.max_new_tokens == 0 {
        crate::bail!(InvalidArgument, "max_new_tokens must be at least 1");
    }
    if params.stop.iter().any(String::is_empty) {
        crate::bail!(InvalidArgument, "a stop string is empty");
    }
    params.sampling.validate()
}

/// Sequences of one model generating together. Not thread-safe by itself: one owner calls
/// `add`, `cancel` and `step` (bindings put it behind a lock or a thread).
pub struct Engine {
    model: Arc<Model>,
    detok: Arc<Detokenizer>,
    eos: Vec<u32>,
    sequences: Vec<Sequence>,
    next_id: u64,
}

impl Engine {
    /// An engine for `model`, decoding text with `detok`; generation ends at any of `eos`.
    pub fn new(model: Arc<Model>, detok: Arc<Detokenizer>, eos: Vec<u32>) -> Engine {
        Engine { model, detok, eos, sequences: Vec::new(), next_id: 1 }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Sequences in the engine.
    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Adds a sequence that generates after `prompt`; it runs from the next step. Returns its id.
    pub fn add(&mut self, prompt: &[u32], params: GenerationParams) -> Result<u64> {
        validate(&self.model, prompt, &params)?;
        let capacity = prompt.len().saturating_add(params.max_new_tokens);
        let penalty = params.sampling.repetition_penalty != 1.0;
        let mut seq = Sequence {
            id: self.next_id,
            cache: self.model.new_cache(capacity),
            sampler: Sampler::new(params.sampling)?,
            feed: prompt.to_vec(),
            seen: Vec::new(),
            seen_mask: if penalty { vec![false; self.model.config().vocab] } else { Vec::new() },
            generated: 0,
            max_new_tokens: params.max_new_tokens,
            text: TextStream::new(params.stop),
        };
        if penalty {
            for &t in prompt {
                seq.remember(t);
            }
        }
        self.next_id += 1;
        self.sequences.push(seq);
        Ok(self.next_id - 1)
    }

    /// Removes a sequence (its memory is freed now). False when no such sequence runs.
    pub fn cancel(&mut self, id: u64) -> bool {
        let before = self.sequences.len();
        self.sequences.retain(|s| s.id != id);
        self.sequences.len() != before
    }

    /// Ends a sequence before its limit, as reaching `max_new_tokens` there would: removes it
    /// and returns the text its stream held back (an unfinished character as U+FFFD, a
    /// possible start of a stop string as it is), so the text handed out equals a run whose
    /// `max_new_tokens` is the tokens generated. None when no such sequence runs.
    pub fn stop(&mut self, id: u64) -> Option<String> {
        let at = self.sequences.iter().position(|s| s.id == id)?;
        Some(self.sequences.remove(at).text.finish())
    }

    /// Runs every sequence one token further. Returns an event per sequence; finished ones
    /// have left the engine. An error (a kernel failing) leaves every sequence as it was
    /// before the step only in that nothing was sampled: drop the engine.
    pub fn step(&mut self) -> Result<Vec<StepEvent>> {
        if self.sequences.is_empty() {
            return Ok(Vec::new());
        }
        let feeds: Vec<Vec<u32>> = self.sequences.iter_mut().map(|s| std::mem::take(&mut s.feed)).collect();
        let mut segments: Vec<Segment<'_>> =
            self.sequences.iter_mut().zip(&feeds).map(|(s, feed)| Segment { tokens: feed, cache: &mut s.cache, all_logits: false }).collect();
        let logits = self.model.forward_batch(&mut segments)?;
        drop(segments);
        let context = self.model.config().max_positions;
        let mut events = Vec::with_capacity(self.sequences.len());
        for (seq, mut logits) in self.sequences.iter_mut().zip(logits) {
            let token = seq.sampler.sample_distinct(&mut logits, &seq.seen);
            let mut event = StepEvent { id: seq.id, text: String::new(), tokens: seq.generated, finished: None };
            if self.eos.contains(&token) {
                event.text = seq.text.finish();
                event.finished = Some(FinishReason::Eos);
                events.push(event);
                continue;
            }
            seq.generated += 1;
            event.tokens = seq.generated;
            if !seq.seen_mask.is_empty() {
                seq.remember(token);
            }
            let (text, stopped) = seq.text.push(&self.detok, token);
            event.text = text;
            if stopped {
                event.finished = Some(FinishReason::StopString);
            } else if seq.generated >= seq.max_new_tokens {
                event.finished = Some(FinishReason::MaxTokens);
            } else if seq.cache.len() >= seq.cache.capacity() || seq.cache.len() >= context {
                event.finished = Some(FinishReason::Context);
            }
            if event.finished.is_some() {
                event.text.push_str(&seq.text.finish());
            } else {
                seq.feed.push(token);
            }
            events.push(event);
        }
        self.sequences.retain(|s| !s.feed.is_empty());
        Ok(events)
    }
}

impl Sequence {
    fn remember(&mut self, t: u32) {
        if let Some(m) = self.seen_mask.get_mut(t as usize) {
            if !*m {
                *m = true;
                self.seen.push(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_level_json(tokens: &[&str], special: &[(&str, u32)]) -> String {
        let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), Value::from(i))).collect();
        let added: Vec<Value> = special.iter().map(|(c, id)| serde_json::json!({"id": id, "content": c, "special": true})).collect();
        serde_json::json!({"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": added, "decoder": {"type": "ByteLevel"}}).to_string()
    }

    #[test]
    fn check_refuses_what_from_json_refuses_with_the_same_message() {
        let good = byte_level_json(&["a", "b", "\\u00e9"], &[("<s>", 3)]);
        assert!(Detokenizer::check(&good, "tokenizer.json").is_ok() && Detokenizer::from_json(&good).is_ok());
        let with_vocab =
            |vocab: Value| serde_json::json!({"model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]}, "decoder": {"type": "ByteLevel"}}).to_string();
        let cases = [
            (with_vocab(serde_json::json!({"a": 0, "big": 1u64 << 31})), "token 'big' has id 2147483648; ids are integers from 0 to 16777215"),
            (with_vocab(serde_json::json!({"a": 0, "huge": u64::MAX})), "token 'huge' has id 18446744073709551615"),
            (with_vocab(serde_json::json!({"a": 0, "neg": -1})), "token 'neg' has id -1"),
            (with_vocab(serde_json::json!({"a": 0, "half": 1.5})), "token 'half' has id 1.5"),
            (with_vocab(serde_json::json!({"a": 0, "text": "1"})), "token 'text' has id \"1\""),
            (with_vocab(serde_json::json!({"a": 0, "far": 5000})), "token id 5000 is far beyond its 2 tokens"),
            (with_vocab(serde_json::json!("a")), "expected model.vocab as a map"),
            (with_vocab(serde_json::json!([["a", 0.0], [1, 0.0]])), "bad Unigram vocabulary entry"),
            (
                serde_json::json!({"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": 1u64 << 31, "content": "<s>"}]}).to_string(),
                "token '<s>' has id 2147483648",
            ),
            (serde_json::json!({"model": {"vocab": {"a": 0}}, "added_tokens": [{"content": "<s>"}]}).to_string(), "an added token lacks its id or content"),
            (
                serde_json::json!({"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": 1, "content": 5}]}).to_string(),
                "an added token lacks its id or content",
            ),
            (serde_json::json!({"model": {"vocab": {"a": 0}}, "added_tokens": [3]}).to_string(), "expected an added token object"),
            (serde_json::json!({"model": {"vocab": {"a": 0}}, "added_tokens": "<s>"}).to_string(), "expected added_tokens as a list"),
            (
                serde_json::json!({"model": {"vocab": {"a": 0}}, "decoder": {"type": "WordPiece"}}).to_string(),
                "decoder {\"type\":\"WordPiece\"} is not supported",
            ),
            (serde_json::json!({"model": null}).to_string(), "model has no vocab"),
            (serde_json::json!({"decoder": null}).to_string(), "tokenizer.json: no model"),
            ("[1, 2]".to_string(), "invalid type: sequence, expected an object"),
            ("{\"model\": {\"vocab\": {\"a\": 0}}} x".to_string(), "trailing characters"),
            ("{\"model\": {\"vocab\": {\"a\": 0".to_string(), "EOF while parsing"),
        ];
        for (text, want) in cases {
            let checked = Detokenizer::check(&text, "tokenizer.json").unwrap_err().to_string();
            assert!(checked.contains(": tokenizer.json: ") && checked.contains(want), "{text}: {checked}");
            assert_eq!(Detokenizer::from_json(&text).unwrap_err().to_string(), checked, "{text}");
            // The tokenizer in a GGUF file's metadata is named by the file, not tokenizer.json.
            let in_gguf = Detokenizer::check(&text, "model.gguf: the tokenizer in its metadata").unwrap_err().to_string();
            assert_eq!(in_gguf, checked.replace("tokenizer.json", "model.gguf: the tokenizer in its metadata"), "{text}");
            let built = Detokenizer::from_json_at(&text, "model.gguf: the tokenizer in its metadata").unwrap_err().to_string();
            assert_eq!(built, in_gguf, "{text}");
        }
    }

    #[test]
    fn stream_holds_back_unfinished_characters_and_stop_prefixes() {
        // "é" is C3 A9: GPT-2's alphabet maps 0xC3 to 'Ã' and 0xA9 to '©'.
        let detok = Detokenizer::from_json(&byte_level_json(&["Ã", "©", "ĠEND", "a", "Ġb"], &[("<s>", 5)])).unwrap();
        // The stop string is 4 characters: 3 are held back.
        let mut s = TextStream::new(vec![" END".into()]);
        assert_eq!(s.push(&detok, 3), ("".into(), false)); // "a"
        assert_eq!(s.push(&detok, 0), ("".into(), false)); // half of "é"
        assert_eq!(s.push(&detok, 1), ("".into(), false)); // "aé"
        assert_eq!(s.push(&detok, 5), ("".into(), false)); // a special token: nothing
        assert_eq!(s.push(&detok, 4), ("a".into(), false)); // "aé b": "é b" held
        assert_eq!(s.push(&detok, 2), ("é b".into(), true)); // "é b END": cut before " END"
        assert_eq!(s.push(&detok, 3), ("".into(), true));
        let mut all = String::new();
        let mut s = TextStream::new(vec![" END".into()]);
        for id in [3, 0, 1, 4, 4, 2, 3] {
            let (t, stop) = s.push(&detok, id);
            all.push_str(&t);
            if stop {
                break;
            }
        }
        assert_eq!(all, "aé b b");
        assert_eq!(detok.decode(&[3, 0, 1, 5, 4, 0]), "aé b\u{FFFD}");
    }

    #[test]
    fn stream_without_stops_hands_out_everything_ready() {
        let detok = Detokenizer::from_json(&byte_level_json(&["Ã", "©", "a"], &[])).unwrap();
        let mut s = TextStream::new(Vec::new());
        assert_eq!(s.push(&detok, 2).0, "a");
        assert_eq!(s.push(&detok, 0).0, "");
        assert_eq!(s.push(&detok, 1).0, "é");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn llama2_decoder_reads_bytes_and_strips_the_first_space() {
        let json = serde_json::json!({
            "model": {"type": "BPE", "vocab": {"<unk>": 0, "▁Hello": 1, "▁world": 2, "<0x0A>": 3, "<0xC3>": 4, "<0xA9>": 5}, "merges": [], "byte_fallback": true},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
        });
        let detok = Detokenizer::from_json(&json.to_string()).unwrap();
        assert_eq!(detok.decode(&[1, 2, 3, 4, 5]), "Hello world\né");
        let bad = serde_json::json!({"model": {"type": "BPE", "vocab": {}}, "decoder": {"type": "WordPiece"}});
        assert!(matches!(Detokenizer::from_json(&bad.to_string()), Err(Error::Unsupported(_))));
    }
}

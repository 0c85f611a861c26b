//! Models, tokenizers and text generation behind plain C-ABI entry points, for `js/engine.js`.
//!
//! A loaded model is a handle (a positive i32). Calls that produce bytes (text, ids, JSON)
//! leave them in one result buffer (`binllm_result_ptr` / `binllm_result_len`), valid until the
//! next call. Generation is the core's [`Engine`] with one sequence, driven one token at a
//! time by the caller (`binllm_generate_start`, then `binllm_generate_step` until it says
//! done, or `binllm_generate_cancel`), so a worker can stream text and stop between tokens.
//! Sampling, stop strings, the context limit, incremental detokenization and the finish
//! reason are the engine's, as in Python's `binllm.Model.generate`; this file only reads the
//! options and writes the events.

use crate::{set_error, slice_at};
use binllm_core::engine::{Detokenizer, Engine, GenerationParams, StepEvent};
use binllm_core::loader::{GgufFile, SafetensorsFile};
use binllm_core::model::load::LoadOptions;
use binllm_core::model::sampler::SamplingParams;
use binllm_core::model::{GenerationDefaults, KvCache, Model};
use binllm_core::tokenizer::Tokenizer;
use binllm_core::{Error, Result};
use serde_json::Value;
use std::cell::RefCell;
use std::sync::Arc;

struct Loaded {
    model: Arc<Model>,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    /// The core's generation engine over `model`; it holds at most one sequence here.
    engine: Engine,
    /// The sequence `binllm_generate_step` runs.
    sequence: Option<u64>,
    /// A bare KV cache for timing forward passes (`binllm_forward_*`), as `binllm bench` does.
    bench_cache: Option<KvCache>,
}

impl Loaded {
    /// `tokenizer_json` came from `place` (tokenizer.json, or a GGUF file's metadata), which
    /// its errors name.
    fn new(model: Model, tokenizer: Tokenizer, tokenizer_json: &str, place: &str, eos: Vec<u32>) -> Result<Loaded> {
        let model = Arc::new(model);
        let engine = Engine::new(model.clone(), Arc::new(Detokenizer::from_json_at(tokenizer_json, place)?), eos.clone());
        Ok(Loaded { model, tokenizer, eos, engine, sequence: None, bench_cache: None })
    }

    /// Ends the running generation, if any, and frees its KV cache.
    fn cancel_generation(&mut self) {
        if let Some(id) = self.sequence.take() {
            self.engine.cancel(id);
        }
    }
}

thread_local! {
    static MODELS: RefCell<Vec<Option<Loaded>>> = const { RefCell::new(Vec::new()) };
    static RESULT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn set_result(bytes: Vec<u8>) {
    RESULT.with(|r| *r.borrow_mut() = bytes);
}

/// Runs `f` on the model behind `handle`.
fn with_model<T>(handle: i32, f: impl FnOnce(&mut Loaded) -> Result<T>) -> Result<T> {
    MODELS.with(|models| {
        let mut models = models.borrow_mut();
        let slot = usize::try_from(handle - 1).ok().and_then(|i| models.get_mut(i)).and_then(Option::as_mut);
        match slot {
            Some(loaded) => f(loaded),
            None => Err(Error::InvalidArgument(format!("no model with handle {handle} (freed, or never loaded)"))),
        }
    })
}

fn store(loaded: Loaded) -> i32 {
    MODELS.with(|models| {
        let mut models = models.borrow_mut();
        models.push(Some(loaded));
        models.len() as i32
    })
}

/// A handle (> 0), or -1 with the error stored.
fn handle_or_error(result: Result<Loaded>) -> i32 {
    match result {
        Ok(loaded) => store(loaded),
        Err(e) => {
            set_error(&e);
            -1
        }
    }
}

/// The value, or -1 with the error stored.
fn count_or_error(result: Result<usize>) -> isize {
    match result {
        // Counts of things in memory: no more than isize::MAX.
        Ok(n) => n.min(isize::MAX as usize) as isize,
        Err(e) => {
            set_error(&e);
            -1
        }
    }
}

unsafe fn text_at<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a str> {
    std::str::from_utf8(slice_at(ptr, len)).map_err(|e| Error::InvalidArgument(format!("{what} is not UTF-8: {e}")))
}

/// Reads a load's options (JSON at `ptr`, `len` bytes): `output_type` ("f32", "f16", "q8_0",
/// "q6_k"), `ternary_format` ("t2", "t1.6") and `kv_type` ("f16", "f32"), each a string or
/// null (the default: what the file holds, f16 caches), as Python's `from_pretrained` names
/// them. A key it does not know is an error naming it.
unsafe fn load_options(ptr: *const u8, len: usize) -> Result<LoadOptions> {
    let bad = |what: String| Error::InvalidArgument(format!("load options: {what}"));
    let value: Value = serde_json::from_str(text_at(ptr, len, "load options")?).map_err(|e| bad(e.to_string()))?;
    let Value::Object(options) = value else {
        return Err(bad("not a JSON object".into()));
    };
    let mut names: [Option<&str>; 3] = [None; 3];
    for (key, v) in &options {
        let slot = match key.as_str() {
            "output_type" => 0,
            "ternary_format" => 1,
            "kv_type" => 2,
            _ => return Err(bad(format!("unknown option '{key}'"))),
        };
        names[slot] = match v {
            Value::Null => None,
            Value::String(name) => Some(name),
            _ => return Err(bad(format!("{key} must be a string, got {v}"))),
        };
    }
    LoadOptions::from_names(true, names[0], names[1], names[2])
}

/// Checks load options (JSON, `load_options`) before anything is downloaded. Returns 0, or -1.
///
/// # Safety
/// `ptr` must point to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn binllm_check_load_options(ptr: *const u8, len: usize) -> isize {
    count_or_error(load_options(ptr, len).map(|_| 0))
}

/// Loads a GGUF file (the whole file's bytes; the caller may free them afterwards) with the
/// load options at `options` (`load_options`). Returns a model handle, or -1.
///
/// # Safety
/// `ptr` must point to `len` readable bytes, `options` to `options_len`.
#[no_mangle]
pub unsafe extern "C" fn binllm_model_load_gguf(ptr: *const u8, len: usize, options: *const u8, options_len: usize) -> i32 {
    handle_or_error((|| loaded_from_gguf(&GgufFile::parse(slice_at(ptr, len))?, &load_options(options, options_len)?))())
}

/// The file a lazy load reads from: the host's `binllm_host.read_file` import, which fills wasm
/// memory at `dst` with `len` bytes of the file from `offset` (exact in an f64 below 2^53) and
/// returns 0, or -1 when it cannot.
struct HostFile;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "binllm_host")]
extern "C" {
    fn read_file(offset: f64, dst: *mut u8, len: usize) -> i32;
}

impl binllm_core::loader::TensorSource for HostFile {
    #[cfg(target_arch = "wasm32")]
    fn read(&self, offset: u64, dst: &mut [u8]) -> Result<()> {
        // SAFETY: the host writes exactly `dst.len()` bytes at `dst`, which we own mutably.
        match unsafe { read_file(offset as f64, dst.as_mut_ptr(), dst.len()) } {
            0 => Ok(()),
            _ => Err(Error::Io(std::io::Error::other(format!("the host could not read {} bytes at offset {offset} of the model file", dst.len())))),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn read(&self, _offset: u64, _dst: &mut [u8]) -> Result<()> {
        Err(Error::Unsupported("lazy file reads exist only in the wasm32 build".into()))
    }
}

/// Loads a GGUF file of `file_len` bytes that is NOT in wasm memory: `ptr` holds a prefix with
/// at least its header (metadata and tensor infos), and every tensor is read through the
/// host's `binllm_host.read_file` as the model is built, so memory holds the model and one
/// tensor's bytes at a time, never the file (an output layer re-stored by the options is
/// re-stored as soon as it is read). A prefix too short for the header is a Format error
/// starting "truncated" (retry with a longer one). Returns a model handle, or -1.
///
/// # Safety
/// `ptr` must point to `len` readable bytes, `options` to `options_len` (`load_options`).
#[no_mangle]
pub unsafe extern "C" fn binllm_model_load_gguf_lazy(ptr: *const u8, len: usize, file_len: f64, options: *const u8, options_len: usize) -> i32 {
    handle_or_error((|| {
        let options = load_options(options, options_len)?;
        if !(file_len >= len as f64 && file_len < 9.0e15) {
            binllm_core::bail!(InvalidArgument, "file length {file_len} is not a whole number of bytes at least the prefix's {len}");
        }
        let source = HostFile;
        let file = GgufFile::parse_header(slice_at(ptr, len), file_len as u64, &source)?;
        loaded_from_gguf(&file, &options)
    })())
}

fn loaded_from_gguf(file: &GgufFile<'_>, options: &LoadOptions) -> Result<Loaded> {
    let tokenizer = Tokenizer::from_gguf(file)?;
    let model = options.gguf(file)?;
    let defaults = GenerationDefaults::from_gguf(model.config(), file)?;
    Loaded::new(model, tokenizer, &binllm_core::tokenizer::hf_json_from_gguf(file)?, "the GGUF file's tokenizer metadata", defaults.eos)
}

/// Loads a Hugging Face folder's files: config.json, tokenizer.json, generation_config.json
/// and tokenizer_config.json (either may be empty) and `n_files` safetensors files given as
/// (pointer, length) pairs of usize at `files` (u32 in wasm32), named by `names` (a JSON list
/// of `n_files` strings). An error names the file it is about, as the native loader's do:
/// "model-00002-of-00002.safetensors: ...". The load options are JSON at `options`
/// (`load_options`). Returns a model handle, or -1.
///
/// # Safety
/// Every pointer must point to its length of readable bytes; `files` to `2 * n_files` usizes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn binllm_model_load_hf(
    config: *const u8,
    config_len: usize,
    tokenizer: *const u8,
    tokenizer_len: usize,
    generation_config: *const u8,
    generation_config_len: usize,
    tokenizer_config: *const u8,
    tokenizer_config_len: usize,
    files: *const usize,
    n_files: usize,
    names: *const u8,
    names_len: usize,
    options: *const u8,
    options_len: usize,
) -> i32 {
    handle_or_error((|| {
        let options = load_options(options, options_len)?;
        let config = text_at(config, config_len, "config.json")?;
        let tokenizer_json = text_at(tokenizer, tokenizer_len, "tokenizer.json")?;
        let tokenizer = Tokenizer::from_json(tokenizer_json)?;
        let names: Vec<String> = serde_json::from_str(text_at(names, names_len, "the safetensors files' names")?)
            .map_err(|e| Error::InvalidArgument(format!("the safetensors files' names are not a JSON list of strings: {e}")))?;
        if names.len() != n_files {
            binllm_core::bail!(InvalidArgument, "{} names for {n_files} safetensors files", names.len());
        }
        let pairs = slice_at(files, n_files.checked_mul(2).ok_or_else(|| Error::InvalidArgument("too many files".into()))?);
        let files = pairs
            .chunks_exact(2)
            .zip(&names)
            .map(|(p, name)| SafetensorsFile::parse(slice_at(p[0] as *const u8, p[1])).map_err(|e| e.at(name)))
            .collect::<Result<Vec<_>>>()?;
        let model = options.hf(config, &files, &names)?;
        let generation = text_at(generation_config, generation_config_len, "generation_config.json")?;
        let tokenizer_config = text_at(tokenizer_config, tokenizer_config_len, "tokenizer_config.json")?;
        let defaults = GenerationDefaults::from_hf(model.config(), Some(tokenizer_json), Some(generation), Some(tokenizer_config), None)?;
        let eos = defaults.eos;
        Loaded::new(model, tokenizer, tokenizer_json, "tokenizer.json", eos)
    })())
}

/// The safetensors files a folder's model.safetensors.index.json (UTF-8 text at `index`) names,
/// as a JSON list in the result buffer (the core's listing, with its guard against names that
/// leave the folder). Returns the list's length in bytes, or -1.
///
/// # Safety
/// `index` must point to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn binllm_hf_shard_names(index: *const u8, len: usize) -> isize {
    count_or_error((|| {
        let names = binllm_core::model::load::index_shard_names(text_at(index, len, "model.safetensors.index.json")?)?;
        let bytes = serde_json::to_vec(&names).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let n = bytes.len();
        set_result(bytes);
        Ok(n)
    })())
}

/// Frees a model and everything it holds.
#[no_mangle]
pub extern "C" fn binllm_model_free(handle: i32) {
    MODELS.with(|models| {
        let mut models = models.borrow_mut();
        if let Some(slot) = usize::try_from(handle - 1).ok().and_then(|i| models.get_mut(i)) {
            *slot = None;
        }
    });
}

/// Writes the model's description (JSON) to the result buffer; returns its length, or -1.
#[no_mangle]
pub extern "C" fn binllm_model_info(handle: i32) -> isize {
    count_or_error(with_model(handle, |m| {
        let c = m.model.config();
        let backend = binllm_core::kernels::active_backend().map(|b| b.name()).unwrap_or("none");
        let info = serde_json::json!({
            "architecture": c.architecture,
            "hidden_size": c.hidden,
            "intermediate_size": c.intermediate,
            "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads,
            "num_key_value_heads": c.kv_heads,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab,
            "max_position_embeddings": c.max_positions,
            "activation": c.activation.name(),
            "linear": format!("{:?}", c.linear).to_lowercase(),
            "bos_token_id": c.bos_token,
            "eos_token_ids": m.eos,
            "weight_bytes": m.model.nbytes(),
            "output_storage": m.model.output_storage(),
            "kv_type": m.model.kv_type().name(),
            "backend": backend,
            "dot_product": crate::dot_form_name(),
            "threads": binllm_core::threads::num_threads(),
        });
        let bytes = info.to_string().into_bytes();
        let n = bytes.len();
        set_result(bytes);
        Ok(n)
    }))
}

/// Tokenizes UTF-8 text; ids go to the result buffer as little-endian u32s. Returns their
/// count, or -1.
///
/// # Safety
/// `text` must point to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn binllm_encode(handle: i32, text: *const u8, len: usize, add_special: i32) -> isize {
    count_or_error(with_model(handle, |m| {
        let ids = m.tokenizer.encode(text_at(text, len, "text")?, add_special != 0);
        let n = ids.len();
        set_result(ids.iter().flat_map(|i| i.to_le_bytes()).collect());
        Ok(n)
    }))
}

/// Decodes `n` ids (special tokens skipped when `skip_special`) into the result buffer;
/// returns the text's byte length, or -1.
///
/// # Safety
/// `ids` must point to `n` readable u32s.
#[no_mangle]
pub unsafe extern "C" fn binllm_decode(handle: i32, ids: *const u32, n: usize, skip_special: i32) -> isize {
    count_or_error(with_model(handle, |m| {
        let text = m.tokenizer.decode(slice_at(ids, n), skip_special != 0).into_bytes();
        let len = text.len();
        set_result(text);
        Ok(len)
    }))
}

/// Starts generating after `prompt` (UTF-8), ending any generation in progress: tokenizes it
/// (with the tokenizer's special tokens, as `binllm.Model.encode`) and adds it to the engine;
/// the first `binllm_generate_step` runs it. `options` is a JSON object with Python's names:
/// `max_new_tokens` (required), `temperature` (0: greedy), `top_k` (0: off), `top_p` (1: off),
/// `min_p` (0: off), `repetition_penalty` (1: off), `seed`, `stop` (a list of strings); a
/// missing key has the core's default. Returns the prompt's token count, or -1.
///
/// # Safety
/// `prompt` and `options` must point to `len` and `options_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn binllm_generate_start(handle: i32, prompt: *const u8, len: usize, options: *const u8, options_len: usize) -> isize {
    count_or_error(with_model(handle, |m| {
        m.cancel_generation();
        let params = generation_params(text_at(options, options_len, "the generation options")?)?;
        let text = text_at(prompt, len, "prompt")?;
        if text.is_empty() {
            binllm_core::bail!(InvalidArgument, "prompt is empty");
        }
        // A prompt whose length alone proves it longer than the context is refused before it
        // is tokenized (a pasted megabyte); any other is tokenized and checked by the engine.
        let context = m.model.config().max_positions;
        let at_least = m.tokenizer.min_token_count(text);
        if at_least >= context {
            binllm_core::bail!(
                InvalidArgument,
                "the prompt is at least {at_least} tokens; the model's context is {context} (leave room for at least one new token)"
            );
        }
        let ids = m.tokenizer.encode(text, true);
        m.sequence = Some(m.engine.add(&ids, params)?);
        Ok(ids.len())
    }))
}

/// Reads `binllm_generate_start`'s options (JSON); a key it does not know is an error naming it.
fn generation_params(json: &str) -> Result<GenerationParams> {
    let bad = |what: String| Error::InvalidArgument(format!("generation options: {what}"));
    let value: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let Value::Object(options) = value else {
        return Err(bad("not a JSON object".into()));
    };
    let mut params = GenerationParams { sampling: SamplingParams::default(), max_new_tokens: 0, stop: Vec::new() };
    let whole = |key: &str, v: &Value| v.as_u64().ok_or_else(|| bad(format!("{key} must be an integer >= 0, got {v}")));
    // A count past usize (2^32 - 1 on wasm32) asks for more than any context holds: usize::MAX
    // means the same, and never wraps.
    let count = |key: &str, v: &Value| whole(key, v).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let number = |key: &str, v: &Value| v.as_f64().map(|x| x as f32).ok_or_else(|| bad(format!("{key} must be a number, got {v}")));
    for (key, v) in &options {
        match key.as_str() {
            "max_new_tokens" => params.max_new_tokens = count(key, v)?,
            "temperature" => params.sampling.temperature = number(key, v)?,
            "top_k" => params.sampling.top_k = count(key, v)?,
            "top_p" => params.sampling.top_p = number(key, v)?,
            "min_p" => params.sampling.min_p = number(key, v)?,
            "repetition_penalty" => params.sampling.repetition_penalty = number(key, v)?,
            "seed" => params.sampling.seed = whole(key, v)?,
            "stop" => {
                let list = v.as_array().ok_or_else(|| bad(format!("stop must be a list of strings, got {v}")))?;
                params.stop = list
                    .iter()
                    .map(|s| s.as_str().map(str::to_string).ok_or_else(|| bad(format!("stop must be a list of strings, got {s} in it"))))
                    .collect::<Result<_>>()?;
            }
            _ => return Err(bad(format!("unknown option '{key}'"))),
        }
    }
    if !options.contains_key("max_new_tokens") {
        return Err(bad("max_new_tokens is missing".into()));
    }
    Ok(params)
}

/// Runs the generation one token further (the prompt first). The result buffer holds the
/// step's event as JSON: `{"text", "tokens", "finish_reason", "finish_detail"}`, with the text
/// ready since the last step (possibly empty), the tokens generated so far, and on the last
/// step the reason (`"stop"` or `"length"`) and its detail (`"eos"`, `"stop_string"`,
/// `"max_tokens"` or `"context"`), null before. Returns 0 while the generation goes on, 1 when
/// it has finished, -1 on error (none running, or a failed forward pass, which ends it).
#[no_mangle]
pub extern "C" fn binllm_generate_step(handle: i32) -> i32 {
    let event = with_model(handle, |m| {
        let id = m.sequence.ok_or_else(|| Error::InvalidArgument("no generation is running (call binllm_generate_start)".into()))?;
        let event = match m.engine.step() {
            Ok(events) => events.into_iter().find(|e| e.id == id),
            Err(e) => {
                m.cancel_generation();
                return Err(e);
            }
        };
        let event = event.ok_or_else(|| Error::InvalidArgument(format!("the engine lost sequence {id}")))?;
        if event.finished.is_some() {
            m.sequence = None;
        }
        Ok(event)
    });
    match event {
        Ok(StepEvent { text, tokens, finished, .. }) => {
            let json = serde_json::json!({
                "text": text,
                "tokens": tokens,
                "finish_reason": finished.map(|f| f.name()),
                "finish_detail": finished.map(|f| f.detail()),
            });
            set_result(json.to_string().into_bytes());
            i32::from(finished.is_some())
        }
        Err(e) => {
            set_error(&e);
            -1
        }
    }
}

/// Ends the generation in progress (the caller stopped it) and frees its KV cache. The result
/// buffer holds the text it held back (UTF-8: an unfinished character as U+FFFD, a possible
/// start of a stop string as it is; empty when none runs), so that the text handed out equals
/// the run whose `max_new_tokens` is the tokens generated, as when a generation reaches its
/// limit. Returns that text's length in bytes, or -1 for an unknown handle.
#[no_mangle]
pub extern "C" fn binllm_generate_cancel(handle: i32) -> isize {
    count_or_error(with_model(handle, |m| {
        let rest = m.sequence.take().and_then(|id| m.engine.stop(id)).unwrap_or_default().into_bytes();
        let n = rest.len();
        set_result(rest);
        Ok(n)
    }))
}

/// Pointer to the result buffer.
#[no_mangle]
pub extern "C" fn binllm_result_ptr() -> *const u8 {
    RESULT.with(|r| r.borrow().as_ptr())
}

/// Length in bytes of the result buffer.
#[no_mangle]
pub extern "C" fn binllm_result_len() -> usize {
    RESULT.with(|r| r.borrow().len())
}

/// Teacher-forced logits: runs `n` ids from position 0 on a fresh cache and leaves the f32
/// logits (little-endian) in the result buffer: every position's (`n * vocab`) when `all` is
/// non-zero, else the last one's (`vocab`). Returns the count of floats, or -1. This is what
/// `binllm.Model.logits` computes natively, so the two can be compared value by value.
///
/// # Safety
/// `ids` must point to `n` readable u32s.
#[no_mangle]
pub unsafe extern "C" fn binllm_forward_logits(handle: i32, ids: *const u32, n: usize, all: i32) -> isize {
    count_or_error(with_model(handle, |m| {
        let ids = slice_at(ids, n);
        if ids.is_empty() {
            binllm_core::bail!(InvalidArgument, "no token ids");
        }
        if ids.len() > m.model.config().max_positions {
            binllm_core::bail!(InvalidArgument, "{} ids exceed the model's context of {}", ids.len(), m.model.config().max_positions);
        }
        let mut cache = m.model.new_cache(ids.len());
        let logits = m.model.forward(ids, &mut cache, all != 0)?;
        let count = logits.len();
        set_result(logits.iter().flat_map(|v| v.to_le_bytes()).collect());
        Ok(count)
    }))
}

/// Starts a fresh KV cache of `capacity` tokens for `binllm_forward_argmax` (benchmarks).
/// Returns 0, or -1.
#[no_mangle]
pub extern "C" fn binllm_forward_reset(handle: i32, capacity: usize) -> isize {
    count_or_error(with_model(handle, |m| {
        m.bench_cache = Some(m.model.new_cache(capacity));
        Ok(0)
    }))
}

/// Runs `n` ids after what the benchmark cache holds; returns the argmax of the last logits,
/// or -1.
///
/// # Safety
/// `ids` must point to `n` readable u32s.
#[no_mangle]
pub unsafe extern "C" fn binllm_forward_argmax(handle: i32, ids: *const u32, n: usize) -> isize {
    count_or_error(with_model(handle, |m| {
        let cache = m.bench_cache.as_mut().ok_or_else(|| Error::InvalidArgument("call binllm_forward_reset first".into()))?;
        let logits = m.model.forward(slice_at(ids, n), cache, false)?;
        let best = logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        Ok(best.0)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_text() -> String {
        String::from_utf8(unsafe { slice_at(binllm_result_ptr(), binllm_result_len()) }.to_vec()).unwrap()
    }

    /// binllm's embedded model, loaded through the C ABI as the host loads a folder: on a
    /// 64-bit host its (pointer, length) table holds 64-bit pointers. `tokenizer` may change
    /// tokenizer.json first; `options` are the load's (JSON). Returns the handle, or the error.
    fn load_default_model_with(tokenizer: impl FnOnce(Value) -> Value, options: &str) -> std::result::Result<i32, String> {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/binllm/default_model");
        let read = |name: &str| std::fs::read_to_string(folder.join(name)).unwrap();
        let (config, generation, tokenizer_config) = (read("config.json"), read("generation_config.json"), read("tokenizer_config.json"));
        let tokenizer = tokenizer(serde_json::from_str(&read("tokenizer.json")).unwrap()).to_string();
        let weights = std::fs::read(folder.join("model.safetensors")).unwrap();
        let files = [weights.as_ptr() as usize, weights.len()];
        let names = r#"["model.safetensors"]"#;
        let handle = unsafe {
            binllm_model_load_hf(
                config.as_ptr(),
                config.len(),
                tokenizer.as_ptr(),
                tokenizer.len(),
                generation.as_ptr(),
                generation.len(),
                tokenizer_config.as_ptr(),
                tokenizer_config.len(),
                files.as_ptr(),
                1,
                names.as_ptr(),
                names.len(),
                options.as_ptr(),
                options.len(),
            )
        };
        match handle {
            1.. => Ok(handle),
            _ => Err(String::from_utf8_lossy(unsafe { slice_at(crate::binllm_last_error_ptr(), crate::binllm_last_error_len()) }).into_owned()),
        }
    }

    fn load_default_model(tokenizer: impl FnOnce(Value) -> Value) -> i32 {
        load_default_model_with(tokenizer, "{}").unwrap()
    }

    fn info(handle: i32) -> Value {
        assert!(binllm_model_info(handle) > 0);
        serde_json::from_str(&result_text()).unwrap()
    }

    #[test]
    fn load_options_restore_the_output_layer_and_refuse_what_they_do_not_know() {
        let plain = load_default_model(|json| json);
        let (plain_info, plain_logits) = (info(plain), logits(plain));
        assert_eq!((plain_info["output_storage"].as_str(), plain_info["kv_type"].as_str()), (Some("f16"), Some("f16")));
        let q8 = load_default_model_with(|json| json, r#"{"output_type": "q8_0", "ternary_format": null, "kv_type": "f32"}"#).unwrap();
        let q8_info = info(q8);
        assert_eq!((q8_info["output_storage"].as_str(), q8_info["kv_type"].as_str()), (Some("q8"), Some("f32")));
        assert!(q8_info["weight_bytes"].as_u64() < plain_info["weight_bytes"].as_u64());
        // 8-bit output weights move the logits a little, not a lot.
        let q8_logits = logits(q8);
        let spread = plain_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        let moved = plain_logits.iter().zip(&q8_logits).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(moved > 0.0 && moved < 0.05 * spread, "moved {moved} of {spread}");
        binllm_model_free(q8);
        binllm_model_free(plain);
        assert_eq!(unsafe { binllm_check_load_options(b"{}".as_ptr(), 2) }, 0);
        assert_eq!(unsafe { binllm_check_load_options(b"[]".as_ptr(), 2) }, -1);
        for (options, message) in [
            (r#"{"outputType": "q8_0"}"#, "load options: unknown option 'outputType'"),
            (r#"{"output_type": "q4_0"}"#, "output type 'q4_0'"),
            (r#"{"output_type": 8}"#, "output_type must be a string, got 8"),
            (r#"{"ternary_format": "b1"}"#, "ternary_format 'b1'"),
            (r#"{"kv_type": "q8_0"}"#, "f16 or f32"),
            ("[]", "load options: not a JSON object"),
            ("", "load options: EOF"),
        ] {
            let err = load_default_model_with(|json| json, options).unwrap_err();
            assert!(err.contains(message), "{options}: {err}");
        }
    }

    /// The last position's logits after a fixed prompt.
    fn logits(handle: i32) -> Vec<f32> {
        let ids = [1u32, 72, 101, 108, 108, 111];
        let n = unsafe { binllm_forward_logits(handle, ids.as_ptr(), ids.len(), 0) };
        assert!(n > 0, "{}", String::from_utf8_lossy(unsafe { slice_at(crate::binllm_last_error_ptr(), crate::binllm_last_error_len()) }));
        let bytes = unsafe { slice_at(binllm_result_ptr(), binllm_result_len()) };
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn start(handle: i32, prompt: &str, options: &str) {
        let n = unsafe { binllm_generate_start(handle, prompt.as_ptr(), prompt.len(), options.as_ptr(), options.len()) };
        assert!(n > 0, "{}", String::from_utf8_lossy(unsafe { slice_at(crate::binllm_last_error_ptr(), crate::binllm_last_error_len()) }));
    }

    /// The text of `steps` steps (all of the run when it ends sooner) and whether it ended.
    fn steps(handle: i32, steps: usize) -> (String, bool) {
        let mut text = String::new();
        for _ in 0..steps {
            let status = binllm_generate_step(handle);
            assert!(status >= 0);
            let event: Value = serde_json::from_str(&result_text()).unwrap();
            text += event["text"].as_str().unwrap();
            if status == 1 {
                return (text, true);
            }
        }
        (text, false)
    }

    #[test]
    fn a_stopped_generation_hands_out_what_it_held_back_as_its_token_limit_would() {
        // ',' (which the model's greedy text after PROMPT starts with) decodes as the lone byte
        // 0xC3, the start of a two-byte character: a run stopped right after one holds half a
        // character back.
        let handle = load_default_model(|mut json| {
            let vocab = json["model"]["vocab"].as_object_mut().unwrap();
            let (comma, lead) = (vocab[","].clone(), vocab["Ã"].clone());
            vocab.insert(",".into(), lead);
            vocab.insert("Ã".into(), comma);
            json
        });
        const PROMPT: &str = "Once upon a time";
        let mut endings = Vec::new();
        for stop in ["[]", r#"["king's queen"]"#] {
            for n in 1..=6 {
                start(handle, PROMPT, &format!(r#"{{"max_new_tokens": {n}, "temperature": 0, "stop": {stop}}}"#));
                let (limited, ended) = steps(handle, n + 1);
                assert!(ended);
                start(handle, PROMPT, &format!(r#"{{"max_new_tokens": 100, "temperature": 0, "stop": {stop}}}"#));
                let (mut stopped, ended) = steps(handle, n);
                assert!(!ended);
                let held = binllm_generate_cancel(handle);
                assert_eq!(held as usize, result_text().len());
                stopped += &result_text();
                assert_eq!(stopped, limited, "stopped after {n} tokens, stop strings {stop}");
                endings.push(limited.chars().last());
            }
        }
        assert!(endings.contains(&Some('\u{FFFD}')), "no run ended inside a character: {endings:?}");
        // Nothing runs now: cancelling again hands out nothing.
        assert_eq!(binllm_generate_cancel(handle), 0);
        binllm_model_free(handle);
    }

    #[test]
    fn unknown_handles_are_errors() {
        assert_eq!(binllm_model_info(12345), -1);
        assert_eq!(binllm_generate_step(0), -1);
        assert_eq!(binllm_generate_cancel(0), -1);
    }

    #[test]
    fn options_read_python_names_and_refuse_unknown_ones() {
        let p = generation_params(r#"{"max_new_tokens": 5, "temperature": 0.5, "top_k": 3, "top_p": 0.9, "min_p": 0.1, "repetition_penalty": 1.2, "seed": 9007199254740993, "stop": ["a", "\n"]}"#).unwrap();
        assert_eq!((p.max_new_tokens, p.sampling.top_k, p.sampling.seed), (5, 3, 9007199254740993));
        assert_eq!((p.sampling.temperature, p.sampling.top_p, p.sampling.min_p, p.sampling.repetition_penalty), (0.5, 0.9, 0.1, 1.2));
        assert_eq!(p.stop, ["a", "\n"]);
        // Counts past usize mean "no limit" (usize::MAX), never a wrapped few.
        let huge = generation_params(r#"{"max_new_tokens": 18446744073709551615, "top_k": 18446744073709551615}"#).unwrap();
        assert_eq!((huge.max_new_tokens, huge.sampling.top_k), (usize::MAX, usize::MAX));
        let defaults = generation_params(r#"{"max_new_tokens": 1}"#).unwrap();
        assert_eq!(defaults.sampling.temperature, SamplingParams::default().temperature);
        for (json, message) in [
            (r#"{"max_new_tokens": 1, "maxNewTokens": 2}"#, "unknown option 'maxNewTokens'"),
            (r#"{"temperature": 1}"#, "max_new_tokens is missing"),
            (r#"{"max_new_tokens": 1.5}"#, "max_new_tokens must be an integer"),
            (r#"{"max_new_tokens": 1, "seed": -1}"#, "seed must be an integer"),
            (r#"{"max_new_tokens": 1, "top_p": null}"#, "top_p must be a number"),
            (r#"{"max_new_tokens": 1, "stop": "x"}"#, "stop must be a list"),
            (r#"{"max_new_tokens": 1, "stop": [1]}"#, "stop must be a list"),
            ("[]", "not a JSON object"),
        ] {
            let err = generation_params(json).unwrap_err().to_string();
            assert!(err.contains(message), "{json}: {err}");
        }
    }
}

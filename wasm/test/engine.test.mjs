// The engine (js/engine.js) at wasm32's edges, on binllm's embedded model (no Python needed):
// numbers that would wrap at the 32-bit boundary, config sizes past 2^32, traps reported as what
// they are, and a stopped generation's held-back text. Build first: scripts/build-wasm.sh.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Engine, BinLLMError, bytesSource } from "../js/engine.js";

const WASM = await readFile(new URL("../pkg/binllm_wasm.wasm", import.meta.url));
const FOLDER = new URL("../../python/binllm/default_model/", import.meta.url);
const FILES = ["config.json", "tokenizer.json", "generation_config.json", "tokenizer_config.json"];
const TEXTS = Object.fromEntries(await Promise.all(FILES.map(async (name) => [name, await readFile(new URL(name, FOLDER), "utf8")])));
const WEIGHTS = await readFile(new URL("model.safetensors", FOLDER));
const PROMPT = "Once upon a time";

/** The embedded model, its files' text changed by `change(texts)` first. */
function load(engine, change = (texts) => texts) {
  const weights = engine.reserveModelFile(WEIGHTS.length);
  weights.write(WEIGHTS);
  return engine.loadHf(change({ ...TEXTS }), [weights]);
}

const engine = await Engine.create(WASM);
const handle = load(engine);

/** Runs a generation to its end: {text, tokens, finishReason, finishDetail}. */
function generateAll(handle, options) {
  engine.generateStart(handle, PROMPT, options);
  for (let text = ""; ; ) {
    const step = engine.generateStep(handle);
    text += step.piece;
    if (step.done) return { text, tokens: step.tokens, finishReason: step.finishReason, finishDetail: step.finishDetail };
  }
}

test("the model's description names the kernels: SIMD128, with no relaxed dot product to choose", () => {
  const info = engine.info(handle);
  assert.equal(info.backend, "simd128");
  assert.equal(info.dot_product, null);
});

test("maxNewTokens from 2^32 - 1 up runs to the context's end, never wrapping to a few tokens", () => {
  const context = engine.info(handle).max_position_embeddings;
  const unbounded = generateAll(handle, { maxNewTokens: 2 * context, temperature: 0 });
  assert.ok(unbounded.tokens > 16, JSON.stringify(unbounded));
  for (const maxNewTokens of [2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 53 - 1]) {
    assert.deepEqual(generateAll(handle, { maxNewTokens, temperature: 0 }), unbounded, `maxNewTokens ${maxNewTokens}`);
  }
});

test("numbers JSON cannot carry exactly are refused by name, not wrapped or nulled", () => {
  for (const [options, message] of [
    [{ maxNewTokens: Infinity }, /^maxNewTokens must be a finite number, got Infinity$/],
    [{ maxNewTokens: 2 ** 53 }, /^maxNewTokens must be below 2\^53/],
    [{ maxNewTokens: 1e300 }, /^maxNewTokens must be below 2\^53/],
    [{ maxNewTokens: -1 }, /max_new_tokens must be an integer >= 0, got -1/],
    [{ topK: 2 ** 64 }, /^topK must be below 2\^53/],
    [{ seed: 2 ** 53 + 2 }, /^seed must be below 2\^53/],
    [{ seed: NaN }, /^seed must be a finite number, got NaN$/],
    [{ temperature: -Infinity }, /^temperature must be a finite number/],
    [{ topP: NaN }, /^topP must be a finite number/],
  ]) {
    assert.throws(() => engine.generateStart(handle, PROMPT, options), (e) => e instanceof BinLLMError && e.name === "InvalidArgument" && message.test(e.message), JSON.stringify(options));
  }
  // Sizes and token ids that would wrap modulo 2^32 at the boundary.
  const wraps = (e) => e.name === "InvalidArgument" && /from 0 to 2\^32 - 1/.test(e.message);
  assert.throws(() => engine.decode(handle, [2 ** 32 + 65]), wraps);
  assert.throws(() => engine.logits(handle, [-1]), wraps);
  assert.throws(() => engine.forwardReset(handle, 2 ** 32 + 8), wraps);
  assert.throws(() => engine.alloc(2 ** 32 + 16), (e) => e.name === "OutOfMemory" && /at most 4 GiB/.test(e.message));
});

/** A GGUF file of metadata only: [key, value] with numbers as u32 and bigints as u64. */
function ggufOf(entries) {
  const parts = [];
  const u32 = (v) => parts.push(new Uint8Array(new Uint32Array([v]).buffer));
  const u64 = (v) => parts.push(new Uint8Array(new BigUint64Array([BigInt(v)]).buffer));
  const string = (s) => {
    const bytes = new TextEncoder().encode(s);
    u64(bytes.length);
    parts.push(bytes);
  };
  parts.push(new TextEncoder().encode("GGUF"));
  u32(3);
  u64(0);
  u64(entries.length);
  for (const [key, value] of entries) {
    string(key);
    if (typeof value === "string") {
      u32(8);
      string(value);
    } else if (typeof value === "bigint") {
      u32(10);
      u64(value);
    } else {
      u32(4);
      u32(value);
    }
  }
  // Room for the data section's alignment (it holds no tensor).
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0) + 32);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

test("config sizes past 2^32 are refused by name as a 64-bit build refuses them, never truncated", () => {
  // 2^32 + 256 truncated to 32 bits is 256, the model's real hidden size.
  const big = 2n ** 32n + 256n;
  const hf = (key, value) => () =>
    load(engine, (texts) => ({ ...texts, "config.json": texts["config.json"].replace(new RegExp(`"${key}": \\d+`), `"${key}": ${value}`) }));
  assert.throws(hf("hidden_size", big), (e) => e.name === "Format" && e.message.endsWith("config.json: hidden_size = 4294967552 is out of range (1..=1048576)"));
  assert.throws(hf("num_hidden_layers", 2n ** 32n + 4n), (e) => e.name === "Format" && e.message.endsWith("config.json: num_hidden_layers = 4294967300 is out of range (1..=4096)"));
  // The context has no bound natively; here it must fit wasm32's usize.
  assert.throws(
    hf("max_position_embeddings", 2n ** 32n),
    (e) => e.name === "Format" && e.message.endsWith("config.json: max_position_embeddings = 4294967296 is more than this build's 32-bit sizes hold"),
  );
  const config = JSON.parse(TEXTS["config.json"]);
  const gguf = (overrides) => () =>
    engine.loadGgufFrom(
      bytesSource(
        ggufOf(
          Object.entries({
            "general.architecture": "bitnet",
            "tokenizer.huggingface.json": TEXTS["tokenizer.json"],
            "bitnet.embedding_length": config.hidden_size,
            "bitnet.feed_forward_length": config.intermediate_size,
            "bitnet.block_count": config.num_hidden_layers,
            "bitnet.attention.head_count": config.num_attention_heads,
            "bitnet.context_length": config.max_position_embeddings,
            "bitnet.vocab_size": config.vocab_size,
            ...overrides,
          }),
        ),
      ),
    );
  // The header alone passes the config's checks (then the file lacks tensors).
  assert.throws(gguf({}), (e) => e.name === "Format" && /missing tensor 'token_embd.weight'/.test(e.message));
  assert.throws(gguf({ "bitnet.embedding_length": big }), (e) => e.name === "Format" && /hidden_size = 4294967552 is out of range \(1\.\.=1048576\)$/.test(e.message));
  assert.throws(
    gguf({ "bitnet.context_length": 2n ** 32n + 1n }),
    (e) => e.name === "Format" && /bitnet\.context_length = 4294967297 is more than this build's 32-bit sizes hold$/.test(e.message),
  );
});

test("a stopped generation hands out what it held back, as its token limit would", () => {
  // ',' (the greedy text after PROMPT starts with one) decodes as the lone byte 0xC3, the start
  // of a two-byte character: a run stopped right after one holds half a character back.
  const swapped = load(engine, (texts) => {
    const json = JSON.parse(texts["tokenizer.json"]);
    const vocab = json.model.vocab;
    [vocab[","], vocab["Ã"]] = [vocab["Ã"], vocab[","]];
    return { ...texts, "tokenizer.json": JSON.stringify(json) };
  });
  const endings = [];
  for (const stop of [[], ["king's queen"]]) {
    for (let n = 1; n <= 6; n++) {
      const limited = generateAll(swapped, { maxNewTokens: n, temperature: 0, stop });
      engine.generateStart(swapped, PROMPT, { maxNewTokens: 100, temperature: 0, stop });
      let text = "";
      for (let i = 0; i < n; i++) text += engine.generateStep(swapped).piece;
      text += engine.generateCancel(swapped);
      assert.equal(text, limited.text, `stopped after ${n} tokens, stop strings ${JSON.stringify(stop)}`);
      endings.push(limited.text.at(-1));
    }
  }
  assert.ok(endings.includes("\uFFFD"), `no run ended inside a character: ${JSON.stringify(endings)}`);
  assert.equal(engine.generateCancel(swapped), "");
  engine.freeModel(swapped);
});

test("a panic is an Internal error with its message, and the engine refuses further calls", async () => {
  const broken = await Engine.create(WASM);
  assert.throws(
    () => broken.call("testing", () => broken.exports.binllm_test_trap(0)),
    (e) => e instanceof BinLLMError && e.name === "Internal" && /testing failed on a bug in binllm: panicked at .*a panic on purpose/s.test(e.message),
  );
  assert.ok(broken.trapped);
  assert.throws(() => broken.info(1), (e) => e.name === "Internal" && /stopped after an earlier error/.test(e.message));
});

test("another trap is an Internal error naming the trap", async () => {
  const broken = await Engine.create(WASM);
  // Codes read from 16 bytes below 4 GiB: past the memory's end.
  assert.throws(
    () => broken.call("testing", () => broken.exports.binllm_pack(0, 2 ** 32 - 16, 1, 64, 0, 0)),
    (e) => e.name === "Internal" && /testing failed on a bug in binllm: WebAssembly trap: memory access out of bounds/.test(e.message),
  );
});

test("memory that cannot grow is OutOfMemory, naming the allocation", async () => {
  const full = await Engine.create(WASM);
  assert.throws(
    () => full.call("testing", () => full.exports.binllm_test_trap(1)),
    (e) => e instanceof BinLLMError && e.name === "OutOfMemory" && /testing could not allocate 1\.00 GiB: the WebAssembly memory cannot grow further/.test(e.message),
  );
});

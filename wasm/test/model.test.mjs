// The engine the worker runs (js/engine.js) against the Python package on the same model file:
// token ids of many strings, decoded text, and generations (greedy, seeded sampling, stop
// strings: text, token count and finish reason) must all be equal.
//
// tests/test_browser.py writes the expectations with Python and sets BINLLM_WASM_EXPECT to
// their JSON file: {model, tokenize: [{text, ids, decoded}], generate: [{prompt, options, text,
// tokens, finish_reason, finish_detail}]}, `options` named as `Engine.generateStart` names them.
// `model` is a GGUF file or a Hugging Face folder (config.json, tokenizer.json, model.safetensors).
// Without it these tests are skipped (`node --test wasm/test/` runs the kernel tests alone).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile, stat } from "node:fs/promises";
import { openSync, readSync, fstatSync } from "node:fs";
import { join } from "node:path";
import { Engine, BinLLMError } from "../js/engine.js";

/** A lazy source over a file on disk: the engine reads it tensor by tensor, as the worker reads a Blob. */
function fileSource(path) {
  const fd = openSync(path, "r");
  return {
    size: fstatSync(fd).size,
    read(offset, length) {
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const n = readSync(fd, out, done, length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
      return out.subarray(0, done);
    },
  };
}

const expectPath = process.env.BINLLM_WASM_EXPECT;
const skip = expectPath ? false : "BINLLM_WASM_EXPECT is not set (tests/test_browser.py sets it)";

async function loaded() {
  const expected = JSON.parse(await readFile(expectPath, "utf8"));
  const engine = await Engine.create(await readFile(new URL("../pkg/binllm_wasm.wasm", import.meta.url)));
  const inWasm = async (path) => {
    const bytes = await readFile(path);
    const buffer = engine.reserveModelFile(bytes.length);
    buffer.write(bytes);
    return buffer;
  };
  if (!(await stat(expected.model)).isDirectory()) {
    return { expected, engine, handle: engine.loadGgufFrom(fileSource(expected.model)), inWasm };
  }
  const json = {};
  for (const name of ["config.json", "tokenizer.json", "generation_config.json", "tokenizer_config.json"]) {
    json[name] = await readFile(join(expected.model, name), "utf8").catch(() => "");
  }
  const handle = engine.loadHf(json, [await inWasm(join(expected.model, "model.safetensors"))]);
  return { expected, engine, handle };
}

const state = skip ? null : await loaded();

test("token ids equal Python's tokenizer", { skip }, () => {
  const { expected, engine, handle } = state;
  for (const { text, ids } of expected.tokenize) {
    assert.deepEqual(engine.encode(handle, text), ids, `ids of ${JSON.stringify(text)}`);
  }
});

test("decoding ids gives Python's text back", { skip }, () => {
  const { expected, engine, handle } = state;
  for (const { ids, decoded } of expected.tokenize) {
    assert.equal(engine.decode(handle, ids), decoded);
  }
});

/** Runs a generation to its end: {text, tokens, finishReason, finishDetail}. */
function generateAll(engine, handle, prompt, options) {
  engine.generateStart(handle, prompt, options);
  let text = "";
  for (;;) {
    const step = engine.generateStep(handle);
    text += step.piece;
    if (step.done) return { text, tokens: step.tokens, finishReason: step.finishReason, finishDetail: step.finishDetail };
    assert.equal(step.finishReason, null);
  }
}

test("generation equals Python's: greedy, sampled, stop strings, finish reason", { skip }, () => {
  const { expected, engine, handle } = state;
  for (const { prompt, options, text, tokens, finish_reason, finish_detail } of expected.generate) {
    const got = generateAll(engine, handle, prompt, options);
    const what = `generation after ${JSON.stringify(prompt)} with ${JSON.stringify(options)}`;
    assert.equal(got.text, text, what);
    assert.deepEqual([got.tokens, got.finishReason, got.finishDetail], [tokens, finish_reason, finish_detail], what);
  }
  // A cancelled generation frees its sequence: stepping it is an error, a new one starts clean.
  const { prompt, options, text } = expected.generate[0];
  engine.generateStart(handle, prompt, options);
  engine.generateStep(handle);
  engine.generateCancel(handle);
  assert.throws(() => engine.generateStep(handle), (e) => e.name === "InvalidArgument" && /no generation is running/.test(e.message));
  assert.equal(generateAll(engine, handle, prompt, options).text, text);
});

test("a GGUF read tensor by tensor and one read whole give the same logits", { skip }, async () => {
  const { expected, engine, handle, inWasm } = state;
  if (!inWasm) return; // a Hugging Face folder: read whole only
  const whole = engine.loadGguf(await inWasm(expected.model));
  try {
    const ids = expected.tokenize.find((t) => t.ids.length >= 3).ids;
    const a = engine.logits(handle, ids);
    const b = engine.logits(whole, ids);
    assert.equal(a.length, ids.length * engine.info(handle).vocab_size);
    assert.deepEqual(Array.from(a), Array.from(b));
    // The last row alone is the last row of all.
    assert.deepEqual(Array.from(engine.logits(handle, ids, false)), Array.from(a.subarray(a.length - engine.info(handle).vocab_size)));
  } finally {
    engine.freeModel(whole);
  }
});

test("a safetensors index lists its shards through the core, which refuses names outside the folder", async () => {
  const engine = await Engine.create(await readFile(new URL("../pkg/binllm_wasm.wasm", import.meta.url)));
  const index = (map) => JSON.stringify({ metadata: {}, weight_map: map });
  assert.deepEqual(engine.shardNames(index({ a: "m-2.safetensors", b: "m-1.safetensors", c: "m-2.safetensors" })), ["m-1.safetensors", "m-2.safetensors"]);
  for (const bad of ["../outside.safetensors", "sub\\m.safetensors", ".hidden"]) {
    assert.throws(() => engine.shardNames(index({ a: bad })), (e) => e instanceof BinLLMError && e.name === "Format" && e.message.includes(`outside the folder: '${bad}'`), bad);
  }
  assert.throws(() => engine.shardNames("{}"), (e) => e.name === "Format" && /no weight_map/.test(e.message));
});

test("bad files and arguments are errors with messages, not traps", { skip }, async () => {
  const { engine } = state;
  const garbage = engine.reserveModelFile(64);
  garbage.write(new Uint8Array(64).fill(7));
  assert.throws(() => engine.loadGguf(garbage), (e) => e instanceof BinLLMError && e.name === "Format" && /magic|GGUF/i.test(e.message));
  const gguf = (await stat(state.expected.model)).isDirectory() ? null : await readFile(state.expected.model);
  const half = engine.reserveModelFile(4096);
  half.write(gguf ? gguf.subarray(0, 4096) : new Uint8Array(4096));
  assert.throws(() => engine.loadGguf(half), (e) => e instanceof BinLLMError && e.message.length > 0);
  assert.throws(() => engine.reserveModelFile(3 * 2 ** 30), (e) => e.name === "TooLarge" && /4 GiB/.test(e.message));
  assert.throws(() => engine.loadGgufFrom({ size: 5 * 2 ** 30, read: () => new Uint8Array(0) }), (e) => e.name === "TooLarge");
  // A lazy source that fails mid-load is an Io error naming the file.
  if (gguf) {
    const failing = { size: gguf.length, read: (o, n) => { if (o > 65536) throw new Error("disk gone"); return gguf.subarray(o, o + n); } };
    assert.throws(() => engine.loadGgufFrom(failing, "flaky.gguf"), (e) => e.name === "Io" && /flaky\.gguf.*disk gone/.test(e.message));
  }
  assert.throws(() => engine.logits(state.handle, []), /no token ids/);
  assert.throws(() => engine.generateStart(state.handle, "", {}), /prompt is empty/);
  // A pasted blob whose length alone proves it longer than the context is refused before it is tokenized.
  assert.throws(
    () => engine.generateStart(state.handle, "a".repeat(1 << 23), {}),
    (e) => e.name === "InvalidArgument" && /the prompt is at least \d+ tokens; the model's context is \d+/.test(e.message),
  );
  assert.throws(() => engine.generateStart(state.handle, "hi", { temperature: -1 }), /temperature/);
  for (const [options, message] of [
    [{ maxNewTokens: 0 }, /max_new_tokens must be at least 1/],
    [{ maxNewTokens: 1.5 }, /max_new_tokens must be an integer/],
    [{ topK: -1 }, /top_k must be an integer/],
    [{ topP: 0 }, /top_p/],
    [{ minP: 2 }, /min_p/],
    [{ repetitionPenalty: 0 }, /repetition_penalty/],
    [{ seed: NaN }, /seed must be a finite number/],
    [{ stop: [""] }, /stop string is empty/],
    [{ stop: [1] }, /stop must be a list of strings/],
    [{ max_tokens: 3 }, /unknown generation option 'max_tokens'/],
  ]) {
    assert.throws(() => engine.generateStart(state.handle, "hi", options), (e) => e.name === "InvalidArgument" && message.test(e.message), JSON.stringify(options));
  }
});

// The wasm engine on mutated model files (tests/test_fuzz.py): every mutant must load and
// generate, or throw a BinLLMError with a message; a trap (a panic or another trap, which
// Engine.call reports as Internal, or an allocation that fails, OutOfMemory) or any other
// exception is a failure.
//
// tests/test_fuzz.py writes the mutants and sets BINLLM_WASM_FUZZ to their JSON file: {folder,
// gguf, cases: [{id, target, case, text | edits}]}. `folder` is the seed model (a Hugging Face
// folder) and `gguf` the same model as GGUF; a case replaces `target` (one of the folder's
// files, or model.gguf) by `text`, or by the seed file with `edits` applied in order: [offset,
// bytes removed, bytes put there as hex]. Before each case its id is written to
// BINLLM_WASM_FUZZ_PROGRESS, so a hang names its case. Without BINLLM_WASM_FUZZ this is skipped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Engine, BinLLMError, bytesSource } from "../js/engine.js";

const manifestPath = process.env.BINLLM_WASM_FUZZ;
const skip = manifestPath ? false : "BINLLM_WASM_FUZZ is not set (tests/test_fuzz.py sets it)";
const JSON_FILES = ["config.json", "tokenizer.json", "generation_config.json", "tokenizer_config.json"];

function applyEdits(data, edits) {
  let out = data;
  for (const [at, remove, hex] of edits) {
    const put = Buffer.from(hex, "hex");
    out = Buffer.concat([out.subarray(0, at), put, out.subarray(at + remove)]);
  }
  return out;
}

/** Runs a generation to its end; returns the number of tokens it made. */
function generateAll(engine, handle, prompt, options) {
  engine.generateStart(handle, prompt, options);
  for (let steps = 0; ; steps++) {
    const step = engine.generateStep(handle);
    if (step.done) {
      assert.ok(step.tokens <= options.maxNewTokens && ["stop", "length"].includes(step.finishReason), JSON.stringify(step));
      return step.tokens;
    }
    assert.ok(steps <= options.maxNewTokens, `${steps} steps for ${options.maxNewTokens} tokens`);
  }
}

/** Loads one mutant the way the worker does and exercises it; throws what the engine throws. */
function exercise(engine, seed, c) {
  let handle;
  if (c.target === "model.gguf") {
    const data = applyEdits(seed.gguf, c.edits);
    if (c.case % 2 === 0) {
      handle = engine.loadGgufFrom(bytesSource(data), "mutant.gguf"); // read tensor by tensor
    } else {
      const buffer = engine.reserveModelFile(data.length, "mutant.gguf");
      buffer.write(data);
      handle = engine.loadGguf(buffer);
    }
  } else {
    const json = { ...seed.json };
    if (c.text !== undefined) json[c.target] = c.text;
    const weights = c.target === "model.safetensors" ? applyEdits(seed.safetensors, c.edits) : seed.safetensors;
    const buffer = engine.reserveModelFile(weights.length, "model.safetensors");
    buffer.write(weights);
    handle = engine.loadHf(json, [buffer]);
  }
  try {
    engine.info(handle);
    engine.encode(handle, "Once upon a time");
    generateAll(engine, handle, "Once upon a time", { maxNewTokens: 3 });
    generateAll(engine, handle, "Hi", { maxNewTokens: 2, temperature: 0.8, seed: 1 });
  } finally {
    engine.freeModel(handle);
  }
}

test("mutated model files are BinLLMErrors with messages, never traps or other exceptions", { skip }, async () => {
  const manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
  const seed = {
    gguf: readFileSync(manifest.gguf),
    safetensors: readFileSync(join(manifest.folder, "model.safetensors")),
    json: Object.fromEntries(JSON_FILES.map((n) => [n, readFileSync(join(manifest.folder, n), "utf8")])),
  };
  const wasm = readFileSync(new URL("../pkg/binllm_wasm.wasm", import.meta.url));
  let engine = await Engine.create(wasm);
  const failures = [];
  for (const c of manifest.cases) {
    if (process.env.BINLLM_WASM_FUZZ_PROGRESS) writeFileSync(process.env.BINLLM_WASM_FUZZ_PROGRESS, c.id);
    try {
      exercise(engine, seed, c);
    } catch (e) {
      // A trap is an Internal error (a panic, or another trap) or an OutOfMemory one (an
      // allocation the file's sizes asked for without a check: these files are 3 MB).
      const trap = engine.trapped || ["Internal", "OutOfMemory"].includes(e?.name);
      if (!(e instanceof BinLLMError) || trap || !e.message) {
        failures.push(`${c.id}: ${e?.name}: ${String(e?.message).slice(0, 300)}`);
      }
      // A trapped engine refuses further calls: start a fresh one.
      if (trap || !(e instanceof BinLLMError)) engine = await Engine.create(wasm);
    }
  }
  assert.equal(failures.length, 0, `${failures.length} of ${manifest.cases.length} mutants failed badly:\n${failures.slice(0, 30).join("\n")}`);
});

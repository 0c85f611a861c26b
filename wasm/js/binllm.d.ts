// Types of the page-side API (js/binllm.js).

export type ModelSource = string | URL | Blob | ArrayBuffer | ArrayBufferView | { files: File[] };

export interface LoadProgress {
  /** "download" | "cache" (read from the Cache API) | "read" (a File) | "parse" (unpacking). */
  phase: "download" | "cache" | "read" | "parse";
  loaded: number;
  /** 0 when unknown (no Content-Length). */
  total: number;
}

/** Whether this engine runs relaxed SIMD, its dot products as the standard says (binllm then loads its relaxed-SIMD build). */
export function hasRelaxedSimd(): boolean;
/** The module `BinLLM.load` uses by default: relaxed SIMD where the engine has it. */
export function defaultWasmUrl(): string;

export interface LoadOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** Keep downloads in the Cache API (default true). */
  cache?: boolean;
  wasmUrl?: string;
  workerUrl?: string | URL;
  /** Threads (default: the cores, at most 8, where the page can run threads; else 1). */
  threads?: number;
  /** The output layer's storage (the embedding matrix's when they are tied), re-stored as it is read; default: the file's. */
  outputType?: "f32" | "f16" | "q8_0" | "q6_k" | null;
  /** How ternary linears are packed; default t2 (TQ1_0 files too). */
  ternaryFormat?: "t2" | "t1.6" | null;
  /** The KV cache's type; default f16. */
  kvType?: "f16" | "f32" | null;
}

export interface ModelInfo {
  architecture: string;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  vocab_size: number;
  max_position_embeddings: number;
  activation: string;
  linear: string;
  bos_token_id: number | null;
  eos_token_ids: number[];
  weight_bytes: number;
  /** How the output layer (the embedding matrix when tied) is stored. */
  output_storage: "f32" | "f16" | "q8" | "q6_k";
  kv_type: "f16" | "f32";
  backend: string;
  /** The relaxed SIMD dot product the ternary kernels use ("i32" or "i16", chosen for this engine); null in the SIMD128 module. */
  dot_product: "i32" | "i16" | null;
  threads: number;
  memory_bytes: number;
}

export interface GenerationStats {
  tokens: number;
  promptTokens: number;
  promptMs: number;
  decodeMs: number;
  tokensPerSecond: number;
  memoryBytes: number;
}

export interface GenerationResult extends GenerationStats {
  text: string;
  /** True when `stop()` ended the generation (then finishReason is null, and the text is what
   * maxNewTokens of the tokens generated would give: text held back comes out). */
  stopped: boolean;
  /** OpenAI's finish reason: "stop" (end of sequence, a stop string) or "length". */
  finishReason: "stop" | "length" | null;
  /** Why exactly: an end-of-sequence token, a stop string, maxNewTokens, or a full context. */
  finishDetail: "eos" | "stop_string" | "max_tokens" | "context" | null;
}

/** The options of Python's `binllm.Model.generate`, camel-cased. */
export interface GenerateOptions {
  /** Default 128. */
  maxNewTokens?: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 (default) is off. */
  topK?: number;
  /** Nucleus sampling; 1 (default) is off. */
  topP?: number;
  /** Drop tokens below minP times the top probability; 0 (default) is off. */
  minP?: number;
  /** CTRL-style penalty on tokens of the prompt and output; 1 (default) is off. */
  repetitionPenalty?: number;
  /** Seed of the sampler (an integer below 2^53); the same seed gives Python's text. */
  seed?: number;
  /** Text ends before the first of these strings (not included). */
  stop?: string | string[];
  onToken?: (piece: string, stats: GenerationStats) => void;
}

export interface BenchResult {
  prompt_tokens: number;
  decode_tokens: number;
  prompt_tok_s: number;
  decode_tok_s: number;
  memory_bytes: number;
}

export declare class BinLLMError extends Error {
  /** The kind: "Format", "Unsupported", "InvalidArgument", "TooLarge", "OutOfMemory", "Io", "Internal" (a bug), "WorkerError", ... */
  name: string;
}

export declare class BinLLM {
  static load(source: ModelSource, options?: LoadOptions): Promise<BinLLM>;
  info(): ModelInfo;
  generate(prompt: string, options?: GenerateOptions): Promise<GenerationResult>;
  stop(): void;
  tokenize(text: string, options?: { addSpecialTokens?: boolean }): Promise<number[]>;
  detokenize(ids: Iterable<number>, options?: { skipSpecialTokens?: boolean }): Promise<string>;
  /** Teacher-forced logits from position 0: ids.length x vocab floats, or vocab with {all: false}. */
  logits(ids: Iterable<number>, options?: { all?: boolean }): Promise<Float32Array>;
  bench(options?: { promptTokens?: number; decodeTokens?: number; repeats?: number }): Promise<BenchResult>;
  dispose(): void;
}

export default BinLLM;

"""``binllm.Model``: load a binarized (or float) LLM and generate text with it.

The forward pass, KV cache and sampler live in the Rust core; this module adds what Python
users expect around them: ``from_pretrained``, tokenization, chat templates, stop strings and
streaming.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np

from binllm import _core, chat_template, kernels
from binllm import tokenizer as _tok
from binllm._core import BinllmError, InvalidArgumentError, ModelFormatError, ModelNotFoundError

Messages = Sequence[dict]
Prompt = Union[str, Messages]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _resolve(path_or_id: str | os.PathLike, revision: str | None) -> Path:
    """A local folder or .gguf file, or a Hugging Face model id downloaded (when online)."""
    if path_or_id is None or (path_or_id == "default" and not Path("default").exists()):
        return default_model_path()
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(f"a model is named by a path or a hub id, got {type(path_or_id).__name__}")
    if str(path_or_id).strip() == "":
        raise InvalidArgumentError("the model path is empty (use binllm.model.default_model_path() for the embedded model)")
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    text = str(path_or_id)
    if not _HUB_ID.match(text):
        raise ModelNotFoundError(f"no model at '{text}' (not a folder, a .gguf file, or a Hugging Face id like 'owner/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BinllmError(f"'{text}' is not a local path; to download it from the Hugging Face hub, pip install huggingface_hub") from e
    patterns = ["*.json", "*.safetensors", "*.gguf", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id=text, revision=revision, allow_patterns=patterns))
    except Exception as e:
        reason = " ".join(str(e).split())  # huggingface_hub's messages span lines; ours is one
        raise BinllmError(f"could not download '{text}' from the Hugging Face hub: {reason}") from e


def _token_id(t: Any) -> int:
    """A token id as an int; floats (1.7) and bools are refused, never truncated."""
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
        raise InvalidArgumentError(f"token ids are integers, got {t!r} ({type(t).__name__})")
    return int(t)


DEFAULT_MODEL = Path(__file__).parent / "default_model"


def default_model_path() -> Path:
    """The model ``binllm generate`` uses when none is named: binllm's embedded 4.5M-parameter
    ternary model (``binllm/default_model``, see its MODEL_CARD.md), shipped in the package."""
    if not (DEFAULT_MODEL / "config.json").is_file():
        raise BinllmError(f"the embedded default model is missing from {DEFAULT_MODEL}; pass a model path")
    return DEFAULT_MODEL


class Model:
    """A model ready to generate. Build it with :meth:`from_pretrained`."""

    def __init__(self, core: _core.Model, tokenizer_json: str, source: Path, defaults: dict):
        self._core = core
        # A folder's files are named as the core names them; a GGUF's tokenizer is in the file.
        self.tokenizer = _tok.from_json(tokenizer_json, "tokenizer.json" if source.is_dir() else f"{source}: the tokenizer in its metadata")
        # The file's own text: `tokenizers`' to_str() walks every id up to the largest, which
        # one hostile id of 2**31 turns into minutes.
        self._tokenizer_json = tokenizer_json
        self.source = source
        self.config = core.config()
        # What the checkpoint says about generating (the core reads it with the model): EOS set,
        # BOS, chat template, and the sampling generation_config.json asks for.
        self.generation_defaults = defaults
        self.eos_token_ids = list(defaults["eos_token_ids"])
        self.chat_template = defaults["chat_template"]
        self._detokenizer = None  # built from tokenizer.json on first use (generation)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike | None = None,
        threads: int | None = None,
        act_quant: bool = True,
        revision: str | None = None,
        output_type: str | None = None,
        ternary_format: str | None = None,
        kv_type: str | None = None,
    ) -> "Model":
        """Loads a Hugging Face folder (config.json + safetensors), a ``.gguf`` file, or a model
        id from the Hugging Face hub (needs ``huggingface_hub`` and a network). No argument (or
        ``"default"``) loads the embedded model (``binllm/default_model``).

        ``threads`` sets the kernels' worker threads (default: all cores). ``act_quant=False``
        runs BitNet linears with float activations (a reference mode, not for speed).
        ``output_type`` ("f16", "q8_0", "q6_k" or "f32") re-stores the output layer (the
        embeddings when tied): against f16, "q8_0" halves what each decoded token reads there
        and "q6_k" (GGML's 6-bit blocks, with int8 activations as llama.cpp runs them) reads 41%.
        ``ternary_format`` ("t2" or "t1.6") re-packs ternary linears: t1.6 holds 1.6 bits a
        weight (TQ1_0's density) against t2's 2. ``kv_type`` ("f16", the default, or "f32")
        is how the KV cache holds keys and values: f16, as llama.cpp's default cache, reads and
        holds half of f32's bytes; "f32" keeps them unrounded.
        """
        _core.threads_from_env()  # a bad BINLLM_THREADS is an error, not silently all cores
        if threads is not None:
            kernels.set_num_threads(threads)
        path = _resolve(path_or_id, revision)
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelFormatError(f"{path} is not a model folder: it has no config.json")
        if not path.is_dir() and path.suffix.lower() != ".gguf":
            raise ModelFormatError(f"{path}: binllm loads Hugging Face folders and .gguf files")
        core, tokenizer_json, defaults = _core.load_model(str(path), act_quant, output_type, ternary_format, kv_type)
        if tokenizer_json is None:
            raise ModelNotFoundError(f"{path} has no tokenizer.json")
        return cls(core, tokenizer_json, path, defaults)

    # ------------------------------------------------------------------ tokens and text

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        bos = self.generation_defaults["bos_token_id"]
        if self.generation_defaults["add_bos"] and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        """Renders chat messages with the model's chat template (chat_template.jinja,
        tokenizer_config.json or GGUF)."""
        template = self.chat_template
        if not template:
            raise BinllmError(
                f"{self.source.name} has no chat template (none in chat_template.jinja, tokenizer_config.json or the GGUF): "
                "give the prompt as a string, or chat with `binllm chat`, whose plain mode needs none"
            )
        special = {key: self.generation_defaults[key] or "" for key in ("bos_token", "eos_token")}
        return chat_template.render(template, messages=list(messages), add_generation_prompt=add_generation_prompt, **special)

    # ------------------------------------------------------------------ compute

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Float32 logits (len(token_ids), vocab) for the whole sequence."""
        ids = [_token_id(t) for t in token_ids]
        if not ids:
            raise InvalidArgumentError("token_ids is empty")
        session = self._core.session(len(ids))
        if len(ids) > session.capacity:
            raise InvalidArgumentError(f"{len(ids)} tokens exceed the model's context of {session.capacity}")
        return session.forward(ids, all_logits=True)

    def generate(
        self,
        prompt: Prompt,
        max_new_tokens: int = 128,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
    ) -> Union[str, Iterator[str]]:
        """Generates a continuation of ``prompt`` (a string, chat messages rendered with the
        model's chat template, or a list of token ids used as they are).

        Greedy when ``temperature`` is 0 (the default, unless generation_config.json asks for
        sampling). Stops at an end-of-sequence token, at any of the ``stop`` strings (not
        included in the output), after ``max_new_tokens``, or when the context is full.
        Returns the text, or with ``stream=True`` an iterator of text pieces.
        """
        ids, params, stops = self._prepare(prompt, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop)
        pieces = self._pieces(ids, max_new_tokens, params, stops)
        return pieces if stream else "".join(pieces)

    def _prepare(self, prompt, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop):
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidArgumentError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if isinstance(prompt, (list, tuple)) and prompt and not any(isinstance(m, dict) for m in prompt):
            ids = [_token_id(t) for t in prompt]  # token ids, as given
        else:
            if isinstance(prompt, str):
                text = prompt
            elif isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
                text = self.apply_chat_template(prompt)
            else:
                raise TypeError("prompt must be a string, a list of chat messages ({'role': ..., 'content': ...}) or a list of token ids")
            if not text:
                raise InvalidArgumentError("prompt is empty")
            ids = self.encode(text)
        if not ids:
            raise InvalidArgumentError("prompt is empty after tokenization")
        vocab = self.config["vocab_size"]
        if any(t < 0 or t >= vocab for t in ids):  # also keeps them within u32 for the core
            raise InvalidArgumentError(f"token ids must be in [0, {vocab})")
        gd = self.generation_defaults
        sampling = gd["do_sample"]

        def default(key, sampled, otherwise):
            return (sampled if gd[key] is None else gd[key]) if sampling else otherwise

        if temperature is None:
            temperature = default("temperature", 1.0, 0.0)
        if top_k is None:
            top_k = default("top_k", 0, 0)
        if top_p is None:
            top_p = default("top_p", 1.0, 1.0)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise InvalidArgumentError(f"top_k must be an int >= 0, got {top_k!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InvalidArgumentError(f"seed must be an int >= 0, got {seed!r}")
        params = dict(temperature=float(temperature), top_k=top_k, top_p=float(top_p), min_p=float(min_p), repetition_penalty=float(repetition_penalty), seed=seed)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) for s in stops):
            raise InvalidArgumentError("stop must be a non-empty string or a list of them")
        # Every value as the core engine checks it (context, sampling, empty stop strings), now,
        # before the request runs or waits in a queue.
        _core.Engine.validate(self._core, ids, max_new_tokens, stop=stops, **params)
        return ids, params, stops

    def _pieces(self, ids: list[int], max_new_tokens: int, params: dict, stops: list[str]) -> Iterator[str]:
        for piece, _ in self._steps(ids, max_new_tokens, params, stops):
            if piece:
                yield piece

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 128,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: str | Sequence[str] | None = None,
    ) -> list[str]:
        """Generates a continuation of every prompt, all decoding together (one batched forward
        pass a step; a sequence that finishes leaves the batch). The same arguments as
        :meth:`generate`, for every prompt; each text equals what :meth:`generate` gives its
        prompt alone. For requests that arrive over time, use :class:`binllm.Engine`."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise TypeError("prompts must be a list of prompts")
        jobs = [self._prepare(p, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop) for p in prompts]
        return self._run_batch([(ids, max_new_tokens, params, stops) for ids, params, stops in jobs])

    def _run_batch(self, jobs: list[tuple[list[int], int, dict, list[str]]]) -> list[str]:
        """Texts of (ids, max_new_tokens, sampling params, stops) jobs decoded together in one
        core engine (a finished one leaves the batch)."""
        engine = self._engine()
        order = {engine.add(ids, max_new, stop=stops, **params): i for i, (ids, max_new, params, stops) in enumerate(jobs)}
        texts = [""] * len(jobs)
        while len(engine):
            for sid, text, *_ in engine.step():
                texts[order[sid]] += text
        return texts

    def _steps(self, ids: list[int], max_new_tokens: int, params: dict, stops: list[str]):
        """Yields (text piece, tokens generated so far) once a token; returns the finish
        reason: "stop" (EOS or a stop string) or "length". The loop is the core engine's."""
        engine = self._engine()
        engine.add(ids, max_new_tokens, stop=stops, **params)
        while True:
            for _, text, tokens, reason, _ in engine.step():
                yield text, tokens
                if reason is not None:
                    return reason

    def _engine(self, eos: Sequence[int] | None = None) -> "_core.Engine":
        """A core engine (sequences stepping together) for this model; generation ends at
        `eos` (default: the model's end-of-sequence tokens)."""
        if self._detokenizer is None:
            self._detokenizer = _core.Detokenizer(self._tokenizer_json)
        return _core.Engine(self._core, self._detokenizer, self.eos_token_ids if eos is None else list(eos))

    # ------------------------------------------------------------------ facts

    def info(self) -> dict[str, Any]:
        """Architecture, parameter count, bytes, and true bits per weight per tensor kind."""
        groups: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for kind, storage, params, nbytes in self._core.tensor_summary():
            g = groups[(kind, storage)]
            g[0] += params
            g[1] += nbytes
        tensors = [
            {"kind": k, "storage": s, "parameters": p, "bytes": b, "bits_per_weight": round(8 * b / p, 4)}
            for (k, s), (p, b) in sorted(groups.items())
        ]
        return {
            "source": str(self.source),
            "architecture": self.config["architecture"],
            "config": self.config,
            "parameters": sum(t["parameters"] for t in tensors),
            "bytes": self._core.nbytes,
            "tensors": tensors,
            "tokenizer": self._tokenizer_info(),
            "backend": kernels.backend(),
            "threads": kernels.num_threads(),
        }

    def _tokenizer_info(self) -> dict[str, Any]:
        """The tokenizer's kind and pre-tokenizer: llama.cpp's name for it where it has one
        (llama-bpe, smollm, gpt-2, ...), else the tokenizers step types."""
        spec = json.loads(self._tokenizer_json)
        pre = spec.get("pre_tokenizer")
        name = _core.pre_tokenizer_name(json.dumps(pre)) if pre else None
        if name is None and pre:
            steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
            name = "+".join(str(step.get("type")) for step in steps)
        return {
            "model": (spec.get("model") or {}).get("type"),
            "pre_tokenizer": name,
            "normalizer": (spec.get("normalizer") or {}).get("type"),
            "vocab_size": self.tokenizer.get_vocab_size(),
        }

    def __repr__(self) -> str:
        c = self.config
        return f"Model({self.source.name!r}, {c['architecture']}, {c['num_hidden_layers']} layers, hidden {c['hidden_size']})"

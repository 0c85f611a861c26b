"""binllm as a model backend of EleutherAI's lm-evaluation-harness (the optional extra
``binllm[eval]``): the task accuracies of binarization papers (PIQA, ARC, HellaSwag,
WinoGrande, BoolQ, LAMBADA) for any model binllm loads.

    binllm lm-eval --model binllm --model_args pretrained=PATH,threads=N --tasks lambada_openai

``binllm lm-eval`` is lm-eval's own command line with ``binllm`` registered as a model (the
harness has no plugin entry point for models, so plain ``lm_eval --model binllm`` cannot find
it); from Python, importing this module registers it for ``lm_eval.simple_evaluate(model=
"binllm", ...)``, or pass ``BinllmLM(...)`` itself.

Scoring runs through binllm's engine, one sequence at a time (it has no cross-sequence
batches); requests that share a context (the choices of a multiple-choice question) share its
forward pass: the context goes through a KV-cache session once, each continuation after it,
and the cache is cut back to the context between them. Log-likelihoods are those of
``Model.logits`` on the joined tokens (the incremental path may differ from one full forward
pass by float rounding, about 1e-6 of a logit). Inputs longer than the context keep their last
``max_length`` tokens, as the harness's Hugging Face backend does.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Optional

import numpy as np

from binllm.extras import install_hint

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(install_hint("eval", "binllm's lm-evaluation-harness backend needs lm_eval")) from e

from binllm.model import Model

log = logging.getLogger(__name__)

# Arguments lm-eval passes to every backend that mean nothing to a one-process CPU engine.
_IGNORED = ("batch_size", "max_batch_size", "device", "dtype", "trust_remote_code")


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


@register_model("binllm")
class BinllmLM(TemplateLM):
    """`pretrained`: a model folder, .gguf file or hub id (anything ``Model.from_pretrained``
    takes); `threads`: worker threads; `max_length`: context (default: the model's);
    `act_quant`: False runs BitNet linears with float activations (a reference mode)."""

    def __init__(self, pretrained: str, threads: Optional[int] = None, max_length: Optional[int] = None, act_quant: bool = True, seed: int = 0, **kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(k for k in kwargs if k not in _IGNORED)
        if unknown:
            raise ValueError(f"binllm backend: unknown model_args {unknown}; it takes pretrained, threads, max_length, act_quant, seed")
        threads = int(threads) if threads is not None else None
        self.model = Model.from_pretrained(pretrained, threads=threads, act_quant=_bool(act_quant))
        limit = int(self.model.config["max_position_embeddings"])
        self._max_length = min(int(max_length), limit) if max_length is not None else limit
        if self._max_length < 2:
            raise ValueError("max_length must be at least 2")
        self.seed = int(seed)
        self.pretrained = str(pretrained)

    # ------------------------------------------------------------------ tokens

    @property
    def eot_token_id(self) -> int:
        eos = self.model.eos_token_ids
        if not eos:
            raise ValueError("this model declares no end-of-sequence token")
        return eos[0]

    @property
    def prefix_token_id(self) -> int:
        bos = self.model.config.get("bos_token_id")
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(self.model.source).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        if add_special_tokens is None:
            return self.model.encode(string)
        return list(self.model.tokenizer.encode(string, add_special_tokens=add_special_tokens).ids)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.model.decode(tokens)

    def chat_template(self, chat_template: bool | str = False) -> Optional[str]:
        if chat_template is False or chat_template is None:
            return None
        return self.model.chat_template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.model.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    # ------------------------------------------------------------------ scoring

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy?) per (key, context_ids, continuation_ids)."""
        results: list[Optional[tuple[float, bool]]] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = defaultdict(list)
        for i, (_key, context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError("an empty continuation has no log-likelihood")
            whole = list(context) + list(continuation)
            # Keep the last max_length + 1 tokens: the last is only predicted, never input.
            whole = whole[-(self.max_length + 1) :]
            split = len(whole) - len(continuation)
            if split < 1:  # the continuation alone overflows: it loses its first tokens
                whole, split = whole[-self.max_length - 1 :], 1
            groups[tuple(whole[:split])].append((i, whole[split:]))
        core = self.model._core
        for context, items in groups.items():
            longest = max(len(c) for _, c in items)
            session = core.session(min(self.max_length, len(context) + longest))
            last = session.forward(list(context))  # logits predicting the first continuation token
            for i, cont in items:
                rows = [last[None, :]]
                if len(cont) > 1:
                    rows.append(session.forward(cont[:-1], all_logits=True))
                logits = np.concatenate(rows, axis=0)
                logp = _log_softmax(logits)
                target = np.asarray(cont)
                total = float(logp[np.arange(len(cont)), target].sum())
                greedy = bool((logits.argmax(axis=-1) == target).all())
                results[i] = (total, greedy)
                session.truncate(len(context))
                key = requests[i][0]
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, results[i])
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string, in disjoint windows of the context (each token
        predicted once, after the prefix token)."""
        out = []
        for req in requests:
            (string,) = req.args
            tokens = self.tok_encode(string, add_special_tokens=False)
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            total = sum(s for s, _ in scores)
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or, with do_sample/temperature, seeded sampling) continuations that stop at
        any of `until`, at end-of-sequence, or after `max_gen_toks` tokens (default 256)."""
        jobs = []
        for req in requests:
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            max_new = int(kw.pop("max_gen_toks", 256))
            sample = bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 0.0)) if sample else 0.0
            kw.pop("temperature", None)
            params = dict(
                temperature=temperature,
                top_k=int(kw.pop("top_k", 0) or 0),
                top_p=float(kw.pop("top_p", 1.0) or 1.0),
                min_p=0.0,
                repetition_penalty=float(kw.pop("repetition_penalty", 1.0)),
                seed=int(kw.pop("seed", self.seed)),
            )
            if kw:
                log.warning("binllm backend ignores gen_kwargs %s", sorted(kw))
            ids = self.tok_encode(context)
            ids = ids[-max(1, self.max_length - max_new) :]
            jobs.append((ids, max_new, params, [s for s in until if s]))
        # Every request decodes in the engine's batch, each with its own stops and sampling;
        # texts equal one-by-one generation.
        out = self.model._run_batch(jobs)
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() not in ("0", "false", "no", "off")
    return bool(v)


def main(argv: Optional[list[str]] = None) -> int:
    """lm-eval's command line with the binllm backend registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["binllm lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0


__all__ = ["BinllmLM", "main"]


if __name__ == "__main__":
    import sys

    sys.exit(main())

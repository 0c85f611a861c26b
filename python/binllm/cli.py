"""The ``binllm`` command: generate, chat, serve, info, convert, bench, demo, train, distill, quantize,
eval, compare, lm-eval.

Every error is printed as one clear line (``binllm: error: ...``) with a non-zero exit code,
never a traceback (set BINLLM_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from binllm import BinllmError, _core
from binllm.extras import install_hint

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _load(model_arg: str | None, threads: int | None, quiet: bool = False, output_type: str | None = None, kv_type: str | None = None):
    from binllm.model import Model, default_model_path

    path = model_arg or default_model_path()
    start = time.perf_counter()
    model = Model.from_pretrained(path, threads=threads, output_type=output_type, kv_type=kv_type)
    if not quiet:
        print(f"[binllm] loaded {model.source.name} in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return model


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", "-n", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--temperature", "-t", type=float, default=None, help="0 = greedy (default, unless the model's generation_config samples)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    _output_type_arg(p)
    _kv_type_arg(p)


def _output_type_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output-type",
        choices=["f16", "q8_0", "q6_k", "f32"],
        default=None,
        help="keep the output layer (the embeddings when tied) as this type; against f16, q8_0 halves what each token reads there and q6_k reads 41%%",
    )


def _kv_type_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-type", choices=["f16", "f32"], default=None, help="how the KV cache holds keys and values (default f16, as llama.cpp; f32 reads twice the bytes)")


def _sampling(ns) -> dict:
    return dict(
        max_new_tokens=ns.max_new_tokens,
        temperature=ns.temperature,
        top_k=ns.top_k,
        top_p=ns.top_p,
        min_p=ns.min_p,
        repetition_penalty=ns.repetition_penalty,
        seed=ns.seed,
        stop=ns.stop,
    )


def cmd_generate(ns) -> int:
    if len(ns.args) > 2:
        raise ValueError("usage: binllm generate [MODEL] PROMPT")
    model_arg, prompt = (ns.args[0], ns.args[1]) if len(ns.args) == 2 else (None, ns.args[0])
    model = _load(model_arg, ns.threads, output_type=ns.output_type, kv_type=ns.kv_type)
    if ns.chat:
        if not model.chat_template:
            raise BinllmError(f"{model.source.name} has no chat template, so --chat cannot format the prompt; drop --chat, or use `binllm chat` (plain mode)")
        prompt = [{"role": "user", "content": prompt}]
    start = time.perf_counter()
    ids, params, stops = model._prepare(prompt, **_sampling(ns))
    steps = model._steps(ids, ns.max_new_tokens, params, stops)
    tokens = 0
    while True:
        try:
            piece, tokens = next(steps)
        except StopIteration as end:
            reason = end.value
            break
        sys.stdout.write(piece)
        sys.stdout.flush()
    elapsed = time.perf_counter() - start
    sys.stdout.write("\n")
    rate = f", {tokens / elapsed:.1f} tokens/s" if elapsed > 0 else ""
    print(f"[binllm] generated {tokens} tokens in {elapsed:.2f} s{rate}", file=sys.stderr)
    context = model.config["max_position_embeddings"]
    if reason == "length" and tokens < ns.max_new_tokens:
        print(f"[binllm] stopped before {ns.max_new_tokens} tokens: the model's context ({context} tokens) is full", file=sys.stderr)
    return 0


PLAIN_TURN = "\nUser: "


def _plain_prompt(messages: list[dict]) -> str:
    """A conversation for a model without a chat template: "System: ...", "User: ..." and
    "Model: ..." lines, ending with "Model:" for the reply."""
    names = {"system": "System", "user": "User", "assistant": "Model"}
    return "".join(f"{names[m['role']]}: {m['content']}\n" for m in messages) + "Model:"


def cmd_chat(ns) -> int:
    model = _load(ns.model, ns.threads, output_type=ns.output_type, kv_type=ns.kv_type)
    messages = []
    if ns.system:
        messages.append({"role": "system", "content": ns.system})
    plain = not model.chat_template
    if plain:
        print(
            f"[binllm] {model.source.name} has no chat template: plain mode (the conversation as 'User: ...' and "
            "'Model: ...' lines; a reply ends where the model starts the next 'User:' line)",
            file=sys.stderr,
        )
    print("[binllm] chat: type a message; an empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not line.strip() or line.strip() in ("/exit", "/quit"):
            return 0
        messages.append({"role": "user", "content": line})
        reply = []
        kw = _sampling(ns)
        if plain:
            kw["stop"] = [PLAIN_TURN, *(kw["stop"] or [])]
        for piece in model.generate(_plain_prompt(messages) if plain else messages, stream=True, **kw):
            sys.stdout.write(piece)
            sys.stdout.flush()
            reply.append(piece)
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})


def cmd_serve(ns) -> int:
    from binllm.server import serve

    serve(ns.model, host=ns.host, port=ns.port, max_batch=ns.max_batch, max_queue=ns.max_queue, ctx=ns.ctx, api_key=ns.api_key, threads=ns.threads, kv_type=ns.kv_type)
    return 0


def cmd_info(ns) -> int:
    model = _load(ns.model, ns.threads, quiet=True, output_type=ns.output_type)
    info = model.info()
    if ns.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info["config"]
    print(f"model          {info['source']}")
    print(f"architecture   {c['architecture']} ({'BitNet b1.58 linears' if c['bitnet'] else 'float linears'}, {c['hidden_act']}, sub-norms {c['sub_norms']})")
    print(f"shape          hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads ({c['num_key_value_heads']} KV), intermediate {c['intermediate_size']}, vocab {c['vocab_size']}")
    print(f"context        {c['max_position_embeddings']} tokens, head size {c['head_dim']}, rms_norm_eps {c['rms_norm_eps']:g}")
    print(f"RoPE           theta {c['rope_theta']:g}, {c['rope_style']} pairs, scaling {c['rope_scaling']}")
    if c["bitnet"]:
        scale = ", packed weight_scale multiplies (AutoBitLinear)" if c["weight_scale"] == "multiply" else ""
        print(f"linears        ternary weights, int8 activations {'on' if c['act_quant'] else 'off'}{scale}")
    t = info["tokenizer"]
    print(f"tokenizer      {t['model']}, pre-tokenizer {t['pre_tokenizer']}, {t['vocab_size']} tokens" + (f", normalizer {t['normalizer']}" if t["normalizer"] else ""))
    print(f"parameters     {info['parameters'] / 1e6:.1f} M")
    print(f"memory         {info['bytes'] / 2**20:.1f} MiB of weights")
    print(f"compute        backend {info['backend']}, {info['threads']} threads")
    print()
    print(f"{'tensors':<12}{'storage':<9}{'parameters':>14}{'MiB':>10}{'bits/weight':>13}")
    for t in info["tensors"]:
        print(f"{t['kind']:<12}{t['storage']:<9}{t['parameters']:>14,}{t['bytes'] / 2**20:>10.2f}{t['bits_per_weight']:>13.4f}")
    return 0


def cmd_convert(ns) -> int:
    from binllm.convert import convert

    def say(message: str) -> None:
        # --quiet keeps warnings (what llama.cpp will do differently), drops the stages.
        if not ns.quiet or message.startswith("warning:"):
            print(f"[binllm] {message}", file=sys.stderr)

    summary = convert(ns.src, ns.dst, type=ns.type, embedding_type=ns.output_type, progress=say, force=ns.force)
    if not ns.quiet:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _say(quiet: bool):
    from binllm.quantize.calib import stderr_progress

    state = {"open": False}

    def say(message: str) -> None:
        if quiet:
            return
        stderr_progress(message)
        state["open"] = True

    def done() -> None:
        if state["open"]:
            print(file=sys.stderr)

    return say, done


def cmd_quantize(ns) -> int:
    from binllm.quantize import quantize_model

    say, done = _say(ns.quiet)
    try:
        report = quantize_model(
            ns.src,
            ns.dst,
            method=ns.method,
            group_size=ns.group_size,
            calib=ns.calib,
            calib_tokens=ns.calib_tokens,
            ctx=ns.ctx,
            keep=ns.keep or (),
            gguf=ns.gguf,
            progress=say,
            sequential=not ns.one_pass,
            scale=ns.scale,
        )
    finally:
        done()
    print(json.dumps(report, indent=2))
    return 0


def _text_slices(files):
    from binllm.evaluate import slices_from_files

    return slices_from_files(files) if files else None


def cmd_eval(ns) -> int:
    from binllm.ab import prepare_out, read_prompts, write_report
    from binllm.evaluate import evaluate

    ab_mode = ns.base is not None or ns.base_logits is not None
    if ns.out is not None and not ab_mode:
        raise ValueError("--out writes the A/B report: give --base or --base-logits")
    if ns.out is not None:
        prepare_out(ns.out, ns.force)  # refuse before the work, not after
    prompts = read_prompts(ns.prompts) if ns.prompts else None
    say, done = _say(ns.quiet or ns.json)
    try:
        r = evaluate(
            ns.model,
            _text_slices(ns.text),
            ctx=ns.ctx,
            max_tokens=ns.max_tokens,
            bench=not ns.no_bench,
            threads=ns.threads,
            progress=say,
            base=ns.base,
            base_logits=ns.base_logits,
            save_base_logits=ns.save_base_logits,
            top_k=ns.top_k,
            prompts=prompts,
            gen_tokens=ns.gen_tokens,
            force=ns.force,
        )
    finally:
        done()
    if ns.out is not None:
        write_report(r, ns.out, force=True)
    if ns.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"model            {r['model']}")
    ppl = f"{r['perplexity']:.3f}" if r["perplexity"] < 1e6 else f"{r['perplexity']:.4g}"
    print(f"perplexity       {ppl}  ({r['tokens']} tokens, {r['windows']} windows of {r['ctx']})")
    for s in r.get("slices", []):
        print(f"  {s['name']:<14} {s['perplexity']:.3f}  ({s['tokens']} tokens)")
    if "ab" in r:
        from binllm.ab import fmt

        ab = r["ab"]
        kind = "exact" if ab["kld_exact"] else f"base top {ab['top_k']}, a lower bound"
        print(f"against base     {ab['base']}  (KLD = KL(base || model) per token, nats, {kind})")
        print(f"  {'slice':<14} {'ppl base':>10} {'ppl model':>10} {'ratio':>9} {'KLD mean':>9} {'median':>8} {'p99':>8} {'top-1':>7} {'top-5 miss':>10}")
        for s in ab["slices"] + [{**ab["pooled"], "name": "pooled"}]:
            mark = "  <- worst" if s["name"] == ab["worst_slice"] and len(ab["slices"]) > 1 else ""
            print(
                f"  {s['name']:<14} {fmt('perplexity', s['base_perplexity']):>10} {fmt('perplexity', s['perplexity']):>10} {fmt('ppl_ratio', s['ppl_ratio']):>9} "
                f"{fmt('kld_mean', s['kld_mean']):>9} {fmt('kld_median', s['kld_median']):>8} {fmt('kld_p99', s['kld_p99']):>8} {fmt('top1_agreement', s['top1_agreement']):>7} {fmt('top5_miss', s['top5_miss']):>10}{mark}"
            )
    for g in r.get("generations", []):
        div = "identical" if g["first_divergence"] is None else f"first differ at token {g['first_divergence']}"
        print(f"prompt           {g['prompt']!r}: {div}")
    print(f"bits/weight      {r['linear_bits_in_memory']:.3f} (decoder linears in memory, as {'+'.join(r['storage'])}), {r['model_bits_in_memory']:.3f} (whole model)")
    print(f"file             {r['file_bytes'] / 2**20:.1f} MiB")
    if r["resident_bytes"] is not None:
        print(f"resident memory  {r['resident_bytes'] / 2**20:.1f} MiB (weights {r['weight_bytes'] / 2**20:.1f} MiB)")
    if "decode_tok_s" in r:
        print(f"speed            prompt {r['prompt_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s ({r['threads']} threads, {r['backend']})")
    if ns.out is not None:
        print(f"[binllm] wrote {ns.out}/report.md, report.html, report.json", file=sys.stderr)
    return 0


def cmd_compare(ns) -> int:
    from binllm.evaluate import compare

    say, done = _say(ns.quiet)
    labels = ns.labels.split(",") if ns.labels else None
    try:
        rows = compare(ns.models, ns.text, ns.out, ctx=ns.ctx, max_tokens=ns.max_tokens, labels=labels, threads=ns.threads, plot=not ns.no_plot, progress=say, top_k=ns.top_k, bench=not ns.no_bench, force=ns.force)
    finally:
        done()
    print((Path(ns.out) / "report.md").read_text(encoding="utf-8"), end="")
    extra = (", base-logits.npz" if ns.top_k is not None else "") + ("" if ns.no_plot else ", report.png")
    print(f"[binllm] wrote {ns.out}/report.md, report.csv, report.json{extra} ({len(rows)} models)", file=sys.stderr)
    return 0


def cmd_lm_eval(ns) -> int:
    try:
        from binllm.harness import main as harness_main
    except ImportError as e:
        raise BinllmError(install_hint("eval", "lm-eval needs the harness")) from e
    return harness_main(ns.lm_eval_args)


def cmd_bench(ns) -> int:
    from binllm.bench import bench_model

    model = _load(ns.model, ns.threads, output_type=ns.output_type, kv_type=ns.kv_type)
    result = bench_model(model, prompt_tokens=ns.prompt_tokens, decode_tokens=ns.decode_tokens, repeats=ns.repeats, progress=True)
    print(f"prompt  {result['prompt_tokens']:>5} tokens  {result['prompt_tok_s']:>9.1f} tok/s")
    print(f"decode  {result['decode_tokens']:>5} tokens  {result['decode_tok_s']:>9.1f} tok/s")
    print(f"({result['threads']} threads, backend {result['backend']}, weights {result['weight_bytes'] / 2**20:.1f} MiB)")
    return 0


def cmd_demo(ns) -> int:
    from binllm.bench import kernel_demo

    kernel_demo(threads=ns.threads)
    return 0


def cmd_train(ns) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise BinllmError(install_hint("train", "training needs torch")) from e
    from binllm.train.cli import main as train_main

    return train_main(ns.train_args)


def cmd_distill(ns) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise BinllmError(install_hint("train", "distillation needs torch")) from e
    from binllm.train.distill import main as distill_main

    return distill_main(ns.distill_args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="binllm", description="Run 1-bit and ternary LLMs fast on CPUs.")
    from binllm import __version__

    p.add_argument("--version", action="version", version=f"binllm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt (streams to the terminal)")
    g.add_argument("args", nargs="+", metavar="[MODEL] PROMPT", help="model folder, .gguf file or hub id (default: the embedded model), then the prompt")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    _sampling_args(g)
    g.set_defaults(func=cmd_generate)
    # Options may stand between MODEL and PROMPT (`generate MODEL -n 40 "prompt"`): main
    # parses generate's arguments intermixed.
    p.set_defaults(_generate_parser=g)

    c = sub.add_parser("chat", help="chat with a model in the terminal")
    c.add_argument("model", nargs="?", default=None)
    c.add_argument("--system", default=None, help="system message")
    _sampling_args(c)
    c.set_defaults(func=cmd_chat)

    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions; needs binllm[serve])")
    s.add_argument("model", nargs="?", default=None)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (default 8)")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch before the server answers 429 (default 64)")
    s.add_argument("--ctx", type=int, default=None, help="tokens per request, prompt and completion (default: the model's context)")
    s.add_argument("--api-key", default=os.environ.get("BINLLM_API_KEY"), help="require 'Authorization: Bearer KEY' (default: $BINLLM_API_KEY, else none)")
    s.add_argument("--threads", type=int, default=None)
    _kv_type_arg(s)
    s.set_defaults(func=cmd_serve)

    i = sub.add_parser("info", help="architecture, parameters, memory and bits per weight of a model")
    i.add_argument("model", nargs="?", default=None)
    i.add_argument("--json", action="store_true")
    i.add_argument("--threads", type=int, default=None)
    _output_type_arg(i)
    i.set_defaults(func=cmd_info)

    v = sub.add_parser("convert", help="write a model as GGUF (tq2_0, tq1_0 or f16) that binllm and llama.cpp load")
    v.add_argument("src")
    v.add_argument("dst")
    v.add_argument("--type", default="tq2_0", choices=["tq2_0", "tq1_0", "f16"])
    v.add_argument(
        "--output-type",
        default="f16",
        choices=["f16", "q8_0", "q6_k"],
        help="token embeddings and output layer: f16 (default), q8_0 (half the bytes) or q6_k (41%%; rows of whole 256-blocks, else q8_0); llama.cpp reads all three",
    )
    v.add_argument("--quiet", action="store_true")
    v.add_argument("--force", action="store_true", help="replace DST when it exists")
    v.set_defaults(func=cmd_convert)

    b = sub.add_parser("bench", help="prompt and decode tokens/s of a model")
    b.add_argument("model", nargs="?", default=None)
    b.add_argument("--prompt-tokens", type=int, default=128)
    b.add_argument("--decode-tokens", type=int, default=128)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--threads", type=int, default=None)
    _output_type_arg(b)
    _kv_type_arg(b)
    b.set_defaults(func=cmd_bench)

    q = sub.add_parser("quantize", help="binarize a float model after training (PTQ): absmean, sign, onebit, billm, arb, gptq-ternary")
    q.add_argument("src", help="float model: Hugging Face folder or .gguf")
    q.add_argument("dst", help="output folder (must not exist)")
    q.add_argument("--method", "-m", required=True, choices=["absmean", "sign", "onebit", "billm", "arb", "gptq-ternary"])
    q.add_argument("--group-size", type=int, default=None, help="columns per scale group (ternary: a multiple of 256; -1 = per row; default per tensor/row as the method defines)")
    q.add_argument("--calib", default=None, help="calibration text file (needed by billm and gptq-ternary; arb uses it when given; the others ignore it)")
    q.add_argument("--calib-tokens", type=int, default=16384, help="calibration tokens (default 16384)")
    q.add_argument("--ctx", type=int, default=512, help="calibration window in tokens (default 512)")
    q.add_argument("--scale", default=None, choices=["absmean", "mse"], help="ternary scale rule: BitNet's mean|W| (default) or the error-minimizing multiple of it")
    q.add_argument("--one-pass", action="store_true", help="take every block's Hessian from the float model (faster) instead of block by block after the blocks before it are quantized")
    q.add_argument("--keep", action="append", default=None, help="keep at 8 bits: embed, output, first, last, block numbers (comma-separated, repeatable)")
    q.add_argument("--gguf", default=None, help="also write a GGUF TQ2_0 file (ternary methods) that llama.cpp runs")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="perplexity, bits per weight, size, memory and tokens/s of a model; A/B against a base model")
    e.add_argument("model")
    e.add_argument("--text", nargs="+", action="extend", default=None, metavar="FILE", help="text files (UTF-8), each a slice named by its file")
    e.add_argument("--ctx", type=int, default=None, help="window length in tokens (default 512, or the model's context when shorter)")
    e.add_argument("--max-tokens", type=int, default=None, help="use only the first N tokens of each text")
    e.add_argument("--base", default=None, help="A/B against this base (float) model: KL divergence, top-1 agreement per slice")
    e.add_argument("--base-logits", default=None, metavar="F", help="A/B against a base saved with --save-base-logits (instead of --base and --text)")
    e.add_argument("--save-base-logits", default=None, metavar="F", help="save the base's top-k log-probabilities and tokens for later --base-logits runs")
    e.add_argument("--top-k", type=int, default=128, help="base log-probabilities kept per position in --save-base-logits (default 128)")
    e.add_argument("--prompts", default=None, metavar="FILE", help="one prompt per line: both models' greedy continuations side by side (needs --base)")
    e.add_argument("--gen-tokens", type=int, default=48, help="tokens per greedy continuation (default 48)")
    e.add_argument("--out", default=None, help="report folder for the A/B: report.md, report.html, report.json")
    e.add_argument("--force", action="store_true", help="write into a non-empty --out, replace an existing --save-base-logits file")
    e.add_argument("--no-bench", action="store_true", help="skip the speed measurement")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--json", action="store_true")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("compare", help="evaluate several models side by side, A/B against the first: report.md, report.csv, report.png")
    r.add_argument("models", nargs="+", help="models; the first is the base the perplexity ratios and the A/B (KLD, top-1) use")
    r.add_argument("--text", required=True, nargs="+", action="extend", metavar="FILE", help="text files, each a slice named by its file")
    r.add_argument("--out", required=True, help="report folder (new or empty, unless --force)")
    r.add_argument("--labels", default=None, help="comma-separated names, one per model")
    r.add_argument("--ctx", type=int, default=512)
    r.add_argument("--max-tokens", type=int, default=None, help="use only the first N tokens of each text")
    r.add_argument("--top-k", type=int, default=None, help="score against the base's top K log-probabilities, saved once (faster; KLD a lower bound); default: the base runs beside each model (exact)")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--no-plot", action="store_true")
    r.add_argument("--no-bench", action="store_true", help="skip the speed measurement")
    r.add_argument("--force", action="store_true", help="write into a non-empty --out")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_compare)

    # `binllm train ...` hands all its arguments to binllm.train's own parser (see main).
    sub.add_parser("train", help="train a ternary (BitNet b1.58) model on text files (needs binllm[train])", add_help=False)
    # `binllm distill ...` likewise (binllm.train.distill's parser).
    sub.add_parser("distill", help="binarize a float model by distillation from a PTQ start (needs binllm[train])", add_help=False)
    # `binllm lm-eval ...` is lm-evaluation-harness's command line with the binllm backend (see main).
    sub.add_parser("lm-eval", help="task accuracy with lm-evaluation-harness: --model binllm --model_args pretrained=PATH (needs binllm[eval])", add_help=False)

    d = sub.add_parser("demo", help="kernel demo: ternary GEMV against numpy float32 on a BitNet-2B layer")
    d.add_argument("--threads", type=int, default=None)
    d.set_defaults(func=cmd_demo)
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        ns = argparse.Namespace(func=cmd_train, train_args=argv[1:])
    elif argv and argv[0] == "distill":
        ns = argparse.Namespace(func=cmd_distill, distill_args=argv[1:])
    elif argv and argv[0] == "lm-eval":
        ns = argparse.Namespace(func=cmd_lm_eval, lm_eval_args=argv[1:])
    elif argv and argv[0] == "generate":
        ns = build_parser().get_default("_generate_parser").parse_intermixed_args(argv[1:])
    else:
        ns = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends a command as Ctrl-C does, so a write in progress removes its temporary file.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        _core.threads_from_env()  # a bad BINLLM_THREADS is one clear line, not silently all cores
        return ns.func(ns)
    except KeyboardInterrupt:
        print("\n[binllm] interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except (BinllmError, ValueError, TypeError, OSError, ImportError, RuntimeError) as e:
        if os.environ.get("BINLLM_DEBUG"):
            raise
        print(f"binllm: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""The ``binllm`` command: generate, chat, info, convert, bench, demo.

Every error is printed as one clear line (``binllm: error: ...``) with a non-zero exit code,
never a traceback (set BINLLM_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from binllm import BinllmError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _load(model_arg: str | None, threads: int | None, quiet: bool = False):
    from binllm.model import Model, default_model_path

    path = model_arg or default_model_path()
    start = time.perf_counter()
    model = Model.from_pretrained(path, threads=threads)
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
    model = _load(model_arg, ns.threads)
    if ns.chat:
        prompt = [{"role": "user", "content": prompt}]
    start = time.perf_counter()
    pieces = 0
    for piece in model.generate(prompt, stream=True, **_sampling(ns)):
        sys.stdout.write(piece)
        sys.stdout.flush()
        pieces += 1
    elapsed = time.perf_counter() - start
    sys.stdout.write("\n")
    print(f"[binllm] {elapsed:.2f} s", file=sys.stderr)
    return 0


def cmd_chat(ns) -> int:
    model = _load(ns.model, ns.threads)
    messages = []
    if ns.system:
        messages.append({"role": "system", "content": ns.system})
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
        for piece in model.generate(messages, stream=True, **_sampling(ns)):
            sys.stdout.write(piece)
            sys.stdout.flush()
            reply.append(piece)
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})


def cmd_info(ns) -> int:
    model = _load(ns.model, ns.threads, quiet=True)
    info = model.info()
    if ns.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info["config"]
    print(f"model          {info['source']}")
    print(f"architecture   {c['architecture']} ({'BitNet b1.58 linears' if c['bitnet'] else 'float linears'}, {c['hidden_act']}, sub-norms {c['sub_norms']})")
    print(f"shape          hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads ({c['num_key_value_heads']} KV), intermediate {c['intermediate_size']}, vocab {c['vocab_size']}")
    print(f"context        {c['max_position_embeddings']} tokens, RoPE theta {c['rope_theta']:g} ({c['rope_style']})")
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

    summary = convert(ns.src, ns.dst, type=ns.type, progress=say)
    if not ns.quiet:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_bench(ns) -> int:
    from binllm.bench import bench_model

    model = _load(ns.model, ns.threads)
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
        raise BinllmError("training needs torch: pip install 'binllm[train]'") from e
    from binllm.train.cli import main as train_main

    return train_main(ns.train_args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="binllm", description="Run 1-bit and ternary LLMs fast on CPUs.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt (streams to the terminal)")
    g.add_argument("args", nargs="+", metavar="[MODEL] PROMPT", help="model folder, .gguf file or hub id (default: the embedded model), then the prompt")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    _sampling_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="chat with a model in the terminal")
    c.add_argument("model", nargs="?", default=None)
    c.add_argument("--system", default=None, help="system message")
    _sampling_args(c)
    c.set_defaults(func=cmd_chat)

    i = sub.add_parser("info", help="architecture, parameters, memory and bits per weight of a model")
    i.add_argument("model", nargs="?", default=None)
    i.add_argument("--json", action="store_true")
    i.add_argument("--threads", type=int, default=None)
    i.set_defaults(func=cmd_info)

    v = sub.add_parser("convert", help="write a model as GGUF (tq2_0, tq1_0 or f16) that binllm and llama.cpp load")
    v.add_argument("src")
    v.add_argument("dst")
    v.add_argument("--type", default="tq2_0", choices=["tq2_0", "tq1_0", "f16"])
    v.add_argument("--quiet", action="store_true")
    v.set_defaults(func=cmd_convert)

    b = sub.add_parser("bench", help="prompt and decode tokens/s of a model")
    b.add_argument("model", nargs="?", default=None)
    b.add_argument("--prompt-tokens", type=int, default=128)
    b.add_argument("--decode-tokens", type=int, default=128)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--threads", type=int, default=None)
    b.set_defaults(func=cmd_bench)

    # `binllm train ...` hands all its arguments to binllm.train's own parser (see main).
    sub.add_parser("train", help="train a ternary (BitNet b1.58) model on text files (needs binllm[train])", add_help=False)

    d = sub.add_parser("demo", help="kernel demo: ternary GEMV against numpy float32 on a BitNet-2B layer")
    d.add_argument("--threads", type=int, default=None)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        ns = argparse.Namespace(func=cmd_train, train_args=argv[1:])
    else:
        ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except KeyboardInterrupt:
        print("\n[binllm] interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except (BinllmError, ValueError, TypeError, OSError, ImportError) as e:
        if os.environ.get("BINLLM_DEBUG"):
            raise
        print(f"binllm: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

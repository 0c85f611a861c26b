"""Post-training binarization (PTQ): turn a float model into a binllm-runnable 1-bit or ternary
model with the methods of the binarization literature, and say what it cost.

    >>> from binllm.quantize import quantize_model
    >>> report = quantize_model("SmolLM2.gguf", "smollm2-gptq-t2", method="gptq-ternary",
    ...                         group_size=256, calib="calib.txt")

The methods themselves (one weight matrix at a time, numpy) are in :mod:`binllm.quantize.methods`.
The output is a Hugging Face folder whose config.json carries
``quantization_config = {"quant_method": "binllm", "layers": {...}}``: each quantized linear is
stored as binllm's packed codes (``.weight``, uint8 rows) with its scales (``.weight_scale``,
``.weight_col_scale``, ``.weight_row_offset``), layers kept at 8 bits as int8 blocks of 32
with one scale each, everything else as in the source (float16). Methods without a fast kernel
(BiLLM's per-weight masks) store their dequantized weights in float16 and say so.
Ternary models can also be written as GGUF TQ2_0 (``gguf=...``), which llama.cpp runs.

``quantization_config.bits_per_weight`` and the report's ``method_bits_per_weight`` are the
methods' own count of the decoder linears (every code, mask and bitmap bit, 16 bits per float16
scale, 32 per 8-bit block's float32 scale, no row padding); ``binllm eval`` reports it beside
the bits the loaded model holds in memory (``linear_bits_in_memory``), see
:mod:`binllm.evaluate`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from binllm import _core
from binllm.files import folder_written_whole, refuse_existing_folder
from binllm.quantize.calib import calibration_tokens, hessians, read_text
from binllm.quantize.source import Source, read_source

Progress = Callable[[str], None]
PathLike = Union[str, "os.PathLike[str]"]

Q8_BLOCK = _core.Q8_BLOCK
NEEDS_CALIBRATION = ("billm", "gptq-ternary")
USES_HESSIAN = ("billm", "gptq-ternary", "arb")
# Default calibration size: 32 windows of 512 tokens.
CALIB_TOKENS = 16384
# The last calibration's Hessians, reused when the same model, text and sizes come again (a
# script quantizing one model with several methods calibrates once).
_HESSIANS: dict = {}


def _methods():
    from binllm.quantize import methods

    return methods


def q8_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes (n, k) and one float32 scale per block of 32 along each row (absmax / 127,
    codes rounded half away from zero), the layout binllm keeps 8-bit layers in; the core's
    quantizer, the one the loader uses."""
    return _core.q8_blocks(np.ascontiguousarray(w, np.float32))


def q8_dequant(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The float32 values of `q8_blocks`' output."""
    n, k = q.shape
    pad = np.zeros((n, d.shape[1] * Q8_BLOCK), np.float32)
    pad[:, :k] = q
    return (pad.reshape(n, -1, Q8_BLOCK) * d[:, :, None]).reshape(n, -1)[:, :k]


def parse_keep(keep: Iterable[str], layers: int) -> tuple[set[int], bool, bool]:
    """--keep items: "embed", "output", "first", "last", block numbers, or "none".
    Returns (blocks kept at 8 bits, embeddings at 8 bits, output layer at 8 bits)."""
    blocks: set[int] = set()
    embed = output = False
    for raw in keep:
        for item in str(raw).split(","):
            item = item.strip().lower()
            if item in ("", "none"):
                continue
            if item in ("embed", "embeddings"):
                embed = True
            elif item in ("output", "lm_head", "head"):
                output = True
            elif item == "first":
                blocks.add(0)
            elif item == "last":
                blocks.add(layers - 1)
            elif item.isdigit() and int(item) < layers:
                blocks.add(int(item))
            else:
                raise ValueError(f"--keep: '{item}' is not embed, output, first, last or a block number below {layers}")
    return blocks, embed, output


def quantize_model(
    src: PathLike,
    dst: PathLike,
    method: str,
    group_size: Optional[int] = None,
    calib: Optional[PathLike] = None,
    calib_tokens: int = CALIB_TOKENS,
    ctx: int = 512,
    keep: Iterable[str] = (),
    gguf: Optional[PathLike] = None,
    progress: Optional[Progress] = None,
    weights_out: Optional[dict[str, np.ndarray]] = None,
    sequential: bool = True,
    scale: Optional[str] = None,
) -> dict[str, Any]:
    """Quantizes the float model at `src` (HF folder or GGUF) with `method` into the folder
    `dst` (and, for ternary methods, the GGUF file `gguf`). Returns a report dict.
    `weights_out`, when given, receives each decoder linear's dequantized weights (HF name ->
    float32 array), the matrices the written model represents. With calibration, methods that
    use Hessians take block l's from the model with blocks 0..l-1 already quantized
    (`sequential`, GPTQ's protocol), or all from the float model in one pass. `scale` picks the
    ternary methods' scale rule ("absmean", the default, or "mse"; see methods.SCALE_RULES)."""
    methods = _methods()
    if method not in methods.METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of {', '.join(methods.METHODS)}")
    if method in NEEDS_CALIBRATION and calib is None:
        raise ValueError(f"method '{method}' compensates errors with calibration activations: pass --calib FILE")
    if calib_tokens < 2:
        raise ValueError("calib_tokens must be at least 2")
    if ctx < 2:
        raise ValueError("ctx must be at least 2")
    opts: dict[str, Any] = {}
    if scale is not None:
        if "scale" not in methods.OPTIONS[method]:
            raise ValueError(f"--scale applies to the ternary methods (absmean, gptq-ternary), not '{method}'")
        if scale not in methods.SCALE_RULES:
            raise ValueError(f"--scale must be one of {', '.join(methods.SCALE_RULES)}, got '{scale}'")
        opts["scale"] = scale
    say = progress or (lambda _m: None)
    dst = Path(dst)
    refuse_existing_folder(dst, "binllm quantize")
    gguf_path = Path(gguf) if gguf is not None else None
    if gguf_path is not None and gguf_path.exists():
        raise _core.FileError(f"{gguf_path} already exists; binllm quantize never overwrites")
    start = time.perf_counter()
    source = read_source(src)
    kept_blocks, keep_embed, keep_output = parse_keep(keep, source.layers)

    # Only the methods that use Hessians read calibration text; the others ignore --calib.
    calibrate = calib is not None and method in USES_HESSIAN
    sequential = sequential and calibrate
    hess: dict = {}
    calib_info: dict[str, Any] = {}
    seq = None
    if calibrate:
        from binllm.model import Model

        cp = Path(calib)
        key = (str(source.path.resolve()), str(cp.resolve()), cp.stat().st_mtime_ns if cp.exists() else 0, calib_tokens, ctx)
        say(f"loading {source.path.name} for calibration")
        float_model = Model.from_pretrained(source.path)
        tokens = calibration_tokens(float_model, read_text(calib), calib_tokens)
        calib_info = {"file": cp.name, "tokens": len(tokens), "ctx": ctx, "sequential": sequential}
        if sequential:
            from binllm.quantize.calib import SequentialCalibration

            seq = SequentialCalibration(source, tokens, ctx)
        elif key in _HESSIANS:
            hess = _HESSIANS[key]
        else:
            hess = hessians(float_model, tokens, ctx=ctx, progress=say)
            _HESSIANS.clear()  # keep one set: they are large (hidden^2 per site and layer)
            _HESSIANS[key] = hess
        del float_model

    results: dict[str, Any] = {}
    entries: dict[str, dict[str, Any]] = {}
    errors = []
    names = source.linear_names()
    q_bits = q_params = 0.0
    for layer in range(source.layers):
        if seq is not None:
            hess = seq.hessians(layer, progress=say)
        done: dict[str, np.ndarray] = {}
        for name, site, at in names:
            if at != layer:
                continue
            w = source.tensors[f"{name}.weight"].astype(np.float32)
            h = hess.get((layer, site))
            if layer in kept_blocks:
                results[name] = ("q8", q8_blocks(w))
                w_hat = q8_dequant(*results[name][1])
                entries[name] = {"format": "q8"}
                q_bits += w.size * (8 + 32 / Q8_BLOCK)
            else:
                q = methods.quantize(w, method, H=h, group_size=group_size, **opts)
                results[name] = ("q", q)
                w_hat = q.w_hat.astype(np.float16).astype(np.float32) if q.format == "dense" else q.w_hat
                entries[name] = {"format": q.format, **({"group_size": q.group_size} if q.group_size else {})}
                q_bits += w.size * q.bits_per_weight
                if h is not None:
                    base = methods.layer_error(w, np.zeros_like(w), h)
                    errors.append(methods.layer_error(w, q.w_hat, h) / max(base, 1e-30))
            done[f"{name}.weight"] = w_hat
            q_params += w.size
            say(f"quantize {method}: block {layer + 1}/{source.layers} ({name})")
        if weights_out is not None:
            weights_out.update(done)
        if seq is not None:
            seq.done(layer, done)
    say("writing")

    qc = {
        "quant_method": "binllm",
        "method": method,
        "group_size": group_size,
        **({"scale": scale} if scale else {}),
        "bits_per_weight": q_bits / q_params,
        "keep": sorted(str(b) for b in kept_blocks) + (["embed"] if keep_embed else []) + (["output"] if keep_output else []),
        "calibration": calib_info or None,
        "layers": {k: v for k, v in entries.items() if v["format"] != "dense"},
    }
    _write_folder(dst, source, results, qc, keep_embed, keep_output)
    report: dict[str, Any] = {
        "method": method,
        "output": str(dst),
        "method_bits_per_weight": qc["bits_per_weight"],
        "linear_parameters": int(q_params),
        "formats": sorted({v["format"] for v in entries.values()}),
        "bytes": sum(f.stat().st_size for f in dst.iterdir()),
        "mean_relative_layer_error": float(np.mean(errors)) if errors else None,
        "seconds": time.perf_counter() - start,
    }
    if gguf_path is not None:
        report["gguf"] = _write_gguf(dst, gguf_path, say)
    say(f"done in {report['seconds']:.0f} s")
    return report


def _write_folder(dst: Path, source: Source, results: dict, qc: dict, keep_embed: bool, keep_output: bool) -> None:
    from safetensors.numpy import save_file

    from binllm import kernels

    tensors: dict[str, np.ndarray] = {}
    linear_names = {f"{name}.weight" for name in results}
    for tname, w in source.tensors.items():
        if tname in linear_names:
            continue
        module = tname.removesuffix(".weight")
        tied_output = module == "model.embed_tokens" and source.config.get("tie_word_embeddings", False)
        if (module == "model.embed_tokens" and (keep_embed or (tied_output and keep_output))) or (module == "lm_head" and keep_output):
            q, d = q8_blocks(w.astype(np.float32))
            tensors[tname], tensors[f"{module}.weight_scale"] = q, d
            qc["layers"][module] = {"format": "q8"}
        elif w.ndim == 1:
            tensors[tname] = w.astype(np.float32)
        else:
            tensors[tname] = w.astype(np.float16)
    for name, (kind, payload) in results.items():
        if kind == "q8":
            q, d = payload
            tensors[f"{name}.weight"], tensors[f"{name}.weight_scale"] = q, d
            continue
        qz = payload
        if qz.format == "dense":
            tensors[f"{name}.weight"] = qz.w_hat.astype(np.float16)
            continue
        if qz.format == "t2":
            packed = kernels.pack_ternary(qz.codes, qz.scale if qz.scale.ndim else float(qz.scale), group_size=qz.group_size, row_offset=qz.row_offset)
        elif qz.format == "b1":
            packed = kernels.pack_binary(qz.codes, qz.scale if qz.scale.ndim else float(qz.scale), col_scale=qz.col_scale, row_offset=qz.row_offset, group_size=qz.group_size)
        else:
            raise ValueError(f"{name}: unknown format '{qz.format}'")
        tensors[f"{name}.weight"] = np.ascontiguousarray(packed.data)
        # The methods round scales and offsets to float16 before computing w_hat: stored as
        # float16 they are exact.
        scale = np.asarray(qz.scale, np.float16)
        tensors[f"{name}.weight_scale"] = scale.reshape(1) if scale.ndim == 0 else scale
        if qz.col_scale is not None:
            tensors[f"{name}.weight_col_scale"] = np.asarray(qz.col_scale, np.float16)
        if qz.row_offset is not None:
            tensors[f"{name}.weight_row_offset"] = np.asarray(qz.row_offset, np.float16)

    with folder_written_whole(dst) as tmp:
        config = dict(source.config)
        config["quantization_config"] = qc
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        for fname, text in source.files.items():
            (tmp / fname).write_text(text, encoding="utf-8")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "binllm"})


def _write_gguf(folder: Path, path: Path, say: Progress) -> dict[str, Any]:
    from binllm.convert import convert

    summary = convert(folder, path, type="tq2_0", progress=lambda m: say(f"gguf: {m}"))
    return {"path": str(path), "warnings": summary.get("warnings", [])}

#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers for the family replicas of tests/families.py.

    TORCHDYNAMO_DISABLE=1 python scripts/make_family_references.py --out tests/fixtures/families

Needs torch and transformers (test references only, never binllm dependencies). For each family
transformers implements, builds the replica in a temporary folder, loads it with
`AutoModelForCausalLM.from_pretrained` exactly as a user would (BitNetForCausalLM with
AutoBitLinear offline; LlamaForCausalLM with transformers' BitNet quantizer, BitLinear offline;
LlamaForCausalLM with llama3 RoPE scaling), and writes `<family>.npz` (input ids, float32 logits, and
logits with activation quantization switched off) and MANIFEST.json (versions, the replica files' sha256, so a test notices when the
generator drifts, and the numpy reference's distance to transformers, which is what lets the
numpy reference stand in for the families transformers does not implement).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitLinear uses @torch.compile

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import families  # noqa: E402

N_TOKENS = 48


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def input_ids(folder: Path) -> np.ndarray:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(families.TEXT).ids
    return np.array(ids[:N_TOKENS], dtype=np.int64)


def transformers_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    # Loaded as stored, then computed in float32 (the stored values are exact in float32).
    # transformers refuses .float() on quantized models, so parameters, float buffers and
    # BitLinear's compute dtype are widened one by one.
    model = AutoModelForCausalLM.from_pretrained(folder)
    for module in model.modules():
        for key, p in module.named_parameters(recurse=False):
            p.data = p.data.float()
        for key, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point():
                module._buffers[key] = b.float()
        if type(module).__name__ == "BitLinear":
            module.dtype = torch.float32
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids[None, :])).logits[0].float().numpy()


class float_activations:
    """Within it, transformers' BitNet linears skip activation quantization (BitLinear's
    activation_quant returns the input with scale 1; AutoBitLinear's ActQuant is the identity):
    the reference for binllm's act_quant=False, free of the rounding-tie noise of int8."""

    def __enter__(self):
        import torch
        from transformers.integrations import bitnet

        self.saved = (bitnet.BitLinear.activation_quant, bitnet.ActQuant.forward)
        bitnet.BitLinear.activation_quant = lambda self, x, num_bits=8: (x, torch.ones_like(x[..., :1]))
        bitnet.ActQuant.forward = staticmethod(lambda ctx, x: x)
        return self

    def __exit__(self, *exc):
        from transformers.integrations import bitnet

        bitnet.BitLinear.activation_quant, bitnet.ActQuant.forward = self.saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "families")
    args = ap.parse_args()
    import tokenizers
    import torch
    import transformers

    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "command": "TORCHDYNAMO_DISABLE=1 python scripts/make_family_references.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "numpy": np.__version__},
        "families": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in families.TRANSFORMERS_FAMILIES:
            folder = families.build(name, Path(tmp) / name)
            ids = input_ids(folder)
            logits = transformers_logits(folder, ids)
            with float_activations():
                logits_float = transformers_logits(folder, ids)
            numpy_ref = families.reference_logits(folder, ids)
            numpy_float = families.reference_logits(folder, ids, act_quant=False)
            if name == "bitnet_2b4t_tf5":
                # The same weights with the config as transformers 5 saves it: transformers must
                # compute exactly what it computes from the top-level rope_theta.
                same = np.load(args.out / "bitnet_2b4t.npz")
                assert np.array_equal(same["logits"], logits) and np.array_equal(same["logits_noactq"], logits_float), name
            else:
                np.savez_compressed(args.out / f"{name}.npz", input_ids=ids, logits=logits, logits_noactq=logits_float)
            diff = np.abs(numpy_ref - logits)
            diff_float = np.abs(numpy_float - logits_float)
            manifest["families"][name] = {
                "files": {f: sha256(folder / f) for f in ("config.json", "model.safetensors", "tokenizer.json")},
                "tokens": int(len(ids)),
                "logit_range": float(np.abs(logits).max()),
                "numpy_reference_vs_transformers": {
                    "max_abs": float(diff.max()),
                    "mean_abs": float(diff.mean()),
                    "argmax_agreement": float((numpy_ref.argmax(-1) == logits.argmax(-1)).mean()),
                    "max_abs_noactq": float(diff_float.max()),
                },
            }
            print(f"{name}: {len(ids)} tokens, numpy vs transformers max {diff.max():.2e} mean {diff.mean():.2e}; without act quant max {diff_float.max():.2e}")
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Quantization-aware training of small BitNet b1.58 (ternary) models, exported for binllm.

An optional extra (`pip install 'binllm[train]'`, needs PyTorch): BitLinear with the b1.58
recipe, a BitNetForCausalLM-shaped model, a trainer, and `binllm train` (`binllm.train.cli`).
Importing this package does not import torch; its modules do.
"""

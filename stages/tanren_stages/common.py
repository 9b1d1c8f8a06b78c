"""Helpers shared by the model stages: finding inputs, tokenizers, devices, chat templates."""
from __future__ import annotations

import os
import random
from pathlib import Path

from .protocol import InvalidStageInput, StageConfigError, StageContext

# A minimal ChatML-style template for tokenizers that have none. The
# {% generation %} markers let TRL compute the assistant-only loss mask.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(ctx: StageContext) -> str:
    import torch

    want = ctx.params.str("device", None, choices=["cpu", "cuda", "auto"]) or "auto"
    if want == "cuda" and not torch.cuda.is_available():
        raise StageConfigError(f"{ctx.params.source}: field 'device' is cuda but torch sees no CUDA device")
    if want == "auto":
        return "cuda" if (ctx.device == "cuda" or os.environ.get("TANREN_DEVICE") == "cuda") and torch.cuda.is_available() else "cpu"
    return want


def bf16_ok(device: str) -> bool:
    import torch

    return device == "cuda" and torch.cuda.is_bf16_supported()


def find_in_inputs(ctx: StageContext, relative: str, *, param: str = "input") -> Path | None:
    """`relative` under the named (params[param]) or single/first needed stage that has it."""
    name = ctx.params.str(param) if ctx.params.has(param) else None
    if name:
        p = ctx.input_dir(name, param=param) / relative
        return p if p.exists() else None
    for d in ctx.input_dirs():
        if (d / relative).exists():
            return d / relative
    return None


def resolve_model_dir(ctx: StageContext, *, param: str = "model", input_param: str = "input") -> Path:
    """A HF model dir: params[param] (a path) or `model/` in a needed stage's outputs."""
    if ctx.params.has(param):
        p = Path(ctx.params.str(param))
        if (p / "config.json").exists():
            return p
        if (p / "model" / "config.json").exists():
            return p / "model"
        raise InvalidStageInput(f"{ctx.params.source}: field '{param}': {p} holds no HF model (no config.json)")
    found = find_in_inputs(ctx, "model/config.json", param=input_param)
    if found is None:
        raise InvalidStageInput(f"{ctx.params.source}: set field '{param}' to a model directory, or need a stage whose outputs have model/")
    return found.parent


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def ensure_chat_tokens(tok, model=None) -> None:
    """Adds the ChatML markers as special tokens when the template uses them and the vocab lacks them."""
    if "<|im_start|>" not in (tok.chat_template or ""):
        return
    missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
        if model is not None:
            model.resize_token_embeddings(len(tok))

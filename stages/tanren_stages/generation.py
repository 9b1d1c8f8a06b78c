"""Greedy (or sampled) generation shared by the eval stages.

The model is a ModelSource (common.resolve_model): a HF model dir, a Hub repo id, or a base + PEFT adapter
(model/base.json of an sft/dpo stage that did not merge its adapter). On CUDA it loads in bf16 (fp16 where bf16
is unsupported) unless `precision` says otherwise; with `load_in_4bit` the base loads in NF4 (needs CUDA +
bitsandbytes). A LoRA adapter is merged into a non-quantised base for faster generation.
Params read by from_ctx: model/input, device, seed, precision ("auto" | "bf16" | "fp16" | "fp32"), load_in_4bit
(default: true on CUDA when the model is an adapter trained on a 4-bit base, i.e. model/base.json says so).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .common import (
    ModelSource,
    bnb_4bit_config,
    chat_tuned,
    half_dtype,
    load_causal_lm,
    load_tokenizer,
    match_vocab,
    pick_device,
    resolve_model,
)
from .protocol import StageConfigError, StageContext, param


@dataclass
class GenerationParams:
    """How the evaluation kinds load the model they generate with (fields shared by llm-jp-eval and mt-bench)."""

    device: str | None = param(
        choices=["cpu", "cuda", "auto"], default_doc='"auto"', help="auto: cuda when the worker has one"
    )
    precision: str = param(
        "auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="auto: bf16 on CUDA, fp16 where bf16 is unsupported, fp32 on CPU",
    )
    load_in_4bit: bool | None = param(
        default_doc="true on CUDA for an adapter trained on a 4-bit base (QLoRA sft/dpo), else false",
        help="NF4 base (needs CUDA + bitsandbytes)",
    )


class Generator:
    def __init__(
        self,
        model: ModelSource | Path | str,
        device: str,
        seed: int = 1234,
        *,
        precision: str = "auto",
        load_in_4bit: bool | None = False,
        where: str = "generation",
    ):
        import torch

        source = model if isinstance(model, ModelSource) else ModelSource(str(model))
        if load_in_4bit is None:  # auto: as the adapter was trained (QLoRA), where a GPU is there to do it
            load_in_4bit = source.base_4bit and device == "cuda"
        self.torch = torch
        self.source = source
        self.tok = load_tokenizer(source)
        # chat_format.json beside the tokenizer: sft/dpo tuned the model in its chat template (see hf_train)
        self.chat_format = None if source.hub else chat_tuned(source.tokenizer)
        if precision == "auto":
            dtype = half_dtype(device)
        else:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
            if dtype is torch.bfloat16 and device == "cuda" and not torch.cuda.is_bf16_supported():
                raise StageConfigError(f"{where}: field 'precision' is bf16 but this GPU does not support it")
        kwargs: dict = {"dtype": dtype}
        if load_in_4bit:
            kwargs["quantization_config"] = bnb_4bit_config(where, device, dtype if dtype != torch.float32 else None)
            kwargs["device_map"] = {"": 0}
        model_ = load_causal_lm(source, where, **kwargs)
        if not load_in_4bit:
            model_.to(device)
        if source.adapter is not None:
            from peft import PeftModel

            match_vocab(model_, self.tok)
            model_ = PeftModel.from_pretrained(model_, str(source.adapter))
            if not load_in_4bit:
                model_ = model_.merge_and_unload()
            print(f"loaded {source}", file=sys.stderr)
        self.model = model_.eval()
        self.dtype = dtype
        self.device = device
        self.seed = seed
        self.max_positions = getattr(self.model.config, "max_position_embeddings", 2048)

    @classmethod
    def from_ctx(cls, ctx: StageContext) -> Generator:
        p = ctx.params
        return cls(
            resolve_model(ctx),
            pick_device(ctx),
            p.int("seed", 1234),
            precision=p.str("precision", "auto", choices=["auto", "bf16", "fp16", "fp32"]),
            load_in_4bit=p.bool("load_in_4bit") if p.has("load_in_4bit") else None,
            where=p.source,
        )

    def complete(self, prompt: str, max_new_tokens: int, temperature: float = 0.0) -> tuple[str, int]:
        ids = self.tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        return self._generate(ids, max_new_tokens, temperature)

    def chat_prompt(self, messages: list[dict]) -> str:
        """The text the chat template makes of `messages`, ready for the assistant's turn (what chat() generates from)."""
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def chat(self, messages: list[dict], max_new_tokens: int, temperature: float = 0.0) -> tuple[str, int]:
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        return self._generate(ids, max_new_tokens, temperature)

    def _generate(self, ids, max_new_tokens: int, temperature: float) -> tuple[str, int]:
        torch = self.torch
        budget = max(1, min(max_new_tokens, self.max_positions - 1))
        keep = self.max_positions - budget
        if ids.shape[1] > keep:  # keep the end of an over-long prompt
            ids = ids[:, -keep:]
        ids = ids.to(self.device)
        stop = [
            t
            for t in {self.tok.eos_token_id, self.tok.convert_tokens_to_ids("<|im_end|>")}
            if isinstance(t, int) and t >= 0 and t != self.tok.unk_token_id
        ]
        kw = dict(
            max_new_tokens=budget,
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=stop or None,
            attention_mask=torch.ones_like(ids),
        )
        if temperature > 0:
            torch.manual_seed(self.seed)
            kw.update(do_sample=True, temperature=temperature, top_p=1.0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            out = self.model.generate(ids, **kw)
        new = out[0, ids.shape[1] :]
        return self.tok.decode(new, skip_special_tokens=True), int(new.shape[0])

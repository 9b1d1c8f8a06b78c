"""Greedy (or sampled) generation shared by the eval stages."""
from __future__ import annotations

from pathlib import Path

from .common import load_tokenizer, pick_device, resolve_model_dir
from .protocol import StageContext


class Generator:
    def __init__(self, model_dir: Path, device: str, seed: int = 1234):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.tok = load_tokenizer(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa").to(device).eval()
        self.device = device
        self.seed = seed
        self.max_positions = getattr(self.model.config, "max_position_embeddings", 2048)

    @classmethod
    def from_ctx(cls, ctx: StageContext) -> "Generator":
        return cls(resolve_model_dir(ctx), pick_device(ctx), ctx.params.int("seed", 1234))

    def complete(self, prompt: str, max_new_tokens: int, temperature: float = 0.0) -> tuple[str, int]:
        ids = self.tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        return self._generate(ids, max_new_tokens, temperature)

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
        stop = [t for t in {self.tok.eos_token_id, self.tok.convert_tokens_to_ids("<|im_end|>")} if isinstance(t, int) and t >= 0 and t != self.tok.unk_token_id]
        kw = dict(max_new_tokens=budget, pad_token_id=self.tok.pad_token_id, eos_token_id=stop or None,
                  attention_mask=torch.ones_like(ids))
        if temperature > 0:
            torch.manual_seed(self.seed)
            kw.update(do_sample=True, temperature=temperature, top_p=1.0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            out = self.model.generate(ids, **kw)
        new = out[0, ids.shape[1]:]
        return self.tok.decode(new, skip_special_tokens=True), int(new.shape[0])

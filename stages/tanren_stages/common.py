"""Helpers shared by the model stages: finding inputs, tokenizers, devices, chat templates, safe loading."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .protocol import InvalidStageInput, StageConfigError, StageContext

# Checkpoints and models come from object storage and the Hub: whoever can write there must not be able to run
# code in a stage by unpickling. Every torch.load in a stage process (ours, transformers', peft's, trl's) is
# therefore weights-only, even where a library asks for weights_only=False; the opposite switch would make
# torch refuse to load anything, so it is dropped.
os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"


def _unpickle_reason(e: BaseException) -> str:
    """The one line of torch's weights-only refusal that says what was refused (`Unsupported global: posix.system`)."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    reason = m.group(1) if m else text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return re.sub(r"\s*(Please use|Check the documentation).*$", "", reason).strip()[:300]


def _weights_only_refusal(e: BaseException) -> BaseException | None:
    """torch's weights-only refusal in e's chain of causes (libraries re-raise it as OSError and the like), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            return e
        e = e.__cause__ or e.__context__
    return None


def load_weights(path: Path | str, *, map_location=None, what: str = "checkpoint file", allow_numpy: bool = False):
    """torch.load(path, weights_only=True): tensors, dicts, lists, tuples, strings and numbers only.

    A pickle that needs any other global (one whose `__reduce__` would call a function, i.e. run code) is refused
    with InvalidStageInput naming the file, before anything in it runs; so is a file that is no torch checkpoint.
    allow_numpy also admits plain numpy arrays (what older RNG-state files hold), never arbitrary objects.
    """
    import torch

    globals_ = []
    if allow_numpy:
        import numpy as np

        core = np._core if hasattr(np, "_core") else np.core
        globals_ = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(globals_):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise InvalidStageInput(
                f"{path}: refused to load this {what}: it is not weights-only (tensors, lists, dicts, numbers) "
                f"and unpickling it could run code ({_unpickle_reason(e)}); write it with torch.save of a "
                "state dict, or as safetensors"
            ) from None
        raise InvalidStageInput(
            f"{path}: this {what} cannot be read as a torch checkpoint ({_unpickle_reason(e)})"
        ) from None
    except EOFError as e:
        raise InvalidStageInput(f"{path}: this {what} is truncated ({e or 'ran out of input'})") from None
    except RuntimeError as e:
        if "PytorchStreamReader" not in str(e):  # e.g. CUDA out of memory while loading: not the file's fault
            raise
        raise InvalidStageInput(
            f"{path}: this {what} cannot be read as a torch checkpoint ({_unpickle_reason(e)})"
        ) from None


@contextlib.contextmanager
def refusing_unsafe_pickles(what: str):
    """Turns a weights-only refusal inside a library's loading (a Trainer resuming, a PEFT adapter) into
    InvalidStageInput naming `what`, instead of a crash."""
    try:
        yield
    except Exception as e:  # noqa: BLE001  (the refusal may arrive wrapped, e.g. as OSError)
        refusal = _weights_only_refusal(e)
        if refusal is None:
            raise
        raise InvalidStageInput(
            f"{what}: refused to load a file that is not weights-only (tensors, lists, dicts, numbers): "
            f"unpickling it could run code ({_unpickle_reason(refusal)})"
        ) from None


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


# llm-jp-3's instruction format (the Japanese Alpaca layout its -instruct models and Tanuki use): the end of an
# assistant turn is the tokenizer's EOS, so a pretrained base needs no new token rows for it. Like CHAT_TEMPLATE it
# marks the assistant's text with {% generation %} for TRL's assistant-only loss.
LLM_JP_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '\n\n### 指示:\n' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '\n\n### 応答:\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\n### 応答:\n' }}{% endif %}"
)

# The built-in chat formats by name (params `chat_template` of sft/dpo).
CHAT_TEMPLATES = {"chatml": CHAT_TEMPLATE, "llm-jp": LLM_JP_TEMPLATE}
# Special tokens each built-in format adds to a vocabulary that lacks them.
CHAT_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>"), "llm-jp": ()}
# Written beside a chat-tuned model's tokenizer by sft/dpo: the eval stages then prompt in that chat format.
CHAT_FORMAT_FILE = "chat_format.json"


def chat_tuned(tokenizer_dir: Path | str) -> dict | None:
    """The chat_format.json that sft/dpo left beside a tokenizer (the model was tuned in that chat format), else None."""
    f = Path(tokenizer_dir) / CHAT_FORMAT_FILE
    try:
        return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
    except (OSError, ValueError):
        return None


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
        return (
            "cuda"
            if (ctx.device == "cuda" or os.environ.get("TANREN_DEVICE") == "cuda") and torch.cuda.is_available()
            else "cpu"
        )
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


# A Hugging Face Hub repo id ("org/name"); a string of this form that is not an existing path is taken as one.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# model/base.json: written instead of full weights when a LoRA adapter is not merged (e.g. trained on a 4-bit base).
POINTER = "base.json"


@dataclass(frozen=True)
class ModelSource:
    """What to load: a base model (local HF directory or Hub repo id), optionally with a PEFT adapter on top."""

    base: str
    adapter: Path | None = None
    hub: bool = False
    base_4bit: bool = False  # the adapter was trained on a 4-bit (QLoRA) base

    @property
    def tokenizer(self) -> str:
        """The adapter dir when it carries a tokenizer (chat tokens added in training), else the base."""
        if self.adapter is not None and (self.adapter / "tokenizer_config.json").exists():
            return str(self.adapter)
        return self.base

    def __str__(self) -> str:
        return self.base + (f" + adapter {self.adapter}" if self.adapter else "")


def _hub_source(repo: str, where: str) -> ModelSource:
    """A Hub repo id; offline, it must already be in the local cache (else a StageConfigError saying so)."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json")
    if not isinstance(cached, str) and constants.HF_HUB_OFFLINE:
        raise StageConfigError(
            f"{where}: {repo} is not a local directory, so it was taken as a Hugging Face Hub model, but it is not in "
            f"the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading it. Download it "
            f"first on a machine with internet (huggingface-cli download {repo}, with the same HF_HOME/HF_HUB_CACHE), "
            f"or set the field to a local model directory"
        )
    return ModelSource(repo, hub=True)


def _lexical(p: Path) -> Path:
    """Absolute and without '..', but symlinks kept (so a path under $TANREN_INPUTS stays recognisable as such)."""
    return Path(os.path.normpath(os.path.abspath(p)))


def read_pointer(pointer: Path, where: str) -> ModelSource:
    """model/base.json → base (Hub id, absolute path, or a path relative to model/) + adapter dir."""
    try:
        meta = json.loads(pointer.read_text(encoding="utf-8"))
        base, adapter = meta["base_model"], meta.get("adapter", "../adapter")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidStageInput(f"{where}: {pointer} is not a valid base-model pointer ({e})")
    ad = _lexical(pointer.parent / adapter)
    if not (ad / "adapter_config.json").exists():
        raise InvalidStageInput(f"{where}: {pointer} names adapter {ad}, which has no adapter_config.json")
    if meta.get("hub"):
        src = _hub_source(base, f"{where}: {pointer}")
    else:
        bp = Path(base) if Path(base).is_absolute() else _lexical(pointer.parent / base)
        if not (bp / "config.json").exists():
            raise StageConfigError(
                f"{where}: {pointer} names base model {bp}, which is not a model directory on this worker "
                "(no config.json): make it available at that path"
            )
        src = ModelSource(str(bp))
    return ModelSource(src.base, ad, src.hub, bool(meta.get("load_in_4bit", False)))


def model_source_at(p: Path, where: str) -> ModelSource | None:
    """The model in directory p: a HF model dir, a stage output with model/, or a base + adapter pointer."""
    for d in (p, p / "model"):
        if (d / "config.json").exists():
            return ModelSource(str(d))
        if (d / POINTER).exists():
            return read_pointer(d / POINTER, where)
    return None


def resolve_model(ctx: StageContext, *, param: str = "model", input_param: str = "input") -> ModelSource:
    """params[param] — a local model directory, a stage output dir, or a Hub repo id ("org/name") — else
    model/ in a needed stage's outputs. model/ may hold full weights (config.json) or a pointer (base.json)
    to a base model + the stage's adapter/."""
    where = f"{ctx.params.source}: field '{param}'"
    if ctx.params.has(param):
        raw = ctx.params.str(param)
        p = Path(raw)
        if p.exists():
            src = model_source_at(p, where)
            if src is None:
                raise InvalidStageInput(
                    f"{where}: {p} holds no HF model (no config.json, nor model/config.json or model/{POINTER})"
                )
            return src
        if HUB_ID.match(raw):
            return _hub_source(raw, where)
        raise InvalidStageInput(f"{where}: {p} does not exist (and is not a Hub repo id of the form org/name)")
    name = ctx.params.str(input_param) if ctx.params.has(input_param) else None
    dirs = [ctx.input_dir(name, param=input_param)] if name else ctx.input_dirs()
    for d in dirs:
        for rel in ("model/config.json", f"model/{POINTER}"):
            if (d / rel).exists():
                return model_source_at(d / "model", f"{ctx.params.source}: input {d.name}")  # type: ignore[return-value]
    raise InvalidStageInput(
        f"{ctx.params.source}: set field '{param}' to a model directory or Hub repo id, or need a stage whose outputs have model/"
    )


def resolve_model_dir(ctx: StageContext, *, param: str = "model", input_param: str = "input") -> ModelSource:
    """Kept for callers of the old name: see resolve_model."""
    return resolve_model(ctx, param=param, input_param=input_param)


def write_pointer(ctx: StageContext, source: ModelSource, adapter_dir: Path, *, load_in_4bit: bool) -> Path:
    """Writes output/model/base.json naming the base of `source` and adapter_dir. A base that came from a needed
    stage's outputs is copied to output/base/ (the inputs directory does not outlive this stage)."""
    out = ctx.output / "model"
    out.mkdir(parents=True, exist_ok=True)
    if source.hub:
        base, hub = source.base, True
    else:
        bp = Path(source.base).resolve()
        inside = ctx.inputs is not None and (
            bp.is_relative_to(ctx.inputs.resolve()) or _lexical(Path(source.base)).is_relative_to(_lexical(ctx.inputs))
        )
        if inside:
            shutil.copytree(bp, ctx.output / "base", dirs_exist_ok=True)
            base = "../base"
        else:
            base = str(bp)
        hub = False
    meta = {
        "base_model": base,
        "hub": hub,
        "adapter": os.path.relpath(adapter_dir, out),
        "load_in_4bit": load_in_4bit,
        "note": "tanren: the LoRA adapter was not merged; load base_model, then the PEFT adapter on top",
    }
    (out / POINTER).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out / POINTER


def half_dtype(device: str):
    """bf16 on a CUDA device that supports it, else fp16 on CUDA; fp32 on CPU."""
    import torch

    if device != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def bnb_4bit_config(where: str, device: str, compute_dtype=None):
    """A BitsAndBytesConfig for NF4 loading, or a StageConfigError when it cannot work here."""
    if device != "cuda":
        raise StageConfigError(
            f"{where}: 4-bit QLoRA needs a CUDA GPU ('qlora'/'load_in_4bit' set); this worker has device {device}"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # noqa: BLE001  (ImportError, or a CUDA library bitsandbytes cannot load)
        raise StageConfigError(
            f"{where}: 4-bit loading needs the bitsandbytes package, which failed to import here ({e})"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or half_dtype(device),
    )


def load_causal_lm(source: ModelSource, where: str, **kwargs):
    """AutoModelForCausalLM.from_pretrained(source.base) with errors of a Hub model turned into StageConfigError."""
    from transformers import AutoModelForCausalLM

    try:
        # No code from the model's repo (trust_remote_code); weights from safetensors, else a weights-only torch.load.
        return AutoModelForCausalLM.from_pretrained(
            source.base, attn_implementation="sdpa", trust_remote_code=False, weights_only=True, **kwargs
        )
    except Exception as e:  # noqa: BLE001  (transformers re-raises the refusal as OSError)
        refusal = _weights_only_refusal(e)
        if refusal is None:
            if isinstance(e, OSError) and source.hub:
                raise StageConfigError(f"{where}: could not load Hub model {source.base}: {e}")
            raise
        raise InvalidStageInput(
            f"{where}: refused to load the weights of model {source.base}: they are not weights-only and "
            f"unpickling them could run code ({_unpickle_reason(refusal)}); use a model saved as "
            "safetensors"
        ) from None


def match_vocab(model, tok) -> None:
    """Grows the base model's embeddings to the adapter's tokenizer (chat tokens added in training); the adapter
    then loads the trained rows (it saves the embedding layers when they were resized)."""
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))


def load_tokenizer(model_dir: Path | str | ModelSource):
    from transformers import AutoTokenizer

    where = model_dir.tokenizer if isinstance(model_dir, ModelSource) else str(model_dir)
    tok = AutoTokenizer.from_pretrained(where, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def ensure_chat_tokens(tok, model=None) -> list[int]:
    """Adds the ChatML markers as special tokens when the template uses them and the vocab lacks them (growing the
    model's embeddings); returns the ids of the markers the template uses (added or already there), [] for none."""
    if "<|im_start|>" not in (tok.chat_template or ""):
        return []
    markers = CHAT_TOKENS["chatml"]
    missing = [t for t in markers if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
        if model is not None:
            model.resize_token_embeddings(len(tok))
    return [tok.convert_tokens_to_ids(t) for t in markers]

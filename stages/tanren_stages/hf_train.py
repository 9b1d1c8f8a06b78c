"""Shared pieces of the TRL-based stages (sft, dpo): params, model loading, LoRA, events callback."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .common import (
    CHAT_FORMAT_FILE,
    CHAT_TEMPLATES,
    ModelSource,
    bf16_ok,
    bnb_4bit_config,
    ensure_chat_tokens,
    load_causal_lm,
    match_vocab,
    pick_device,
    refusing_unsafe_pickles,
    resolve_model,
    write_pointer,
)
from .protocol import InvalidStageInput, StageConfigError, StageContext, StopFlag, param, read_jsonl, write_json

try:  # the map() progress bars of datasets only clutter the stage log
    import datasets as _datasets

    _datasets.disable_progress_bars()
except Exception:  # noqa: BLE001
    pass


@dataclass
class TrainParams:
    """The `with:` params the TRL-based kinds share (sft.SftParams and dpo.DpoParams add theirs)."""

    model: str | None = param(
        default_doc="model/ in the needed stage (or the one `input` names)",
        help='HF model dir, or a Hub repo id "org/name" (offline: must be in the HF cache). A model/ holding '
        "base.json (an unmerged adapter of an earlier sft/dpo) loads as base + adapter, and LoRA training "
        "continues that adapter",
    )
    input: str | None = param(help="the needed stage whose model/ is trained")
    data: str | None = param(help=".jsonl file or dir (relative to the project root); this or data_input is required")
    data_input: str | None = param(help="a needed stage holding *.jsonl")
    lora: object = param(
        default_doc="false", help='false | true | {r: 16, alpha: 32, dropout: 0.05, target_modules: "all-linear"}'
    )
    qlora: bool = param(False, help="NF4 4-bit base + LoRA (needs CUDA + bitsandbytes, else StageConfigError)")
    load_in_4bit: bool = param(False, help="the same as qlora")
    merge_adapter: object = param(
        "auto",
        help='"auto": merge the LoRA adapter into model/ unless the base is 4-bit; false: never (adapter/ + '
        "model/base.json naming the base, which the later stages load); true: always (not with qlora)",
    )
    max_steps: int = param(-1, help="optimizer steps; -1: train num_train_epochs")
    num_train_epochs: float = param(1.0, min=0, help="epochs when max_steps is -1")
    lr: float = param(2e-5, min=0, help="peak learning rate")
    micro_batch_size: int = param(4, min=1, help="rows per forward pass (training and evaluation)")
    gradient_accumulation_steps: int = param(1, min=1, help="micro-batches per optimizer step")
    max_length: int = param(1024, min=8, help="tokens per row (longer rows are truncated)")
    seed: int = param(1234, help="seed of the training and of the held-out split")
    warmup_ratio: float = param(0.03, min=0, max=1, help="share of the steps spent warming up")
    lr_scheduler: str = param("cosine", help="a transformers lr_scheduler_type")
    weight_decay: float = param(0.0, min=0, help="AdamW weight decay")
    checkpoint_every: int = param(0, min=0, help="steps between checkpoints; 0 = none")
    log_every: int = param(1, min=1, help="steps between metric events")
    gradient_checkpointing: bool = param(False, help="recompute activations in the backward pass")
    device: str | None = param(
        choices=["cpu", "cuda", "auto"], default_doc='"auto"', help="auto: cuda when the worker has one"
    )
    precision: str = param(
        "auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 on a CUDA GPU that supports it, else fp32"
    )
    threads: int | None = param(min=1, default_doc="unchanged", help="torch CPU threads")
    eval_fraction: float = param(
        0.1,
        min=0,
        max=0.5,
        help="rows held out of training (seeded by `seed`, at most eval_max_rows); their loss is metric eval_loss "
        "every eval_every steps and at the end; 0 = no held-out rows",
    )
    eval_max_rows: int = param(256, min=1, help="at most this many held-out rows")
    eval_every: int | None = param(
        min=1, default_doc="max_steps // 4, else each epoch", help="steps between evaluations of the held-out rows"
    )
    chat_template: str = param(
        "auto",
        choices=["auto", *CHAT_TEMPLATES],
        help="auto: the tokenizer's own template when it marks the assistant's text with {% generation %} (as an "
        "earlier sft/dpo stage's does), else ChatML (<|im_start|>/<|im_end|>, added to the vocabulary when "
        'missing); "chatml"; "llm-jp" (llm-jp-3\'s instruction format: "### 指示:" / "### 応答:", a turn ends '
        "with EOS, no new tokens). With LoRA the ChatML markers' embedding rows are trained too (peft "
        "trainable_token_indices; an untied LM head is trained whole). The tokenizer is saved with the "
        "template and a chat_format.json, so the eval stages prompt in the same format",
    )


def data_files(ctx: StageContext, a: TrainParams, default_name: str) -> list[Path]:
    p = ctx.params
    if a.data is not None:
        d = Path(a.data)
    elif a.data_input is not None:
        d = ctx.input_dir(a.data_input, param="data_input")
    else:
        raise InvalidStageInput(
            f"{p.source}: field 'data' (a .jsonl file or directory) is required, or 'data_input' naming a needed stage"
        )
    if d.is_file():
        return [d]
    if not d.is_dir():
        raise InvalidStageInput(f"{p.source}: field 'data': {d} does not exist")
    files = sorted(d.rglob("*.jsonl"))
    if not files:
        raise InvalidStageInput(f"{p.source}: field 'data': no .jsonl files under {d} (expected e.g. {default_name})")
    return files


def load_rows(files: list[Path]) -> list[tuple[str, dict]]:
    rows = []
    for f in files:
        for ln, obj in read_jsonl(f):
            if not isinstance(obj, dict):
                raise InvalidStageInput(f"{f}:{ln}: each line must be a JSON object")
            rows.append((f"{f}:{ln}", obj))
    if not rows:
        raise InvalidStageInput(f"{', '.join(map(str, files))}: no rows")
    return rows


def split_rows(ctx: StageContext, rows: list, default_fraction: float = 0.1) -> tuple[list, list]:
    """(training rows, held-out rows): `eval_fraction` of the rows (at least 1 when the fraction is above 0, at most
    `eval_max_rows`, default 256), picked by a permutation seeded with `seed`, so the split is the same on every
    attempt and resume. The rows keep their file order on both sides."""
    import random as _random

    p = ctx.params
    frac = p.float("eval_fraction", default_fraction, min=0, max=0.5)
    if frac <= 0:
        return rows, []
    n = min(max(1, round(len(rows) * frac)), p.int("eval_max_rows", 256, min=1))
    if n >= len(rows):
        raise InvalidStageInput(
            f"{p.source}: field 'eval_fraction' ({frac}) would hold out all {len(rows)} rows; lower it or add data"
        )
    held = set(_random.Random(p.int("seed", 1234)).sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def eval_kwargs(a: TrainParams, has_eval: bool) -> dict:
    """Trainer arguments for the held-out evaluation: every `eval_every` steps (default max_steps // 4, or once per
    epoch when training runs by epochs); the stage evaluates once more at the end."""
    if not has_eval:
        return {"eval_strategy": "no"}
    if a.eval_every is not None:
        return {"eval_strategy": "steps", "eval_steps": a.eval_every}
    if a.max_steps > 0:
        return {"eval_strategy": "steps", "eval_steps": max(1, a.max_steps // 4)}
    return {"eval_strategy": "epoch"}


def final_evaluation(trainer) -> dict:
    """The held-out metrics at the last step: the Trainer's own when it just evaluated there, else a fresh evaluate()."""
    last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return last
    return trainer.evaluate()


def check_messages(where: str, msgs) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise InvalidStageInput(f"{where}: field 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "user", "assistant")
            or not isinstance(m.get("content"), str)
        ):
            raise InvalidStageInput(f"{where}: messages[{i}] must be {{role: system|user|assistant, content: string}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def lora_config(ctx: StageContext, chat_token_ids: list[int] | None = None, tied: bool = True):
    """The LoRA config of params `lora`/`qlora`, or None without LoRA. chat_token_ids: rows of the chat markers
    (e.g. ChatML's <|im_start|>/<|im_end|>, added to the vocabulary or never seen in pretraining); LoRA alone would
    leave them as initialised, so they are trained too: peft's trainable_token_indices on the input embeddings
    (which also covers a tied LM head), and the whole LM head as modules_to_save when it is not tied."""
    p = ctx.params
    raw = p.raw("lora")
    qlora = p.bool("qlora", False) or p.bool("load_in_4bit", False)
    if raw is None and not qlora:
        return None
    if raw is False and not qlora:
        return None
    sub = p.sub("lora") if isinstance(raw, dict) else None
    from peft import LoraConfig

    g = sub or p.__class__({}, p.source + ": lora")
    targets = g.raw("target_modules", "all-linear")
    extra: dict = {}
    if chat_token_ids:
        extra["trainable_token_indices"] = {"embed_tokens": sorted(set(chat_token_ids))}
        if not tied:
            extra["modules_to_save"] = ["lm_head"]
    return LoraConfig(
        r=g.int("r", 16, min=1),
        lora_alpha=g.int("alpha", 32, min=1),
        lora_dropout=g.float("dropout", 0.05, min=0, max=1),
        target_modules=targets,
        task_type="CAUSAL_LM",
        bias="none",
        **extra,
    )


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def wants_4bit(ctx: StageContext) -> bool:
    p = ctx.params
    return p.bool("qlora", False) or p.bool("load_in_4bit", False)


def merge_choice(ctx: StageContext) -> bool | None:
    """merge_adapter: true / false / "auto" (None: merge unless the base is 4-bit)."""
    p = ctx.params
    v = p.raw("merge_adapter", "auto")
    if v == "auto":
        return None
    return p.bool("merge_adapter")


def check_qlora(ctx: StageContext, device: str) -> bool:
    """Fails early (before heavy imports) when 4-bit loading is asked for where it cannot work."""
    p = ctx.params
    qlora = wants_4bit(ctx)
    if qlora and device != "cuda":
        raise StageConfigError(
            f"{p.source}: 4-bit QLoRA needs a CUDA GPU ('qlora'/'load_in_4bit' set); this worker has device {device}"
        )
    if qlora and merge_choice(ctx) is True:
        raise StageConfigError(
            f"{p.source}: field 'merge_adapter' is true, but a LoRA adapter cannot be merged into a 4-bit base "
            "without requantising it; leave it 'auto' (adapter/ + model/base.json)"
        )
    return qlora


# A {% generation %} block tag (with or without whitespace control), not the word inside `add_generation_prompt`,
# which nearly every chat template has (llm-jp-3's included).
GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def choose_chat_template(ctx: StageContext, tok) -> str:
    """Sets tok.chat_template from params `chat_template` and returns the format's name: "auto" (default) keeps the
    tokenizer's own template when it marks the assistant's text with {% generation %} (needed for the
    assistant-only loss; an earlier sft/dpo stage's tokenizer does), else ChatML; "chatml" or "llm-jp" (llm-jp-3's
    instruction format, ending a turn with EOS: no new tokens) set that template."""
    p = ctx.params
    want = p.str("chat_template", "auto", choices=["auto", *CHAT_TEMPLATES])
    if want != "auto":
        tok.chat_template = CHAT_TEMPLATES[want]
        return want
    own = tok.chat_template or ""
    if GENERATION_BLOCK.search(own):
        return next((name for name, t in CHAT_TEMPLATES.items() if t == own), "tokenizer")
    if own:
        print(
            "base chat template has no {% generation %} markers: using tanren's ChatML template (set 'chat_template' to "
            "choose another)",
            file=sys.stderr,
        )
    tok.chat_template = CHAT_TEMPLATES["chatml"]
    return "chatml"


def peft_config_for(ctx: StageContext, model, tok):
    """lora_config with the chat markers' rows trainable (see lora_config)."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return lora_config(ctx, getattr(tok, "tanren_chat_token_ids", None), tied)


def load_model_and_tokenizer(ctx: StageContext, device: str, *, reference_adapter: bool = False):
    """The model to train and its tokenizer; returns (model, tok, source).

    When the source is a base + adapter (model/base.json of an earlier sft/dpo stage) and LoRA is on, the
    adapter is loaded trainable (training continues it) and, with reference_adapter, a second frozen copy
    named "reference" is loaded for DPO's reference model; the model returned is then a PeftModel.
    Without LoRA the adapter is merged into the base first (full fine-tuning of the merged model).
    """
    import torch
    from transformers import AutoTokenizer

    p = ctx.params
    source = resolve_model(ctx)
    qlora = wants_4bit(ctx)
    kwargs: dict = {}
    if qlora:
        kwargs["quantization_config"] = bnb_4bit_config(
            p.source, device, torch.bfloat16 if bf16_ok(device) else torch.float16
        )
        kwargs["device_map"] = {"": 0}
    tok = AutoTokenizer.from_pretrained(source.tokenizer, trust_remote_code=False)
    model = load_causal_lm(source, p.source, **kwargs)
    if not qlora:
        model.to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.tanren_chat_format = choose_chat_template(ctx, tok)
    if source.adapter is not None:
        match_vocab(model, tok)
    tok.tanren_chat_token_ids = ensure_chat_tokens(tok, model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=p.bool("gradient_checkpointing", False)
        )
    if source.adapter is not None:
        from peft import PeftModel

        # peft reads adapter_model.safetensors, else adapter_model.bin weights-only (see common.py)
        with refusing_unsafe_pickles(f"{p.source}: adapter {source.adapter}"):
            if lora_config(ctx) is None:
                model = PeftModel.from_pretrained(model, str(source.adapter)).merge_and_unload()
            else:
                print(
                    f"continuing to train the LoRA adapter of {source.adapter} (its r/alpha/targets; field 'lora' sets only "
                    "new adapters)",
                    file=sys.stderr,
                )
                model = PeftModel.from_pretrained(model, str(source.adapter), is_trainable=True)
                if reference_adapter:
                    model.load_adapter(str(source.adapter), adapter_name="reference", is_trainable=False)
                    model.set_adapter("default")
    return model, tok, source


def training_args_kwargs(ctx: StageContext, a: TrainParams, device: str) -> dict:
    p = ctx.params
    precision = a.precision
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_ok(device))
    if precision == "bf16" and not bf16_ok(device):
        raise StageConfigError(f"{p.source}: field 'precision' is bf16 but device {device} does not support it")
    if a.threads is not None:
        import torch

        torch.set_num_threads(a.threads)
    ckpt_dir = ctx.checkpoints or (ctx.output / "checkpoints")
    ckpt_every = a.checkpoint_every
    return dict(
        output_dir=str(ckpt_dir),
        overwrite_output_dir=True,
        max_steps=a.max_steps,
        num_train_epochs=a.num_train_epochs,
        learning_rate=a.lr,
        per_device_train_batch_size=a.micro_batch_size,
        gradient_accumulation_steps=a.gradient_accumulation_steps,
        seed=a.seed,
        data_seed=a.seed,
        warmup_ratio=a.warmup_ratio,
        lr_scheduler_type=a.lr_scheduler,
        weight_decay=a.weight_decay,
        logging_steps=a.log_every,
        save_strategy="steps" if ckpt_every else "no",
        save_steps=ckpt_every or 500,
        save_only_model=False,
        gradient_checkpointing=a.gradient_checkpointing,
        bf16=use_bf16,
        use_cpu=device == "cpu",
        report_to=["tensorboard"],
        logging_dir=str(ctx.output / "tensorboard"),
        dataloader_num_workers=0,
        disable_tqdm=True,
        save_safetensors=True,
        remove_unused_columns=True,
        per_device_eval_batch_size=a.micro_batch_size,
    )


def events_callback(ctx: StageContext, stop: StopFlag, renames: dict[str, str] | None = None):
    from transformers import TrainerCallback

    renames = {"learning_rate": "lr", **(renames or {})}

    class EventsCallback(TrainerCallback):
        """Turns Trainer logs into metric events, saves into checkpoint events, SIGTERM into a checkpoint + stop."""

        last_logs: dict = {}
        first_loss = None
        stopped = False

        def on_log(self, args, state, control, logs=None, **kw):
            vals = {}
            for k, v in (logs or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                    vals[renames.get(k, k)] = float(v)
            if not vals:
                return
            if "loss" in vals and self.first_loss is None:
                self.first_loss = vals["loss"]
            self.last_logs.update(vals)
            ctx.metric(vals, step=state.global_step)

        def on_step_end(self, args, state, control, **kw):
            ctx.progress(state.global_step, state.max_steps)
            if stop.requested:
                control.should_save = True
                control.should_training_stop = True
                self.stopped = True

        def on_save(self, args, state, control, **kw):
            ctx.checkpoint(f"checkpoint-{state.global_step}", state.global_step)

    return EventsCallback()


def save_final(ctx: StageContext, trainer, tok, lora: bool, source: ModelSource | None = None) -> Path:
    """model/ with full weights; with LoRA also adapter/. An adapter that is not merged (4-bit base, or
    merge_adapter: false) is saved as adapter/ + model/base.json naming the base, which resolve_model and
    the eval stages load as base + adapter."""
    out = ctx.output / "model"
    model = trainer.model
    if lora:
        adapter_dir = ctx.output / "adapter"
        base = model.get_base_model()
        four_bit = bool(getattr(base, "is_loaded_in_4bit", False))
        resized = _vocab_resized(base, source)
        model.save_pretrained(str(adapter_dir), selected_adapters=["default"], save_embedding_layers=resized)
        tok.save_pretrained(str(adapter_dir))
        write_chat_format(ctx, tok, adapter_dir)
        merge = merge_choice(ctx)
        if merge is False or (merge is None and four_bit):
            if source is None:
                raise StageConfigError(
                    f"{ctx.params.source}: cannot write model/{'base.json'} without the base model's source"
                )
            write_pointer(ctx, source, adapter_dir, load_in_4bit=four_bit)
            print(
                f"LoRA adapter not merged ({'4-bit base' if four_bit else 'merge_adapter: false'}): wrote adapter/ and "
                f"model/base.json -> {source.base}",
                file=sys.stderr,
            )
            return out
        model = model.merge_and_unload(adapter_names=["default"])
    model.config.use_cache = True
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    write_chat_format(ctx, tok, out)
    return out


def write_chat_format(ctx: StageContext, tok, directory: Path) -> None:
    """chat_format.json beside the saved tokenizer: the eval stages then prompt in the format the model was tuned on."""
    write_json(
        directory / CHAT_FORMAT_FILE,
        {
            "format": getattr(tok, "tanren_chat_format", "tokenizer"),
            "stage": ctx.stage_id,
            "note": "tanren: tuned with this tokenizer's chat template",
        },
    )


def _vocab_resized(base, source: ModelSource | None) -> bool:
    """Whether the embeddings differ in size from the original base (chat tokens added): the adapter must then carry them."""
    if source is None:
        return False
    from transformers import AutoConfig

    try:
        vocab = AutoConfig.from_pretrained(source.base).vocab_size
    except Exception:  # noqa: BLE001
        return True
    return base.get_input_embeddings().weight.shape[0] != vocab


def run_training(ctx: StageContext, trainer, cb, stop: StopFlag) -> None:
    resume = str(ctx.resume_from) if ctx.resume_from else None
    # The Trainer loads model (safetensors), optimizer, scheduler, scaler and RNG state (numpy arrays allowlisted)
    # weights-only; common.py forces it for every torch.load, so a checkpoint that needs more is refused here.
    with refusing_unsafe_pickles(f"TANREN_RESUME_FROM={resume}"):
        trainer.train(resume_from_checkpoint=resume)
    if cb.stopped:
        print(
            f"stopped by signal {stop.signum} at step {trainer.state.global_step} after saving a checkpoint",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(128 + (stop.signum or 15))


def device_for(ctx: StageContext) -> str:
    return pick_device(ctx)

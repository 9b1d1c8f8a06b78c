"""Shared pieces of the TRL-based stages (sft, dpo): params, model loading, LoRA, events callback."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from .common import CHAT_TEMPLATE, bf16_ok, ensure_chat_tokens, pick_device, resolve_model_dir
from .protocol import InvalidStageInput, StageConfigError, StageContext, StopFlag, read_jsonl

try:  # the map() progress bars of datasets only clutter the stage log
    import datasets as _datasets

    _datasets.disable_progress_bars()
except Exception:  # noqa: BLE001
    pass

COMMON_KEYS = {"model", "input", "data", "data_input", "lora", "load_in_4bit", "qlora", "max_steps", "num_train_epochs",
               "lr", "micro_batch_size", "gradient_accumulation_steps", "max_length", "seed", "warmup_ratio",
               "lr_scheduler", "weight_decay", "checkpoint_every", "log_every", "gradient_checkpointing", "device",
               "precision", "threads"}


def data_files(ctx: StageContext, default_name: str) -> list[Path]:
    p = ctx.params
    if p.has("data"):
        d = Path(p.str("data"))
    elif p.has("data_input"):
        d = ctx.input_dir(p.str("data_input"), param="data_input")
    else:
        raise InvalidStageInput(f"{p.source}: field 'data' (a .jsonl file or directory) is required, or 'data_input' naming a needed stage")
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


def check_messages(where: str, msgs) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise InvalidStageInput(f"{where}: field 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise InvalidStageInput(f"{where}: messages[{i}] must be {{role: system|user|assistant, content: string}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def lora_config(ctx: StageContext):
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
    return LoraConfig(r=g.int("r", 16, min=1), lora_alpha=g.int("alpha", 32, min=1), lora_dropout=g.float("dropout", 0.05, min=0, max=1),
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")


def check_qlora(ctx: StageContext, device: str) -> bool:
    """Fails early (before heavy imports) when 4-bit loading is asked for where it cannot work."""
    p = ctx.params
    qlora = p.bool("qlora", False) or p.bool("load_in_4bit", False)
    if qlora and device != "cuda":
        raise StageConfigError(f"{p.source}: 4-bit QLoRA ('qlora'/'load_in_4bit') needs a CUDA GPU; this worker has device {device}")
    return qlora


def load_model_and_tokenizer(ctx: StageContext, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = ctx.params
    model_dir = resolve_model_dir(ctx)
    qlora = p.bool("qlora", False) or p.bool("load_in_4bit", False)
    kwargs: dict = {}
    if qlora:
        if device != "cuda":
            raise StageConfigError(f"{p.source}: 4-bit QLoRA ('qlora'/'load_in_4bit') needs a CUDA GPU; this worker has device {device}")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise StageConfigError(f"{p.source}: 4-bit QLoRA needs the bitsandbytes package, which is not installed in the stages venv")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa", **kwargs)
    if not qlora:
        model.to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    if not tok.chat_template or "generation" not in tok.chat_template:
        if tok.chat_template:
            print("base chat template has no {% generation %} markers: using tanren's ChatML template", file=sys.stderr)
        tok.chat_template = CHAT_TEMPLATE
    ensure_chat_tokens(tok, model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model, tok, model_dir


def training_args_kwargs(ctx: StageContext, device: str, lr_default: float) -> dict:
    p = ctx.params
    precision = p.str("precision", "auto", choices=["auto", "bf16", "fp32"])
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_ok(device))
    if precision == "bf16" and not bf16_ok(device):
        raise StageConfigError(f"{p.source}: field 'precision' is bf16 but device {device} does not support it")
    if p.has("threads"):
        import torch

        torch.set_num_threads(p.int("threads", min=1))
    ckpt_dir = ctx.checkpoints or (ctx.output / "checkpoints")
    ckpt_every = p.int("checkpoint_every", 0, min=0)
    return dict(
        output_dir=str(ckpt_dir), overwrite_output_dir=True,
        max_steps=p.int("max_steps", -1), num_train_epochs=p.float("num_train_epochs", 1.0, min=0),
        learning_rate=p.float("lr", lr_default, min=0), per_device_train_batch_size=p.int("micro_batch_size", 4, min=1),
        gradient_accumulation_steps=p.int("gradient_accumulation_steps", 1, min=1), seed=p.int("seed", 1234), data_seed=p.int("seed", 1234),
        warmup_ratio=p.float("warmup_ratio", 0.03, min=0, max=1), lr_scheduler_type=p.str("lr_scheduler", "cosine"),
        weight_decay=p.float("weight_decay", 0.0, min=0), logging_steps=p.int("log_every", 1, min=1),
        save_strategy="steps" if ckpt_every else "no", save_steps=ckpt_every or 500, save_only_model=False,
        gradient_checkpointing=p.bool("gradient_checkpointing", False), bf16=use_bf16, use_cpu=device == "cpu",
        report_to=["tensorboard"], logging_dir=str(ctx.output / "tensorboard"), dataloader_num_workers=0,
        disable_tqdm=True, save_safetensors=True, remove_unused_columns=True,
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


def save_final(ctx: StageContext, trainer, tok, lora: bool) -> Path:
    out = ctx.output / "model"
    model = trainer.model
    if lora:
        model.save_pretrained(str(ctx.output / "adapter"))
        try:
            model = model.merge_and_unload()
        except Exception as e:  # noqa: BLE001  (4-bit bases cannot merge in place)
            print(f"could not merge the LoRA adapter ({e}); output/model holds the adapter only", file=sys.stderr)
    model.config.use_cache = True
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def run_training(ctx: StageContext, trainer, cb, stop: StopFlag) -> None:
    resume = str(ctx.resume_from) if ctx.resume_from else None
    trainer.train(resume_from_checkpoint=resume)
    if cb.stopped:
        print(f"stopped by signal {stop.signum} at step {trainer.state.global_step} after saving a checkpoint", file=sys.stderr, flush=True)
        sys.exit(128 + (stop.signum or 15))


def device_for(ctx: StageContext) -> str:
    return pick_device(ctx)

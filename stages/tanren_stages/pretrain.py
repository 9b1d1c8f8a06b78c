"""Stage `pretrain`: a small Llama causal LM trained from scratch on a Megatron indexed dataset.

params (generated from PretrainParams; `python -m tanren_stages.protocol` rewrites this block):
  input (string; default the needed stage that has them): needed stage with <prefix>.idx/.bin and tokenizer/
  data_prefix (string; default "text_document"): name of the indexed dataset's .idx/.bin files
  hidden_size (integer >= 8; default 256): model width; divisible by num_heads
  intermediate_size (integer >= 8; default 8/3 * hidden_size rounded up to a multiple of 8): MLP width
  num_layers (integer >= 1; default 4): transformer layers
  num_heads (integer >= 1; default 4): attention heads
  num_kv_heads (integer >= 1; default num_heads): key/value heads (GQA); divides num_heads
  seq_len (integer >= 8; default 256): tokens per training window (and the model's max positions)
  rope_theta (number >= 1.0; default 10000.0): RoPE base
  micro_batch_size (integer >= 1; default 8): windows per forward pass
  gradient_accumulation_steps (integer >= 1; default 1): micro-batches per optimizer step
  max_steps (integer >= 1; default 1000, or max_tokens / tokens per step): optimizer steps (the schedule's
      length)
  max_tokens (integer >= 1): training tokens, instead of max_steps
  lr (number >= 0; default 0.0003): peak learning rate (linear warm-up, then cosine decay)
  min_lr_ratio (number >= 0, <= 1; default 0.1): final learning rate as a share of lr
  warmup_steps (integer >= 0; default min(100, max_steps // 10)): linear warm-up steps
  weight_decay (number >= 0; default 0.1): AdamW weight decay (matrices only)
  adam_beta1 (number; default 0.9): AdamW beta1
  adam_beta2 (number; default 0.95): AdamW beta2
  grad_clip (number >= 0; default 1.0): gradient norm clip; 0 = none
  seed (integer; default 1234): seed of the weights and of the data order
  precision ("auto" | "bf16" | "fp32"; default "auto"): auto: bf16 on a CUDA GPU that supports it, else fp32
  gradient_checkpointing (bool; default false): recompute activations in the backward pass
  checkpoint_every (integer >= 0; default 0): steps between checkpoints; 0 = only at the end / on SIGTERM
  log_every (integer >= 1; default 1): steps between metric events
  threads (integer >= 1; default unchanged): torch CPU threads
  device ("cpu" | "cuda" | "auto"; default "auto"): auto: cuda when the worker has one
  deterministic (bool; default true): torch deterministic algorithms (warn only)
  valid_fraction (number >= 0, <= 0.5; default 0.01): the last documents of the indexed dataset holding about
      this share of its tokens are held out (split at a document start, so no article is in both parts); 0 = no
      held-out set
  eval_every (integer >= 1; default checkpoint_every, else max_steps // 5): validation loss every n steps and at
      the end
  eval_windows (integer >= 1; default 64): at most this many held-out seq_len windows are evaluated (the same
      ones every time)
  stop_at_step (integer >= 1): a sweep's rung boundary: train to this step of the max_steps schedule,
      checkpoint, exit 0 with result stopped_at_step and no model; resuming later continues the same schedule;
      run again behind a checkpoint that went further, it reports the loss recorded at that step and trains
      nothing
(end of params)
Validation loss: mean next-token cross-entropy over the held-out windows, reported as metric `eval_loss` (and
`eval_ppl`) at its step and in the result (`first_eval_loss`, `final_eval_loss`, `eval_tokens`).
Checkpoints go to $TANREN_CHECKPOINTS/step-XXXXXX (model, optimizer, scheduler, RNG states,
data position); $TANREN_RESUME_FROM resumes exactly. Data order is a seeded permutation per
epoch indexed by the consumed-sample count, so a resumed run sees the same batches.
Test switch: TANREN_TEST_INJECT_OOM_ABOVE_MICRO_BATCH=<n> fails with OutOfMemory when micro_batch_size > n.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import bf16_ok, load_weights, pick_device
from .indexed_dataset import IndexedDataset
from .protocol import (
    InvalidStageInput,
    OutOfMemory,
    StageConfigError,
    StageContext,
    StopFlag,
    param,
    run_stage,
    write_json,
)


@dataclass
class PretrainParams:
    """The `with:` params of a pretrain stage; None marks a default computed from the others."""

    input: str | None = param(
        help="needed stage with <prefix>.idx/.bin and tokenizer/", default_doc="the needed stage that has them"
    )
    data_prefix: str = param("text_document", help="name of the indexed dataset's .idx/.bin files")
    hidden_size: int = param(256, min=8, help="model width; divisible by num_heads")
    intermediate_size: int | None = param(
        min=8, default_doc="8/3 * hidden_size rounded up to a multiple of 8", help="MLP width"
    )
    num_layers: int = param(4, min=1, help="transformer layers")
    num_heads: int = param(4, min=1, help="attention heads")
    num_kv_heads: int | None = param(min=1, default_doc="num_heads", help="key/value heads (GQA); divides num_heads")
    seq_len: int = param(256, min=8, help="tokens per training window (and the model's max positions)")
    rope_theta: float = param(10000.0, min=1.0, help="RoPE base")
    micro_batch_size: int = param(8, min=1, help="windows per forward pass")
    gradient_accumulation_steps: int = param(1, min=1, help="micro-batches per optimizer step")
    max_steps: int | None = param(
        min=1, default_doc="1000, or max_tokens / tokens per step", help="optimizer steps (the schedule's length)"
    )
    max_tokens: int | None = param(min=1, help="training tokens, instead of max_steps")
    lr: float = param(3e-4, min=0, help="peak learning rate (linear warm-up, then cosine decay)")
    min_lr_ratio: float = param(0.1, min=0, max=1, help="final learning rate as a share of lr")
    warmup_steps: int | None = param(min=0, default_doc="min(100, max_steps // 10)", help="linear warm-up steps")
    weight_decay: float = param(0.1, min=0, help="AdamW weight decay (matrices only)")
    adam_beta1: float = param(0.9, help="AdamW beta1")
    adam_beta2: float = param(0.95, help="AdamW beta2")
    grad_clip: float = param(1.0, min=0, help="gradient norm clip; 0 = none")
    seed: int = param(1234, help="seed of the weights and of the data order")
    precision: str = param(
        "auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 on a CUDA GPU that supports it, else fp32"
    )
    gradient_checkpointing: bool = param(False, help="recompute activations in the backward pass")
    checkpoint_every: int = param(0, min=0, help="steps between checkpoints; 0 = only at the end / on SIGTERM")
    log_every: int = param(1, min=1, help="steps between metric events")
    threads: int | None = param(min=1, default_doc="unchanged", help="torch CPU threads")
    device: str | None = param(
        choices=["cpu", "cuda", "auto"], default_doc='"auto"', help="auto: cuda when the worker has one"
    )
    deterministic: bool = param(True, help="torch deterministic algorithms (warn only)")
    valid_fraction: float = param(
        0.01,
        min=0,
        max=0.5,
        help="the last documents of the indexed dataset holding about this share of its tokens are held out "
        "(split at a document start, so no article is in both parts); 0 = no held-out set",
    )
    eval_every: int | None = param(
        min=1,
        default_doc="checkpoint_every, else max_steps // 5",
        help="validation loss every n steps and at the end",
    )
    eval_windows: int = param(
        64, min=1, help="at most this many held-out seq_len windows are evaluated (the same ones every time)"
    )
    stop_at_step: int | None = param(
        min=1,
        help="a sweep's rung boundary: train to this step of the max_steps schedule, checkpoint, exit 0 with "
        "result stopped_at_step and no model; resuming later continues the same schedule; run again behind a "
        "checkpoint that went further, it reports the loss recorded at that step and trains nothing",
    )


PARAMS = PretrainParams


def split_held_out(ds: IndexedDataset, fraction: float) -> int:
    """The token offset where the held-out part starts: the start of the first document at or after
    (1 - fraction) of the stream; len(stream) when fraction is 0. Deterministic: the same data, the same split."""
    total = int(ds.total_tokens)
    if fraction <= 0:
        return total
    starts = np.concatenate([[0], np.cumsum(ds.sequence_lengths.astype(np.int64))])[:-1]
    target = total * (1 - fraction)
    i = int(np.searchsorted(starts, target, side="left"))
    return int(starts[i]) if i < len(starts) else total


class TokenWindows:
    """Fixed-length windows over the concatenated token stream, in a seeded order per epoch."""

    def __init__(self, ds: IndexedDataset, seq_len: int, seed: int, end: int | None = None, what: str = "training"):
        self.tokens = ds.all_tokens()[:end]
        self.seq_len = seq_len
        self.n = (len(self.tokens) - 1) // seq_len
        self.seed = seed
        self._perm_epoch = -1
        self._perm = None
        if self.n < 1:
            raise InvalidStageInput(
                f"dataset {ds.prefix} has {len(self.tokens)} {what} tokens, fewer than seq_len+1 = {seq_len + 1}"
                + (" (lower 'valid_fraction')" if end is not None else "")
            )

    def sample(self, k: int) -> np.ndarray:
        epoch, pos = divmod(k, self.n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        i = int(self._perm[pos]) * self.seq_len
        return np.asarray(self.tokens[i : i + self.seq_len + 1], dtype=np.int64)

    def batch(self, start: int, size: int) -> np.ndarray:
        return np.stack([self.sample(start + j) for j in range(size)])


def held_out_windows(ds: IndexedDataset, start: int, seq_len: int, limit: int) -> np.ndarray:
    """Up to `limit` consecutive, non-overlapping seq_len+1 windows of the held-out tokens, shape (n, seq_len+1)."""
    tail = np.asarray(ds.all_tokens()[start:], dtype=np.int64)
    n = min(limit, (len(tail) - 1) // seq_len)
    if n < 1:
        raise InvalidStageInput(
            f"dataset {ds.prefix}: the held-out part has {len(tail)} tokens, fewer than seq_len+1 = {seq_len + 1}; "
            "raise 'valid_fraction' (or set it to 0 for no validation loss)"
        )
    return np.stack([tail[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])


def evaluate_loss(model, windows: np.ndarray, mbs: int, device: str, use_bf16: bool) -> float:
    """Mean next-token cross-entropy over the windows (every target token weighs the same)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), mbs):
            batch = torch.from_numpy(windows[i : i + mbs]).to(device)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += batch[:, 1:].numel()
    if was_training:
        model.train()
    return total / count


def lr_lambda_factory(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def find_data(ctx: StageContext, prefix: str, input: str | None = None) -> tuple[Path, Path | None]:
    if input is not None:
        dirs = [ctx.input_dir(input)]
    else:
        dirs = ctx.input_dirs()
    for d in dirs:
        if (d / f"{prefix}.idx").is_file():
            tok = d / "tokenizer" if (d / "tokenizer").is_dir() else None
            if tok is None:
                tok = next((x / "tokenizer" for x in ctx.input_dirs() if (x / "tokenizer").is_dir()), None)
            return d / prefix, tok
    raise InvalidStageInput(f"{ctx.params.source}: no {prefix}.idx in the needed stages (set 'input' or 'data_prefix')")


def rng_state() -> dict:
    """The RNG states of Python, numpy and torch (and CUDA) as tensors, lists and numbers only, so that the
    checkpoint's rng.pt loads with torch.load(weights_only=True)."""
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {
        "format": 2,
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": [int(x) for x in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict) -> None:
    """Restores what rng_state saved; also the numpy-tuple form of checkpoints written before it."""
    import torch

    py, npy = rng["python"], rng["numpy"]
    if isinstance(py, dict):
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
        np.random.set_state(
            (
                npy["kind"],
                np.asarray(npy["keys"], dtype=np.uint32),
                npy["pos"],
                npy["has_gauss"],
                npy["cached_gaussian"],
            )
        )
    else:
        random.setstate(py)
        np.random.set_state(npy)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, state: dict) -> str:
    import torch

    name = f"step-{step:06d}"
    tmp = root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    model.config.to_json_file(str(tmp / "config.json"))
    write_json(tmp / "trainer_state.json", state)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return name


def main(ctx: StageContext) -> None:
    import torch

    # Launched by torchrun for `gpus: N` (N > 1): data-parallel training is not implemented yet; say so
    # (StageConfigError, not retried) instead of N processes each training the whole model alone.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StageConfigError(
            f"stage {ctx.stage_id!r}: gpus: {os.environ['WORLD_SIZE']} asks for data-parallel pretraining, which this kind does not "
            "implement yet; use gpus: 1, or a `run:` stage with your own launcher (it gets every GPU in CUDA_VISIBLE_DEVICES)"
        )

    p = ctx.params
    a = ctx.typed_params(PretrainParams)
    seed = a.seed
    mbs = a.micro_batch_size
    gas = a.gradient_accumulation_steps
    oom_at = os.environ.get("TANREN_TEST_INJECT_OOM_ABOVE_MICRO_BATCH")
    if oom_at and mbs > int(oom_at):
        raise OutOfMemory(f"injected: micro_batch_size {mbs} > TANREN_TEST_INJECT_OOM_ABOVE_MICRO_BATCH={oom_at}")
    seq_len = a.seq_len
    hidden = a.hidden_size
    heads = a.num_heads
    kv_heads = a.num_kv_heads if a.num_kv_heads is not None else heads
    if hidden % heads:
        raise InvalidStageInput(f"{p.source}: field 'hidden_size' ({hidden}) must be divisible by num_heads ({heads})")
    if heads % kv_heads:
        raise InvalidStageInput(f"{p.source}: field 'num_kv_heads' ({kv_heads}) must divide num_heads ({heads})")
    max_steps = a.max_steps
    if max_steps is None:
        max_steps = max(1, math.ceil(a.max_tokens / (mbs * gas * seq_len))) if a.max_tokens else 1000
    stop_at = a.stop_at_step
    if stop_at is not None and stop_at >= max_steps:
        stop_at = None
    lr = a.lr
    warmup = a.warmup_steps if a.warmup_steps is not None else min(100, max_steps // 10)
    ckpt_every = a.checkpoint_every
    log_every = a.log_every
    precision = a.precision
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    if a.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = pick_device(ctx)
    if precision == "bf16" and not bf16_ok(device):
        raise StageConfigError(f"{p.source}: field 'precision' is bf16 but device {device} does not support it")
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_ok(device))

    prefix, tok_dir = find_data(ctx, a.data_prefix, a.input)
    ds = IndexedDataset(prefix)
    valid_fraction = a.valid_fraction
    split_at = split_held_out(ds, valid_fraction)
    windows = TokenWindows(ds, seq_len, seed, end=split_at if valid_fraction > 0 else None)
    valid = held_out_windows(ds, split_at, seq_len, a.eval_windows) if valid_fraction > 0 else None
    eval_every = a.eval_every if a.eval_every is not None else ckpt_every or max(1, max_steps // 5)
    if valid is not None:
        print(
            f"held out {int(ds.total_tokens) - split_at} of {int(ds.total_tokens)} tokens (valid_fraction {valid_fraction}); "
            f"validation loss over {len(valid)} windows every {eval_every} steps",
            file=sys.stderr,
        )
    tokenizer = None
    if tok_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    vocab = max(int(ds.all_tokens().max()) + 1, len(tokenizer) if tokenizer is not None else 0)

    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=a.intermediate_size
        if a.intermediate_size is not None
        else int(hidden * 8 / 3 / 8 + 0.999) * 8,
        num_hidden_layers=a.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=seq_len,
        rope_theta=a.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=getattr(tokenizer, "bos_token_id", 1),
        eos_token_id=getattr(tokenizer, "eos_token_id", 2),
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
        use_cache=False,
    )
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    decay = [q for n, q in model.named_parameters() if q.ndim >= 2]
    no_decay = [q for n, q in model.named_parameters() if q.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": a.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(a.adam_beta1, a.adam_beta2),
        eps=1e-8,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda_factory(warmup, max_steps, a.min_lr_ratio))
    grad_clip = a.grad_clip

    state = {
        "step": 0,
        "consumed_samples": 0,
        "first_loss": None,
        "first_eval_loss": None,
        "tokens": 0,
        "micro_batch_size": mbs,
        "gradient_accumulation_steps": gas,
    }
    if ctx.resume_from:
        rf = ctx.resume_from
        if not (rf / "model.pt").is_file():
            raise InvalidStageInput(f"TANREN_RESUME_FROM={rf} is not a pretrain checkpoint (no model.pt)")
        # Weights-only loads: a checkpoint from object storage must not be able to run code here.
        model.load_state_dict(load_weights(rf / "model.pt", map_location=device, what="model checkpoint"))
        optimizer.load_state_dict(load_weights(rf / "optimizer.pt", map_location=device, what="optimizer checkpoint"))
        scheduler.load_state_dict(load_weights(rf / "scheduler.pt", what="scheduler checkpoint"))
        state.update(json.loads((rf / "trainer_state.json").read_text()))
        # Checkpoints written before rng_state() hold numpy arrays: admitted as plain arrays, nothing else.
        set_rng_state(load_weights(rf / "rng.pt", what="RNG state", allow_numpy=True))
        print(
            f"resumed from {rf} at step {state['step']} (consumed {state['consumed_samples']} samples)", file=sys.stderr
        )
        # the engine may have changed the batch split after an OOM: keep the data position, use the new split
        state["micro_batch_size"], state["gradient_accumulation_steps"] = mbs, gas

    ckpt_root = ctx.checkpoints or (ctx.output / "checkpoints")
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tb = None
    try:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(ctx.output / "tensorboard"))
    except Exception as e:  # noqa: BLE001
        print(f"tensorboard disabled: {e}", file=sys.stderr)
    stop = StopFlag().install()

    def checkpoint() -> None:
        name = save_checkpoint(ckpt_root, state["step"], model, optimizer, scheduler, state)
        ctx.checkpoint(name, state["step"])

    eval_val = None

    def validate() -> None:
        nonlocal eval_val
        eval_val = evaluate_loss(model, valid, mbs, device, use_bf16)
        if not math.isfinite(eval_val):
            raise StageConfigError(
                f"validation loss became {eval_val} at step {state['step']}: lower 'lr' or check the data"
            )
        if state.get("first_eval_loss") is None:
            state["first_eval_loss"] = eval_val
        vals = {"eval_loss": eval_val, "eval_ppl": math.exp(min(eval_val, 50.0))}
        ctx.metric(vals, step=state["step"])
        if tb is not None:
            for k, v in vals.items():
                tb.add_scalar(f"valid/{k.removeprefix('eval_')}", v, state["step"])

    model.train()
    loss_val = None
    t_last, tok_last = time.perf_counter(), 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    end = stop_at if stop_at is not None else max_steps
    while state["step"] < end:
        step_loss = 0.0
        for _ in range(gas):
            batch = torch.from_numpy(windows.batch(state["consumed_samples"], mbs)).to(device)
            state["consumed_samples"] += mbs
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(input_ids=batch[:, :-1], use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1)
                )
            (loss / gas).backward()
            step_loss += loss.item() / gas
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
        lr_now = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += mbs * gas * seq_len
        loss_val = step_loss
        state["last_loss"] = loss_val
        if state["first_loss"] is None:
            state["first_loss"] = loss_val
        if not math.isfinite(loss_val):
            raise StageConfigError(f"loss became {loss_val} at step {state['step']}: lower 'lr' or check the data")
        if state["step"] % log_every == 0 or state["step"] in (max_steps, end):
            now = time.perf_counter()
            tps = (state["tokens"] - tok_last) / max(now - t_last, 1e-9)
            t_last, tok_last = now, state["tokens"]
            values = {"loss": loss_val, "lr": lr_now, "tokens_per_s": round(tps, 1)}
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            if device == "cuda":
                values["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            ctx.metric(values, step=state["step"])
            ctx.progress(state["step"], max_steps)
            if tb is not None:
                for k, v in values.items():
                    tb.add_scalar(f"train/{k}", v, state["step"])
        if valid is not None and (state["step"] % eval_every == 0 or state["step"] == end):
            validate()
        if ckpt_every and state["step"] % ckpt_every == 0 and state["step"] < end:
            checkpoint()
        if stop.requested:
            checkpoint()
            if tb is not None:
                tb.close()
            print(
                f"stopped by signal {stop.signum} at step {state['step']} after saving a checkpoint",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(128 + (stop.signum or 15))
    if valid is not None and eval_val is None:  # resumed at max_steps: the loop ran no step
        validate()
    if tb is not None:
        tb.close()
    if stop_at is not None and state["step"] > stop_at:
        # A rung run again after its trial went further (a reset of the sweep): the loss it had at this rung, untouched checkpoints.
        rung_loss = state.get("rung_losses", {}).get(str(stop_at))
        if rung_loss is None:
            raise StageConfigError(
                f"{p.source}: field 'stop_at_step' ({stop_at}) is behind the checkpoint resumed from (step {state['step']}), "
                "which recorded no loss at that step"
            )
        ctx.metric({"loss": rung_loss}, step=stop_at)
        ctx.progress(stop_at, max_steps)
        ctx.result(
            {
                "first_loss": state["first_loss"],
                "final_loss": rung_loss,
                "steps": stop_at,
                "stopped_at_step": stop_at,
                "max_steps": max_steps,
                "replayed_from_step": state["step"],
            }
        )
        return
    if loss_val is None and state.get("last_loss") is not None:
        # Resumed where this run ends, e.g. a rung run again after a lost worker: report the loss it ended with.
        loss_val = state["last_loss"]
        ctx.metric({"loss": loss_val}, step=state["step"])
        ctx.progress(state["step"], max_steps)
    if stop_at is not None:
        state.setdefault("rung_losses", {})[str(stop_at)] = loss_val
    checkpoint()
    if stop_at is not None:
        ctx.result(
            {
                "first_loss": state["first_loss"],
                "final_loss": loss_val,
                "steps": state["step"],
                "stopped_at_step": state["step"],
                "max_steps": max_steps,
                "tokens": state["tokens"],
            }
        )
        print(
            f"stopped at step {state['step']} of {max_steps} (stop_at_step) after saving a checkpoint",
            file=sys.stderr,
            flush=True,
        )
        return
    model_dir = ctx.output / "model"
    model.config.use_cache = True
    model.save_pretrained(str(model_dir), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(model_dir))
    ctx.artifact("model/model.safetensors", "final model (HF format)")
    ctx.result(
        {
            "first_loss": state["first_loss"],
            "final_loss": loss_val,
            "steps": state["step"],
            "tokens": state["tokens"],
            "parameters": sum(q.numel() for q in model.parameters()),
            **(
                {
                    "first_eval_loss": state["first_eval_loss"],
                    "final_eval_loss": eval_val,
                    "eval_tokens": int(valid[:, 1:].size),
                    "held_out_tokens": int(ds.total_tokens) - split_at,
                }
                if valid is not None
                else {}
            ),
        }
    )


if __name__ == "__main__":
    run_stage(main)

"""Stage `sft`: supervised fine-tuning with TRL's SFTTrainer, loss on assistant tokens only.

params (generated from SftParams; `python -m tanren_stages.protocol` rewrites this block):
  model (string; default model/ in the needed stage (or the one `input` names)): HF model dir, or a Hub repo id
      "org/name" (offline: must be in the HF cache). A model/ holding base.json (an unmerged adapter of an
      earlier sft/dpo) loads as base + adapter, and LoRA training continues that adapter
  input (string): the needed stage whose model/ is trained
  data (string): .jsonl file or dir (relative to the project root); this or data_input is required
  data_input (string): a needed stage holding *.jsonl
  lora (any; default false): false | true | {r: 16, alpha: 32, dropout: 0.05, target_modules: "all-linear"}
  qlora (bool; default false): NF4 4-bit base + LoRA (needs CUDA + bitsandbytes, else StageConfigError)
  load_in_4bit (bool; default false): the same as qlora
  merge_adapter (any; default "auto"): "auto": merge the LoRA adapter into model/ unless the base is 4-bit;
      false: never (adapter/ + model/base.json naming the base, which the later stages load); true: always (not
      with qlora)
  max_steps (integer; default -1): optimizer steps; -1: train num_train_epochs
  num_train_epochs (number >= 0; default 1.0): epochs when max_steps is -1
  lr (number >= 0; default 2e-05): peak learning rate
  micro_batch_size (integer >= 1; default 4): rows per forward pass (training and evaluation)
  gradient_accumulation_steps (integer >= 1; default 1): micro-batches per optimizer step
  max_length (integer >= 8; default 1024): tokens per row (longer rows are truncated)
  seed (integer; default 1234): seed of the training and of the held-out split
  warmup_ratio (number >= 0, <= 1; default 0.03): share of the steps spent warming up
  lr_scheduler (string; default "cosine"): a transformers lr_scheduler_type
  weight_decay (number >= 0; default 0.0): AdamW weight decay
  checkpoint_every (integer >= 0; default 0): steps between checkpoints; 0 = none
  log_every (integer >= 1; default 1): steps between metric events
  gradient_checkpointing (bool; default false): recompute activations in the backward pass
  device ("cpu" | "cuda" | "auto"; default "auto"): auto: cuda when the worker has one
  precision ("auto" | "bf16" | "fp32"; default "auto"): auto: bf16 on a CUDA GPU that supports it, else fp32
  threads (integer >= 1; default unchanged): torch CPU threads
  eval_fraction (number >= 0, <= 0.5; default 0.1): rows held out of training (seeded by `seed`, at most
      eval_max_rows); their loss is metric eval_loss every eval_every steps and at the end; 0 = no held-out rows
  eval_max_rows (integer >= 1; default 256): at most this many held-out rows
  eval_every (integer >= 1; default max_steps // 4, else each epoch): steps between evaluations of the held-out
      rows
  chat_template ("auto" | "chatml" | "llm-jp"; default "auto"): auto: the tokenizer's own template when it marks
      the assistant's text with {% generation %} (as an earlier sft/dpo stage's does), else ChatML
      (<|im_start|>/<|im_end|>, added to the vocabulary when missing); "chatml"; "llm-jp" (llm-jp-3's
      instruction format: "### 指示:" / "### 応答:", a turn ends with EOS, no new tokens). With LoRA the ChatML
      markers' embedding rows are trained too (peft trainable_token_indices; an untied LM head is trained
      whole). The tokenizer is saved with the template and a chat_format.json, so the eval stages prompt in the
      same format
(end of params)
Outputs: model/ (merged when LoRA, or base.json + base/ when not merged — base/ is a copy of a base that came
from a needed stage), adapter/ (LoRA, with the tokenizer), tensorboard/. Result: final_loss, first_loss, steps, first_eval_loss, final_eval_loss,
eval_rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hf_train import (
    TrainParams,
    check_messages,
    check_qlora,
    data_files,
    device_for,
    eval_kwargs,
    events_callback,
    final_evaluation,
    is_peft,
    load_model_and_tokenizer,
    load_rows,
    peft_config_for,
    run_training,
    save_final,
    split_rows,
    training_args_kwargs,
)
from .protocol import InvalidStageInput, StageContext, StopFlag, param, run_stage


@dataclass
class SftParams(TrainParams):
    """The `with:` params of an sft stage: the shared training params (hf_train.TrainParams)."""

    lr: float = param(2e-5, min=0, help="peak learning rate")


PARAMS = SftParams


def to_messages(where: str, row: dict) -> list[dict]:
    if "messages" in row:
        msgs = check_messages(where, row["messages"])
    elif "instruction" in row and "output" in row:
        if not isinstance(row["instruction"], str) or not isinstance(row["output"], str):
            raise InvalidStageInput(f"{where}: fields 'instruction' and 'output' must be strings")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise InvalidStageInput(f"{where}: field 'input' must be a string")
        user = row["instruction"] + ("\n\n" + extra if extra else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    else:
        raise InvalidStageInput(
            f"{where}: expected field 'messages' or fields 'instruction'/'output' (have {', '.join(sorted(row))})"
        )
    if not any(m["role"] == "assistant" for m in msgs):
        raise InvalidStageInput(f"{where}: no assistant message to learn from")
    return msgs


def build_trainer(ctx: StageContext, stop: StopFlag | None = None):
    """The configured SFTTrainer (no training yet) and its events callback; tests inspect it."""
    a = ctx.typed_params(SftParams)
    stop = stop or StopFlag()
    rows, held_out = split_rows(
        ctx, [{"messages": to_messages(w, r)} for w, r in load_rows(data_files(ctx, a, "chat.jsonl"))]
    )
    device = device_for(ctx)
    check_qlora(ctx, device)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list(rows)
    model, tok, source = load_model_and_tokenizer(ctx, device)
    peft_cfg = peft_config_for(ctx, model, tok)
    lora = peft_cfg is not None
    if lora and is_peft(model):  # continuing an earlier stage's adapter
        peft_cfg = None
    args = SFTConfig(
        **training_args_kwargs(ctx, a, device),
        **eval_kwargs(a, bool(held_out)),
        max_length=a.max_length,
        assistant_only_loss=True,
        packing=False,
        dataset_num_proc=None,
    )
    cb = events_callback(ctx, stop)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        eval_dataset=Dataset.from_list(held_out) if held_out else None,
        processing_class=tok,
        peft_config=peft_cfg,
        callbacks=[cb],
    )
    trainer.tanren_source = source
    return trainer, cb, tok, lora


def main(ctx: StageContext) -> None:
    stop = StopFlag().install()
    trainer, cb, tok, lora = build_trainer(ctx, stop)
    run_training(ctx, trainer, cb, stop)
    evals = []
    if trainer.eval_dataset is not None:
        final_evaluation(trainer)
        evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    out = save_final(ctx, trainer, tok, lora, trainer.tanren_source)
    if (out / "model.safetensors").exists():
        ctx.artifact("model/model.safetensors", "fine-tuned model")
    if lora:
        ctx.artifact("adapter/adapter_config.json", "LoRA adapter")
    hist = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    ctx.result(
        {
            "final_loss": hist[-1] if hist else None,
            "first_loss": hist[0] if hist else None,
            "steps": trainer.state.global_step,
            "lora": lora,
            **(
                {"first_eval_loss": evals[0], "final_eval_loss": evals[-1], "eval_rows": len(trainer.eval_dataset)}
                if evals
                else {}
            ),
        }
    )


if __name__ == "__main__":
    run_stage(main)

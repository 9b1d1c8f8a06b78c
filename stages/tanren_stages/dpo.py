"""Stage `dpo`: direct preference optimisation with TRL's DPOTrainer.

params (generated from DpoParams; `python -m tanren_stages.protocol` rewrites this block):
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
  lr (number >= 0; default 5e-06): peak learning rate
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
  beta (number >= 0; default 0.1): DPO's KL weight
  max_prompt_length (integer >= 1; default 512): at most this many prompt tokens (TRL max_prompt_length)
  loss_type (string; default "sigmoid"): a TRL DPO loss_type
  eval_on_train (bool; default false): with eval_fraction 0: measure on the training pairs instead, reported
      with eval_split "train"
(end of params)
data rows: {"prompt": string | [messages], "chosen": string | [messages], "rejected": string | [messages]}.
Reference model: the policy with its adapter disabled; when the input is an unmerged sft adapter (model/base.json,
e.g. after QLoRA SFT), that adapter is trained further and a frozen copy of it is the reference (TRL ref_adapter_name).
Outputs: as `sft`.
Metrics: loss, reward_accuracy, reward_margin, reward_chosen, reward_rejected.
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
class DpoParams(TrainParams):
    """The `with:` params of a dpo stage: the shared training params (hf_train.TrainParams) and DPO's own."""

    lr: float = param(5e-6, min=0, help="peak learning rate")
    beta: float = param(0.1, min=0, help="DPO's KL weight")
    max_prompt_length: int = param(512, min=1, help="at most this many prompt tokens (TRL max_prompt_length)")
    loss_type: str = param("sigmoid", help="a TRL DPO loss_type")
    eval_on_train: bool = param(
        False,
        help='with eval_fraction 0: measure on the training pairs instead, reported with eval_split "train"',
    )


PARAMS = DpoParams

RENAMES = {
    "rewards/accuracies": "reward_accuracy",
    "rewards/margins": "reward_margin",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "eval_rewards/accuracies": "eval_reward_accuracy",
    "eval_rewards/margins": "eval_reward_margin",
}


def to_pair(where: str, row: dict) -> dict:
    for k in ("prompt", "chosen", "rejected"):
        if k not in row:
            raise InvalidStageInput(f"{where}: field '{k}' is missing")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    else:
        prompt = check_messages(where + " prompt", prompt)

    def answer(k):
        v = row[k]
        if isinstance(v, str):
            return [{"role": "assistant", "content": v}]
        msgs = check_messages(f"{where} {k}", v)
        return msgs

    return {"prompt": prompt, "chosen": answer("chosen"), "rejected": answer("rejected")}


def build_trainer(ctx: StageContext, stop: StopFlag | None = None):
    a = ctx.typed_params(DpoParams)
    stop = stop or StopFlag()
    rows, held_out = split_rows(ctx, [to_pair(w, r) for w, r in load_rows(data_files(ctx, a, "pairs.jsonl"))])
    eval_split = "held-out" if held_out else "train" if a.eval_on_train else None
    device = device_for(ctx)
    check_qlora(ctx, device)
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    ds = Dataset.from_list(rows)
    eval_ds = Dataset.from_list(held_out) if held_out else ds if eval_split == "train" else None
    model, tok, source = load_model_and_tokenizer(ctx, device, reference_adapter=True)
    peft_cfg = peft_config_for(ctx, model, tok)
    lora = peft_cfg is not None
    adapters: dict = {}
    if lora and is_peft(model):  # continuing an earlier stage's adapter; its frozen copy is the reference
        peft_cfg = None
        adapters = dict(model_adapter_name="default", ref_adapter_name="reference")
    kw = training_args_kwargs(ctx, a, device)
    args = DPOConfig(
        **adapters,
        **kw,
        **eval_kwargs(a, eval_split == "held-out"),
        beta=a.beta,
        max_length=a.max_length,
        max_prompt_length=a.max_prompt_length,
        loss_type=a.loss_type,
    )
    cb = events_callback(ctx, stop, RENAMES)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        peft_config=peft_cfg,
        callbacks=[cb],
    )
    trainer.tanren_source = source
    trainer.tanren_eval_split = eval_split
    return trainer, cb, tok, lora


def main(ctx: StageContext) -> None:
    stop = StopFlag().install()
    trainer, cb, tok, lora = build_trainer(ctx, stop)
    run_training(ctx, trainer, cb, stop)
    result = {"steps": trainer.state.global_step, "lora": lora}
    hist = [h for h in trainer.state.log_history if "loss" in h]
    if hist:
        result.update(
            final_loss=hist[-1]["loss"],
            reward_accuracy=hist[-1].get("rewards/accuracies"),
            reward_margin=hist[-1].get("rewards/margins"),
        )
    if trainer.eval_dataset is not None:
        ev = final_evaluation(trainer)
        result.update(
            eval_reward_accuracy=ev.get("eval_rewards/accuracies"),
            eval_reward_margin=ev.get("eval_rewards/margins"),
            eval_loss=ev.get("eval_loss"),
            eval_split=trainer.tanren_eval_split,
            eval_rows=len(trainer.eval_dataset),
        )
    out = save_final(ctx, trainer, tok, lora, trainer.tanren_source)
    if (out / "model.safetensors").exists():
        ctx.artifact("model/model.safetensors", "DPO-tuned model")
    if lora:
        ctx.artifact("adapter/adapter_config.json", "LoRA adapter")
    ctx.result(result)


if __name__ == "__main__":
    run_stage(main)

"""Stage `dpo`: direct preference optimisation with TRL's DPOTrainer.

params (defaults): as `sft` (model/input, data/data_input, lora, qlora, merge_adapter, max_steps, lr 5e-6, micro_batch_size,
  gradient_accumulation_steps, max_length 1024, seed, checkpoint_every, log_every) plus
  chat_template (as sft; "auto" keeps the template an sft stage saved), beta 0.1, max_prompt_length 512, loss_type "sigmoid",
  eval_fraction 0.1 (pairs held out of training, seeded by `seed`, at most eval_max_rows 256: their loss, reward
  accuracy and margin are metrics eval_loss / eval_reward_accuracy / eval_reward_margin every eval_every steps,
  default max_steps // 4, and at the end, and in the result), eval_on_train false (with eval_fraction 0: measure
  on the training pairs instead, reported with eval_split "train").
data rows: {"prompt": string | [messages], "chosen": string | [messages], "rejected": string | [messages]}.
Reference model: the policy with its adapter disabled; when the input is an unmerged sft adapter (model/base.json,
e.g. after QLoRA SFT), that adapter is trained further and a frozen copy of it is the reference (TRL ref_adapter_name).
Outputs: as `sft`.
Metrics: loss, reward_accuracy, reward_margin, reward_chosen, reward_rejected.
"""

from __future__ import annotations

from .hf_train import (
    COMMON_KEYS,
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
from .protocol import InvalidStageInput, StageContext, StopFlag, run_stage

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
    p = ctx.params
    p.reject_unknown(COMMON_KEYS | {"beta", "max_prompt_length", "loss_type", "eval_on_train"})
    stop = stop or StopFlag()
    rows, held_out = split_rows(ctx, [to_pair(w, r) for w, r in load_rows(data_files(ctx, "pairs.jsonl"))])
    eval_split = "held-out" if held_out else "train" if p.bool("eval_on_train", False) else None
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
    kw = training_args_kwargs(ctx, device, 5e-6)
    args = DPOConfig(
        **adapters,
        **kw,
        **eval_kwargs(ctx, eval_split == "held-out"),
        beta=p.float("beta", 0.1, min=0),
        max_length=p.int("max_length", 1024, min=8),
        max_prompt_length=p.int("max_prompt_length", 512, min=1),
        loss_type=p.str("loss_type", "sigmoid"),
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

"""Stage `dpo`: direct preference optimisation with TRL's DPOTrainer.

params (defaults): as `sft` (model/input, data/data_input, lora, qlora, merge_adapter, max_steps, lr 5e-6, micro_batch_size,
  gradient_accumulation_steps, max_length 1024, seed, checkpoint_every, log_every) plus
  beta 0.1, max_prompt_length 512, loss_type "sigmoid", eval_on_train true (reward accuracy on the
  training pairs after training, reported in the result).
data rows: {"prompt": string | [messages], "chosen": string | [messages], "rejected": string | [messages]}.
Reference model: the policy with its adapter disabled; when the input is an unmerged sft adapter (model/base.json,
e.g. after QLoRA SFT), that adapter is trained further and a frozen copy of it is the reference (TRL ref_adapter_name).
Outputs: as `sft`.
Metrics: loss, reward_accuracy, reward_margin, reward_chosen, reward_rejected.
"""
from __future__ import annotations

from .hf_train import (COMMON_KEYS, check_messages, check_qlora, data_files, device_for, events_callback, is_peft, load_model_and_tokenizer,
                       load_rows, lora_config, run_training, save_final, training_args_kwargs)
from .protocol import InvalidStageInput, StageContext, StopFlag, run_stage

RENAMES = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin", "rewards/chosen": "reward_chosen",
           "rewards/rejected": "reward_rejected", "eval_rewards/accuracies": "eval_reward_accuracy",
           "eval_rewards/margins": "eval_reward_margin"}


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
    rows = [to_pair(w, r) for w, r in load_rows(data_files(ctx, "pairs.jsonl"))]
    device = device_for(ctx)
    check_qlora(ctx, device)
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    ds = Dataset.from_list(rows)
    model, tok, source = load_model_and_tokenizer(ctx, device, reference_adapter=True)
    peft_cfg = lora_config(ctx)
    lora = peft_cfg is not None
    adapters: dict = {}
    if lora and is_peft(model):  # continuing an earlier stage's adapter; its frozen copy is the reference
        peft_cfg = None
        adapters = dict(model_adapter_name="default", ref_adapter_name="reference")
    kw = training_args_kwargs(ctx, device, 5e-6)
    args = DPOConfig(**adapters, **kw, beta=p.float("beta", 0.1, min=0), max_length=p.int("max_length", 1024, min=8),
                     max_prompt_length=p.int("max_prompt_length", 512, min=1), loss_type=p.str("loss_type", "sigmoid"),
                     per_device_eval_batch_size=kw["per_device_train_batch_size"])
    cb = events_callback(ctx, stop, RENAMES)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=ds, eval_dataset=ds if p.bool("eval_on_train", True) else None,
                         processing_class=tok, peft_config=peft_cfg, callbacks=[cb])
    trainer.tanren_source = source
    return trainer, cb, tok, lora


def main(ctx: StageContext) -> None:
    stop = StopFlag().install()
    trainer, cb, tok, lora = build_trainer(ctx, stop)
    run_training(ctx, trainer, cb, stop)
    result = {"steps": trainer.state.global_step, "lora": lora}
    hist = [h for h in trainer.state.log_history if "loss" in h]
    if hist:
        result.update(final_loss=hist[-1]["loss"], reward_accuracy=hist[-1].get("rewards/accuracies"), reward_margin=hist[-1].get("rewards/margins"))
    if trainer.eval_dataset is not None:
        ev = trainer.evaluate()
        result.update(eval_reward_accuracy=ev.get("eval_rewards/accuracies"), eval_reward_margin=ev.get("eval_rewards/margins"), eval_loss=ev.get("eval_loss"))
    out = save_final(ctx, trainer, tok, lora, trainer.tanren_source)
    if (out / "model.safetensors").exists():
        ctx.artifact("model/model.safetensors", "DPO-tuned model")
    if lora:
        ctx.artifact("adapter/adapter_config.json", "LoRA adapter")
    ctx.result(result)


if __name__ == "__main__":
    run_stage(main)

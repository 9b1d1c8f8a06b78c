import json

import pytest
import torch

from conftest import ok, run_stage, stage_env
from tanren_stages.protocol import StageContext


def make_ctx(tmp_path, params, inputs):
    env = stage_env(tmp_path, params, inputs)
    return StageContext.from_env(env)


def test_sft_masks_non_assistant_tokens(tmp_path, pretrained):
    rows = [{"messages": [{"role": "system", "content": "システム"}, {"role": "user", "content": "東京はどこ？"},
                          {"role": "assistant", "content": "関東地方です。"}, {"role": "user", "content": "大阪は？"},
                          {"role": "assistant", "content": "近畿地方です。"}]},
            {"instruction": "地名を答えて", "input": "京都", "output": "近畿地方"}]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    from tanren_stages.sft import build_trainer

    ctx = make_ctx(tmp_path / "sft", {"data": str(data), "max_steps": 1, "max_length": 256}, {"pretrain": pretrained.output})
    trainer, _, tok, _ = build_trainer(ctx)
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    for i, expect in enumerate([["関東地方です。<|im_end|>", "近畿地方です。<|im_end|>"], ["近畿地方<|im_end|>"]]):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        kept = labels != -100
        assert kept.any()
        # learned spans = assistant contents; everything else (system, user, role headers, padding) is -100
        spans, cur = [], []
        for t, k in zip(ids.tolist(), kept.tolist()):
            if k:
                cur.append(t)
            elif cur:
                spans.append(cur)
                cur = []
        if cur:
            spans.append(cur)
        assert [tok.decode(s) for s in spans] == expect
        assert torch.equal(labels[kept], ids[kept])


def test_sft_stage_end_to_end(tmp_path, pretrained):
    run = ok(run_stage("sft", tmp_path / "sft", {"data": "data/sft/chat.jsonl", "max_steps": 4, "lr": 1e-3, "max_length": 128,
                                                  "lora": {"r": 4, "alpha": 8}}, {"pretrain": pretrained.output}))
    assert run.result["steps"] == 4 and run.result["lora"] is True and run.result["final_loss"] > 0
    assert run.metrics("loss") and "lr" in run.of("metric")[0]["values"]
    assert (run.output / "model" / "model.safetensors").exists() and (run.output / "adapter").is_dir()


def test_sft_qlora_on_cpu_is_config_error(tmp_path, pretrained):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run = run_stage("sft", tmp_path / "q", {"data": "data/sft/chat.jsonl", "qlora": True, "max_steps": 1}, {"pretrain": pretrained.output})
    assert run.rc == 3 and "4-bit" in run.of("error")[-1]["message"]


def test_sft_bad_rows_name_the_line(tmp_path, pretrained):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"text": "x"}\n')
    run = run_stage("sft", tmp_path / "b", {"data": str(bad), "max_steps": 1}, {"pretrain": pretrained.output})
    assert run.rc == 2 and "bad.jsonl:2" in run.of("error")[-1]["message"]


def test_dpo_reward_accuracy_above_chance(tmp_path, pretrained):
    run = ok(run_stage("dpo", tmp_path / "dpo", {"data": "data/dpo/pairs.jsonl", "max_steps": 8, "lr": 5e-3, "max_length": 96,
                                                  "micro_batch_size": 8, "lora": True, "beta": 0.1}, {"pretrain": pretrained.output}))
    r = run.result
    assert r["eval_reward_accuracy"] > 0.75 and r["eval_reward_margin"] > 0, r
    assert any("reward_accuracy" in e["values"] for e in run.of("metric"))
    assert (run.output / "model" / "config.json").exists()

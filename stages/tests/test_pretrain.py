import json

import pytest
from conftest import TINY_MODEL, ok, run_stage
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_loss_falls_and_outputs(pretrained):
    loss = pretrained.metrics("loss")
    assert len(loss) == 30
    first = sum(loss[s] for s in range(1, 4)) / 3
    last = sum(loss[s] for s in range(28, 31)) / 3
    assert last < first - 1.0, (first, last)
    r = pretrained.result
    assert r["first_loss"] == loss[1] and r["final_loss"] == loss[30] and r["steps"] == 30
    assert all(
        "lr" in e["values"] and "tokens_per_s" in e["values"] for e in pretrained.of("metric") if "loss" in e["values"]
    )
    assert list((pretrained.output / "tensorboard").glob("events.out.tfevents.*"))
    model = AutoModelForCausalLM.from_pretrained(str(pretrained.output / "model"))
    tok = AutoTokenizer.from_pretrained(str(pretrained.output / "model"))
    assert model.config.hidden_size == 64 and model.config.eos_token_id == tok.eos_token_id
    assert pretrained.of("checkpoint")[-1]["path"] == "step-000030"


def test_validation_loss_on_held_out_documents(pretrained, tokenized):
    """valid_fraction 0.01 (default): the last documents are held out; eval_loss every max_steps // 5 steps and at the end,
    finite, falling as the training loss falls, and in the result."""
    import math

    import numpy as np

    from tanren_stages.indexed_dataset import IndexedDataset
    from tanren_stages.pretrain import split_held_out

    ev = pretrained.metrics("eval_loss")
    assert sorted(ev) == [6, 12, 18, 24, 30], ev
    assert all(math.isfinite(v) for v in ev.values())
    loss = pretrained.metrics("loss")
    assert loss[30] < loss[1] - 1.0
    assert ev[30] < ev[6] - 0.5, ev
    r = pretrained.result
    assert r["first_eval_loss"] == ev[6] and r["final_eval_loss"] == ev[30] and r["eval_tokens"] > 0
    ds = IndexedDataset(tokenized.output / "text_document")
    at = split_held_out(ds, 0.01)
    starts = np.concatenate([[0], np.cumsum(ds.sequence_lengths.astype(np.int64))])
    assert at in set(starts.tolist()) and 0 < r["held_out_tokens"] == int(
        ds.total_tokens
    ) - at <= 0.01 * ds.total_tokens + max(ds.sequence_lengths)
    assert at == split_held_out(ds, 0.01) and split_held_out(ds, 0) == ds.total_tokens
    assert "held out" in pretrained.stderr


def test_no_held_out_set(tmp_path, tokenized):
    run = ok(
        run_stage(
            "pretrain",
            tmp_path / "nv",
            {**TINY_MODEL, "max_steps": 2, "valid_fraction": 0},
            {"tokenize": tokenized.output},
        )
    )
    assert not run.metrics("eval_loss") and "final_eval_loss" not in run.result


def test_resume_reproduces_uninterrupted_losses(tmp_path, tokenized):
    params = {**TINY_MODEL, "max_steps": 16, "checkpoint_every": 8}
    full = ok(run_stage("pretrain", tmp_path / "full", params, {"tokenize": tokenized.output}))
    assert [c["path"] for c in full.of("checkpoint")] == ["step-000008", "step-000016"]
    resumed = ok(
        run_stage(
            "pretrain",
            tmp_path / "resumed",
            params,
            {"tokenize": tokenized.output},
            resume_from=full.checkpoints / "step-000008",
        )
    )
    a, b = full.metrics("loss"), resumed.metrics("loss")
    assert sorted(b) == list(range(9, 17))
    for s in b:
        assert abs(a[s] - b[s]) <= 1e-6, (s, a[s], b[s])
    assert resumed.result["first_loss"] == full.result["first_loss"]


def test_sigterm_saves_checkpoint_and_resume_finishes(tmp_path, tokenized):
    params = {**TINY_MODEL, "max_steps": 400}
    run = run_stage("pretrain", tmp_path / "term", params, {"tokenize": tokenized.output}, sigterm_after_event="metric")
    assert run.rc == 143, run.stderr[-2000:]
    ck = run.of("checkpoint")
    assert len(ck) == 1 and (run.checkpoints / ck[0]["path"] / "model.pt").exists()
    state = json.loads((run.checkpoints / ck[0]["path"] / "trainer_state.json").read_text())
    assert state["step"] == ck[0]["step"] and state["consumed_samples"] == 4 * state["step"]
    params["max_steps"] = state["step"] + 2
    done = ok(
        run_stage(
            "pretrain",
            tmp_path / "resume",
            params,
            {"tokenize": tokenized.output},
            resume_from=run.checkpoints / ck[0]["path"],
        )
    )
    assert done.result["steps"] == state["step"] + 2


def test_injected_oom_exits_4(tmp_path, tokenized):
    run = run_stage(
        "pretrain",
        tmp_path / "oom",
        {**TINY_MODEL, "micro_batch_size": 8, "max_steps": 2},
        {"tokenize": tokenized.output},
        extra_env={"TANREN_TEST_INJECT_OOM_ABOVE_MICRO_BATCH": "4"},
    )
    assert run.rc == 4 and run.of("error")[-1]["type"] == "OutOfMemory"
    halved = ok(
        run_stage(
            "pretrain",
            tmp_path / "halved",
            {**TINY_MODEL, "micro_batch_size": 4, "gradient_accumulation_steps": 2, "max_steps": 2},
            {"tokenize": tokenized.output},
            extra_env={"TANREN_TEST_INJECT_OOM_ABOVE_MICRO_BATCH": "4"},
        )
    )
    assert halved.result["tokens"] == 2 * 4 * 2 * 64


@pytest.mark.parametrize("field,value", [("hidden_size", 30), ("micro_batch_size", 0)])
def test_bad_params(tmp_path, tokenized, field, value):
    run = run_stage(
        "pretrain", tmp_path / "bad", {**TINY_MODEL, field: value, "max_steps": 1}, {"tokenize": tokenized.output}
    )
    assert run.rc == 2 and field in run.of("error")[-1]["message"]


def test_stop_at_step_pauses_on_the_full_schedule_and_resumes_exactly(tmp_path, tokenized):
    params = {**TINY_MODEL, "max_steps": 12, "warmup_steps": 3}
    full = ok(run_stage("pretrain", tmp_path / "full", params, {"tokenize": tokenized.output}))
    rung = ok(run_stage("pretrain", tmp_path / "rung", {**params, "stop_at_step": 6}, {"tokenize": tokenized.output}))
    assert sorted(rung.metrics("loss")) == list(range(1, 7))
    assert [c["path"] for c in rung.of("checkpoint")] == ["step-000006"]
    assert rung.result["stopped_at_step"] == 6 and rung.result["max_steps"] == 12
    assert not (rung.output / "model").exists(), "a paused trial publishes no model"
    # Same learning-rate schedule as the uninterrupted run: the rung is a prefix of it.
    a_lr = {e["step"]: e["values"]["lr"] for e in full.of("metric") if "lr" in e["values"]}
    b_lr = {e["step"]: e["values"]["lr"] for e in rung.of("metric") if "lr" in e["values"]}
    assert all(a_lr[s] == b_lr[s] for s in b_lr)
    promoted = ok(
        run_stage(
            "pretrain",
            tmp_path / "promoted",
            params,
            {"tokenize": tokenized.output},
            resume_from=rung.checkpoints / "step-000006",
        )
    )
    a, b = full.metrics("loss"), promoted.metrics("loss")
    assert sorted(b) == list(range(7, 13)), "the step count continues from the rung checkpoint"
    for s in b:
        assert abs(a[s] - b[s]) <= 1e-6, (s, a[s], b[s])
    assert promoted.result["steps"] == 12 and (promoted.output / "model" / "model.safetensors").exists()
    # A rung run again after its trial went further (a reset): no training, the loss it had at that rung.
    again = ok(
        run_stage(
            "pretrain",
            tmp_path / "again",
            {**params, "stop_at_step": 6},
            {"tokenize": tokenized.output},
            resume_from=promoted.checkpoints / "step-000012",
        )
    )
    assert again.metrics("loss") == {6: rung.metrics("loss")[6]}
    assert (
        again.result["stopped_at_step"] == 6 and again.result["replayed_from_step"] == 12 and not again.of("checkpoint")
    )
    # Resumed exactly at its rung (the worker died after the checkpoint): the same loss, no training.
    same = ok(
        run_stage(
            "pretrain",
            tmp_path / "same",
            {**params, "stop_at_step": 6},
            {"tokenize": tokenized.output},
            resume_from=rung.checkpoints / "step-000006",
        )
    )
    assert same.metrics("loss") == {6: rung.metrics("loss")[6]}


def test_world_size_above_one_is_a_config_error(tmp_path):
    # torchrun (a stage with gpus: 2) sets WORLD_SIZE; data-parallel pretraining is not implemented yet.
    run = run_stage(
        "pretrain", tmp_path / "ddp", {**TINY_MODEL, "max_steps": 1}, extra_env={"WORLD_SIZE": "2", "RANK": "0"}
    )
    assert run.rc == 3 and run.of("error")[-1]["type"] == "StageConfigError"
    assert "gpus: 2" in run.of("error")[-1]["message"]

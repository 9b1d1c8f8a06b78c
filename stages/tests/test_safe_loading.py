"""Checkpoints and models are loaded weights-only: a pickle whose __reduce__ would run code is refused, named,
before it runs; resuming from honest checkpoints (ours and the Trainer's) still works."""

import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, STAGES, TINY_MODEL, ok, run_stage


class Payload:
    """What an attacker would put in a checkpoint: unpickling it runs code (here: writes a marker file)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def write_malicious(path: Path, marker: Path, *, legacy: bool = False) -> None:
    """A checkpoint file with real tensors and the payload next to them (torch's zip format, or a bare pickle)."""
    if legacy:
        path.write_bytes(pickle.dumps({"weight": [0.0, 1.0], "x": Payload(marker)}, protocol=2))
    else:
        torch.save({"weight": torch.zeros(2), "x": Payload(marker)}, path)


@pytest.fixture
def common(monkeypatch):
    """tanren_stages.common, with the TORCH_FORCE_* variables it sets put back afterwards."""
    for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        monkeypatch.setenv(k, os.environ.get(k, "0"))
    from tanren_stages import common as mod

    return mod


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "bare-pickle"])
def test_safe_load_refuses_malicious_reduce(tmp_path, common, monkeypatch, legacy):
    from tanren_stages.protocol import InvalidStageInput

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    write_malicious(evil, marker, legacy=legacy)
    # The payload is real: an unsafe load runs it.
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    if legacy:
        pickle.loads(evil.read_bytes())
    else:
        torch.load(evil, weights_only=False)
    assert marker.read_text() == "pwned"
    marker.unlink()

    with pytest.raises(InvalidStageInput) as e:
        common.load_weights(evil, what="model checkpoint")
    assert (
        "model.pt: refused to load this model checkpoint" in e.value.message
        and "Unsupported global: GLOBAL exec" in e.value.message
    )
    with pytest.raises(InvalidStageInput):
        common.load_weights(evil, allow_numpy=True)
    assert not marker.exists()


def test_stage_processes_force_weights_only_for_every_torch_load(tmp_path):
    """Library code that asks for weights_only=False (or a worker env with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1) is
    still weights-only once a stage module imported tanren_stages.common."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "rng_state.pth"
    write_malicious(evil, marker)
    code = (
        "import sys, torch, pickle, tanren_stages.common\n"
        "try:\n    torch.load(sys.argv[1], weights_only=False)\nexcept pickle.UnpicklingError as e:\n"
        "    print('refused', 'Weights only load failed' in str(e))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(STAGES), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    env.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
    r = subprocess.run(
        [sys.executable, "-c", code, str(evil)], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.stdout.strip() == "refused True", r.stderr[-2000:]
    assert not marker.exists()


def test_load_weights_reads_honest_files_and_names_broken_ones(tmp_path, common):
    from tanren_stages.protocol import InvalidStageInput

    sd = {"w": torch.arange(4.0), "meta": {"step": 3, "betas": (0.9, 0.95), "name": "x", "none": None}}
    torch.save(sd, tmp_path / "ok.pt")
    got = common.load_weights(tmp_path / "ok.pt")
    assert torch.equal(got["w"], sd["w"]) and got["meta"] == sd["meta"]
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:100])
    with pytest.raises(InvalidStageInput, match="trunc.pt"):
        common.load_weights(tmp_path / "trunc.pt")


def test_model_dir_with_malicious_pytorch_model_bin_is_refused(tmp_path, common):
    """A model directory without safetensors (pytorch_model.bin) is loaded weights-only; a payload in it is refused
    and named, though transformers re-raises the refusal as an OSError."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tanren_stages.protocol import InvalidStageInput

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp_path / "model"), safe_serialization=False)
    weights = tmp_path / "model" / "pytorch_model.bin"
    honest = common.load_causal_lm(common.ModelSource(str(tmp_path / "model")), "test")
    assert honest.config.hidden_size == 16
    marker = tmp_path / "pwned"
    sd = torch.load(weights, weights_only=True)
    sd["x"] = Payload(marker)
    torch.save(sd, weights)
    with pytest.raises(InvalidStageInput) as e:
        common.load_causal_lm(common.ModelSource(str(tmp_path / "model")), "test: field 'model'")
    assert (
        "refused to load the weights of model" in e.value.message
        and "Unsupported global: GLOBAL exec" in e.value.message
    )
    assert not marker.exists()


def test_rng_state_round_trips_weights_only(tmp_path, common):
    from tanren_stages.pretrain import rng_state, set_rng_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expect = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expect


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenized) -> Path:
    """An honest pretrain checkpoint at step 2 (of 4)."""
    tmp = tmp_path_factory.mktemp("safe-ckpt")
    run = ok(
        run_stage(
            "pretrain",
            tmp / "run",
            {**TINY_MODEL, "max_steps": 4, "checkpoint_every": 2},
            {"tokenize": tokenized.output},
        )
    )
    return run.checkpoints / "step-000002"


@pytest.mark.parametrize("name", ["model.pt", "rng.pt"])
def test_pretrain_resume_refuses_malicious_checkpoint(tmp_path, tokenized, checkpoint, name):
    marker = tmp_path / "pwned"
    bad = tmp_path / "ckpt"
    shutil.copytree(checkpoint, bad)
    write_malicious(bad / name, marker)
    run = run_stage(
        "pretrain", tmp_path / "resume", {**TINY_MODEL, "max_steps": 4}, {"tokenize": tokenized.output}, resume_from=bad
    )
    assert run.rc == 2, run.stderr[-3000:]
    err = run.of("error")[-1]
    assert err["type"] == "InvalidStageInput" and f"{name}: refused to load" in err["message"], err
    assert not marker.exists()
    assert not run.of("metric"), "no training step after a refused checkpoint"


def test_pretrain_resumes_from_checkpoint_with_old_rng_format(tmp_path, tokenized, checkpoint):
    """rng.pt of checkpoints written before the weights-only format (numpy arrays in tuples) still resumes."""
    old = tmp_path / "ckpt"
    shutil.copytree(checkpoint, old)
    new = torch.load(old / "rng.pt", weights_only=True)
    assert new["format"] == 2
    torch.save(
        {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}, old / "rng.pt"
    )
    run = ok(
        run_stage(
            "pretrain",
            tmp_path / "resume",
            {**TINY_MODEL, "max_steps": 4},
            {"tokenize": tokenized.output},
            resume_from=old,
        )
    )
    assert sorted(run.metrics("loss")) == [3, 4]


def test_sft_resume_works_and_refuses_malicious_rng_state(tmp_path, pretrained):
    """The Trainer's own checkpoints resume under forced weights-only (its RNG file holds numpy arrays); a payload in
    rng_state.pth — loaded without an explicit weights_only — is refused even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1."""
    params = {
        "data": "data/sft/chat.jsonl",
        "max_steps": 4,
        "checkpoint_every": 2,
        "lr": 1e-3,
        "max_length": 64,
        "micro_batch_size": 2,
        "threads": 1,
    }
    first = ok(run_stage("sft", tmp_path / "sft", params, {"pretrain": pretrained.output}))
    ck = first.checkpoints / "checkpoint-2"
    assert (ck / "rng_state.pth").is_file() and (ck / "optimizer.pt").is_file()
    resumed = ok(run_stage("sft", tmp_path / "resumed", params, {"pretrain": pretrained.output}, resume_from=ck))
    assert resumed.result["steps"] == 4

    marker = tmp_path / "pwned"
    bad = tmp_path / "bad-ckpt"
    shutil.copytree(ck, bad)
    write_malicious(bad / "rng_state.pth", marker)
    run = run_stage(
        "sft",
        tmp_path / "bad",
        params,
        {"pretrain": pretrained.output},
        resume_from=bad,
        extra_env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
    )
    assert run.rc == 2, run.stderr[-3000:]
    err = run.of("error")[-1]
    assert err["type"] == "InvalidStageInput" and "refused to load" in err["message"], err
    assert "Unsupported global: GLOBAL exec" in err["message"], err
    assert not marker.exists()

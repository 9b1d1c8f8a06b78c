"""Fixtures: run a stage as the worker would (child process, TANREN_* env), and a shared tiny pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from zygote_client import ZygoteProcess, close_shared, shared_zygote

ROOT = Path(__file__).resolve().parents[2]
STAGES = ROOT / "stages"
DATA = ROOT / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# TANREN_TEST_ZYGOTE=0 starts each stage with `python -m` instead of forking it from the zygote.
USE_ZYGOTE = os.environ.get("TANREN_TEST_ZYGOTE", "1") != "0"


@pytest.fixture(scope="session", autouse=True)
def _zygotes_stopped():
    """The zygotes started for the session end with it."""
    yield
    close_shared()


TINY_MODEL = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "seq_len": 64,
    "micro_batch_size": 4,
    "lr": 3e-3,
    "warmup_steps": 3,
    "threads": 1,
}


@dataclass
class StageRun:
    rc: int
    events: list[dict]
    stderr: str
    output: Path
    checkpoints: Path

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def result(self) -> dict:
        r = self.of("result")
        assert r, f"no result event (rc={self.rc}); stderr:\n{self.stderr[-3000:]}"
        return r[-1]["values"]

    def metrics(self, name: str) -> dict[int, float]:
        return {e["step"]: e["values"][name] for e in self.of("metric") if name in e["values"] and "step" in e}


def stage_env(
    tmp: Path,
    params: dict,
    inputs: dict[str, Path] | None = None,
    resume_from: Path | None = None,
    extra: dict | None = None,
) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "params.json").write_text(json.dumps(params))
    ins = tmp / "inputs"
    ins.mkdir(exist_ok=True)
    for name, path in (inputs or {}).items():
        link = ins / name
        if not link.exists():
            link.symlink_to(path)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(STAGES),
        TANREN_RUN_ID="test",
        TANREN_PIPELINE="test",
        TANREN_STAGE_ID=tmp.name,
        TANREN_ATTEMPT="1",
        TANREN_PARAMS=str(tmp / "params.json"),
        TANREN_INPUTS=str(ins),
        TANREN_OUTPUT=str(tmp / "out"),
        TANREN_CHECKPOINTS=str(tmp / "ckpt"),
        TANREN_EVENTS=str(tmp / "events.jsonl"),
        TANREN_DEVICE="cpu",
    )
    for name, path in (inputs or {}).items():
        env["TANREN_INPUT_" + "".join(c if c.isalnum() else "_" for c in name.upper())] = str(ins / name)
    if resume_from:
        env["TANREN_RESUME_FROM"] = str(resume_from)
    env.update(extra or {})
    (tmp / "out").mkdir(exist_ok=True)
    (tmp / "ckpt").mkdir(exist_ok=True)
    return env


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_stage(
    module: str,
    tmp: Path,
    params: dict,
    inputs: dict[str, Path] | None = None,
    *,
    resume_from: Path | None = None,
    extra_env: dict | None = None,
    timeout: float = 300,
    sigterm_after_event: str | None = None,
) -> StageRun:
    env = stage_env(tmp, params, inputs, resume_from, extra_env)
    proc: subprocess.Popen | ZygoteProcess
    if USE_ZYGOTE:
        # As a worker starts a built-in kind: forked from the pre-forked Python (tanren_stages.zygote).
        proc = shared_zygote(env).start(f"tanren_stages.{module}", [], ROOT, env)
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"tanren_stages.{module}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    if sigterm_after_event:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if any(e.get("event") == sigterm_after_event for e in read_events(tmp / "events.jsonl")):
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode is not None
    return StageRun(proc.returncode, read_events(tmp / "events.jsonl"), err, tmp / "out", tmp / "ckpt")


def ok(run: StageRun) -> StageRun:
    assert run.rc == 0, f"stage failed rc={run.rc}:\n{run.stderr[-4000:]}"
    return run


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="session")
def corpus(pipeline_dir) -> StageRun:
    return ok(run_stage("wiki40b_to_jsonl", pipeline_dir / "corpus", {"source": "data/wiki40b-ja"}))


@pytest.fixture(scope="session")
def tokenizer_run(pipeline_dir, corpus) -> StageRun:
    return ok(run_stage("train_tokenizer", pipeline_dir / "tokenizer", {"vocab_size": 1200}, {"corpus": corpus.output}))


@pytest.fixture(scope="session")
def tokenized(pipeline_dir, corpus, tokenizer_run) -> StageRun:
    return ok(
        run_stage(
            "tokenize",
            pipeline_dir / "tokenize",
            {"input": "corpus", "workers": 2},
            {"corpus": corpus.output, "tokenizer": tokenizer_run.output},
        )
    )


@pytest.fixture(scope="session")
def pretrained(pipeline_dir, tokenized) -> StageRun:
    return ok(
        run_stage(
            "pretrain",
            pipeline_dir / "pretrain",
            {**TINY_MODEL, "max_steps": 30, "log_every": 1},
            {"tokenize": tokenized.output},
        )
    )

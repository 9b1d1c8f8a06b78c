import json

import pytest
from conftest import ok, run_stage

from tanren_stages.protocol import EXIT_CODES, InvalidStageInput, Params, StageContext


def test_params_errors_name_the_field():
    p = Params({"vocab_size": "big", "lr": -1, "mode": "x"}, "stage 's' params")
    with pytest.raises(InvalidStageInput, match="'vocab_size' must be an integer"):
        p.int("vocab_size")
    with pytest.raises(InvalidStageInput, match="'lr' must be a number >= 0"):
        p.float("lr", min=0)
    with pytest.raises(InvalidStageInput, match="'mode' must be one of a, b"):
        p.str("mode", choices=["a", "b"])
    with pytest.raises(InvalidStageInput, match="'missing' is required"):
        p.str("missing", required=True)
    with pytest.raises(InvalidStageInput, match="unknown field"):
        p.reject_unknown({"vocab_size"})
    assert p.int("absent", 7) == 7


def test_events_are_json_lines(tmp_path):
    ev = tmp_path / "ev.jsonl"
    (tmp_path / "p.json").write_text("{}")
    ctx = StageContext.from_env(
        {"TANREN_OUTPUT": str(tmp_path / "o"), "TANREN_EVENTS": str(ev), "TANREN_PARAMS": str(tmp_path / "p.json")}
    )
    ctx.progress(3, 10)
    ctx.metric({"loss": 1.5}, step=3)
    ctx.checkpoint("step-000003", 3)
    ctx.artifact("a.txt")
    ctx.result({"x": float("nan")})
    lines = [json.loads(x) for x in ev.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["progress", "metric", "checkpoint", "artifact", "result"]
    assert lines[1] == {"event": "metric", "step": 3, "values": {"loss": 1.5}}
    assert lines[4]["values"]["x"] is None


def test_bad_params_exit_2_with_error_event(tmp_path):
    run = run_stage("preflight", tmp_path / "pf", {"require_gpu": "yes"})
    assert run.rc == EXIT_CODES["InvalidStageInput"] == 2
    err = run.of("error")[-1]
    assert err["type"] == "InvalidStageInput" and "require_gpu" in err["message"]
    assert run.events[-1]["event"] == "error"
    assert "InvalidStageInput" in run.stderr.strip().splitlines()[-1]


def test_preflight_report(tmp_path):
    run = ok(run_stage("preflight", tmp_path / "pf", {}))
    report = json.loads((run.output / "report.json").read_text())
    assert report["packages"]["torch"] and report["python"].startswith("3.11")
    assert "gcc" in report["compilers"] and report["disk_free_bytes"] > 0
    assert "bf16" in run.result


def test_preflight_require_gpu_without_gpu(tmp_path):
    # CUDA hidden from the stage, so this runs on GPU hosts too.
    run = run_stage("preflight", tmp_path / "pf", {"require_gpu": True}, extra_env={"CUDA_VISIBLE_DEVICES": ""})
    assert run.rc == 3
    assert run.of("error")[-1]["type"] == "StageConfigError"
    assert "CUDA GPU" in run.of("error")[-1]["message"]

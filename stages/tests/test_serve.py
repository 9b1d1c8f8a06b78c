"""tanren_stages.serve: request validation, and the OpenAI-compatible server over a tiny trained model."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import ROOT, STAGES

from tanren_stages.serve import RequestError, parse_chat_request


def test_parse_chat_request_defaults_and_limits():
    r = parse_chat_request(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "こん"}, {"type": "text", "text": "にちは"}]}
            ]
        },
        "m",
    )
    assert r == {
        "messages": [{"role": "user", "content": "こんにちは"}],
        "temperature": 0.0,
        "max_tokens": 256,
        "seed": 0,
    }
    assert (
        parse_chat_request(
            {
                "model": "m",
                "messages": [{"role": "system", "content": "x"}],
                "temperature": 0.7,
                "max_tokens": 5,
                "seed": 3,
            },
            "m",
        )["max_tokens"]
        == 5
    )
    for body, status, words in [
        ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "serves 'm'"),
        ({"messages": []}, 400, "non-empty"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "seed": "a"}, 400, "seed"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n = 1"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": True}, 400, "streaming"),
        ([1], 400, "JSON object"),
    ]:
        with pytest.raises(RequestError) as e:
            parse_chat_request(body, "m")
        assert e.value.status == status and words in e.value.message, (body, e.value.message)


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serves_a_trained_model(pretrained):
    env = {"PYTHONPATH": str(STAGES), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tanren_stages.serve",
            "--model",
            str(pretrained.output),
            "--port",
            "0",
            "--model-name",
            "tiny",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        hello = json.loads(proc.stdout.readline())
        assert hello["event"] == "listening" and hello["model"] == "tiny" and hello["port"] > 0
        base = f"http://127.0.0.1:{hello['port']}/v1"
        with urllib.request.urlopen(base + "/models", timeout=30) as r:
            assert [m["id"] for m in json.loads(r.read())["data"]] == ["tiny"]
        msgs = [{"role": "user", "content": "東京は何地方にありますか？"}]
        status, a = _post(
            base + "/chat/completions",
            {"model": "tiny", "messages": msgs, "temperature": 1.0, "seed": 5, "max_tokens": 6},
        )
        assert status == 200 and a["object"] == "chat.completion" and a["choices"][0]["message"]["role"] == "assistant"
        assert 1 <= a["usage"]["completion_tokens"] <= 6 and a["usage"]["prompt_tokens"] > 0
        _, b = _post(
            base + "/chat/completions",
            {"model": "tiny", "messages": msgs, "temperature": 1.0, "seed": 5, "max_tokens": 6},
        )
        assert b["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]  # same seed, same sample
        # a long prompt keeps 3/4 of the tiny context (64 positions), whatever max_tokens asks; the reply gets the rest
        _, c = _post(
            base + "/chat/completions",
            {"messages": [{"role": "user", "content": "東京の天気は晴れです。" * 50}], "max_tokens": 100000},
        )
        assert c["usage"]["prompt_tokens"] == 48 and 1 <= c["usage"]["completion_tokens"] <= 16, c["usage"]
        _, d = _post(base + "/chat/completions", {"messages": msgs, "max_tokens": 100000})
        assert d["usage"]["total_tokens"] <= 64
        status, err = _post(base + "/chat/completions", {"model": "gpt-4o", "messages": msgs})
        assert status == 404 and err["error"]["type"] == "model_not_found"
        status, err = _post(base + "/nope", {})
        assert status == 404
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_refuses_a_directory_without_a_model(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "tanren_stages.serve", "--model", str(tmp_path)],
        cwd=ROOT,
        env={"PYTHONPATH": str(STAGES), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "holds no model" in r.stderr

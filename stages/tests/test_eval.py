"""The eval stages as the worker runs them (child process, TANREN_* env) on the tiny pretrained model; the definitions
themselves have golden tests in test_eval_golden.py."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from conftest import DATA, ok, run_stage


def test_llm_jp_eval_stage(tmp_path, pretrained):
    run = ok(
        run_stage(
            "llm_jp_eval",
            tmp_path / "ev",
            {"datasets": "data/jaster", "max_samples": 3, "num_few_shots": 1},
            {"pretrain": pretrained.output},
        )
    )
    scores = json.loads((run.output / "scores.json").read_text())
    assert set(scores["datasets"]) == {"toy_regionqa", "toy_birthplace", "toy_places"}
    assert scores["llm_jp_eval_version"] == "1.4.1" and scores["split"] == "test" and scores["num_few_shots"] == 1
    bp = scores["datasets"]["toy_birthplace"]
    assert (
        set(bp["metrics"]) == {"char_f1", "exact_match", "bleu_ja"}
        and bp["metric"] == "char_f1"
        and bp["score"] == bp["metrics"]["char_f1"]
    )
    assert bp["category"] == "RC" and bp["samples"] == 3 and bp["few_shots"] == 1
    assert set(scores["categories"]) == {"MC", "RC", "FA"}
    assert scores["average"] == pytest.approx(sum(scores["categories"].values()) / 3)
    assert 0 <= run.result["average"] <= 1 and run.result["average"] == scores["average"]
    assert run.result["categories"] == scores["categories"] and run.result["llm_jp_eval_version"] == "1.4.1"
    lines = [
        json.loads(x) for x in (run.output / "outputs" / "toy_regionqa.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(lines) == 3 and {"input", "prompt", "raw", "prediction", "expected", "scores"} <= set(lines[0])
    train = json.loads((DATA / "jaster" / "train" / "toy_regionqa.json").read_text(encoding="utf-8"))
    shot = train["samples"][0]
    assert (
        f"### 入力:\n{shot['input']}\n\n### 応答:\n{shot['output']}" in lines[0]["prompt"]
    )  # the few-shot example is train[0]
    assert lines[0]["prompt"].endswith(f"### 入力:\n{lines[0]['input']}\n\n### 応答:\n")


def test_llm_jp_eval_too_few_train_samples(tmp_path):
    # train/ holds 4 samples per toy dataset: 5 few-shots is bad input (exit 2), found before any model is loaded
    run = run_stage(
        "llm_jp_eval", tmp_path / "ev", {"datasets": "data/jaster", "num_few_shots": 5, "model": str(tmp_path / "none")}
    )
    msg = run.of("error")[-1]["message"]
    assert run.rc == 2 and "train/toy_birthplace.json has 4 samples, fewer than num_few_shots=5" in msg, run.stderr[
        -2000:
    ]


def test_llm_jp_eval_old_flat_layout(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.json").write_text(
        json.dumps({"instruction": "i", "output_length": 1, "metrics": ["exact_match"], "samples": []})
    )
    run = run_stage("llm_jp_eval", tmp_path / "ev", {"datasets": str(tmp_path / "flat")})
    assert run.rc == 2 and "not a jaster directory" in run.of("error")[-1]["message"]


class FakeJudge(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append({"auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][-1]["content"]
        # a fixed rating per kind of prompt; reasoning questions get an unparsable answer
        if "りんご" in prompt:
            text = "I cannot decide."
        elif "Reference Answer" in prompt:
            text = "Compared with the reference... Rating: [[3]]"
        else:
            text = "Helpful enough. Rating: [[6]]"
        out = json.dumps(
            {
                "choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


@pytest.fixture()
def judge_server():
    FakeJudge.requests = []
    srv = HTTPServer(("127.0.0.1", 0), FakeJudge)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_mt_bench_with_local_judge(tmp_path, pretrained, judge_server):
    params = {
        "questions": "data/mt-bench/question.jsonl",
        "reference": "data/mt-bench/reference_answer.jsonl",
        "max_new_tokens": 8,
        "judge": {
            "base_url": judge_server,
            "model": "fake-judge",
            "api_key_env": "FAKE_JUDGE_KEY",
            "price_per_1k_input": 1.0,
            "note": "tiny",
        },
    }
    run = ok(
        run_stage(
            "mt_bench", tmp_path / "mt", params, {"pretrain": pretrained.output}, extra_env={"FAKE_JUDGE_KEY": "sekret"}
        )
    )
    r = run.result
    # 8 questions × 2 turns; the reasoning question's judgments have no rating: asked 1 + 2 (rating_retries) times each
    assert len(FakeJudge.requests) == 7 * 2 + 2 * 3 and FakeJudge.requests[0]["auth"] == "Bearer sekret"
    body = FakeJudge.requests[0]["body"]
    assert body["model"] == "fake-judge" and body["temperature"] == 0 and body["max_tokens"] == 2048
    # upstream's placement: turn 1 → "You are a helpful assistant." + the instruction in the user message;
    # turn 2 → the instruction is the system message, the conversation the user message
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert body["messages"][1]["content"].startswith("[Instruction]\nPlease act as an impartial judge")
    turn2 = FakeJudge.requests[1]["body"]["messages"]
    assert "second user question" in turn2[0]["content"] and turn2[1]["content"].startswith(
        "<|The Start of Assistant A's Conversation with User|>"
    )
    assert r["unparsable"] == 2  # both turns of the reasoning question
    assert r["categories"]["math"] == 3.0 and r["categories"]["coding"] == 3.0 and r["categories"]["writing"] == 6.0
    assert "reasoning" not in r["categories"]
    assert r["score"] == pytest.approx((2 * 3 * 2 + 5 * 6 * 2) / 14) and r["turn_1"] == r["turn_2"] == r["score"]
    assert r["judge"] == "fake-judge" and r["judge_prompts"] == "en"
    assert r["judge_prompt_tokens"] == 2000 and r["judge_cost"] == pytest.approx(2.0)
    judg = [json.loads(x) for x in (run.output / "judgments.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(judg) == 16 and sum(j["status"] == "unparsable" for j in judg) == 2
    by = {(j["question_id"], j["turn"]): j for j in judg}
    assert by[(111, 1)]["judge"] == ["fake-judge", "single-math-v1"] and by[(111, 2)]["judge"] == [
        "fake-judge",
        "single-math-v1-multi-turn",
    ]
    assert by[(81, 1)]["judge"] == ["fake-judge", "single-v1"] and by[(81, 2)]["judge"] == [
        "fake-judge",
        "single-v1-multi-turn",
    ]
    assert len(by[(101, 1)]["attempts"]) == 3 and by[(101, 1)]["score"] == -1 and by[(111, 1)]["rating"] == 3.0
    assert "[The Start of Reference Answer]\n156です" in by[(111, 1)]["user_prompt"]
    scores = json.loads((run.output / "scores.json").read_text())
    assert (
        scores["judge"]["model"] == "fake-judge"
        and "e37eb28ee490480f6f4989274ed47c55f7dfce82" in scores["judge"]["prompt_source"]
    )
    assert scores["judge"]["base_url_host"] == judge_server.split("/")[2]  # 127.0.0.1:<port>: no path, no key
    assert (
        scores["judge"]["note"]
        == "the judge is the pipeline's own tiny model: the protocol is real, the scores are not meaningful"
    )
    assert scores["generation"]["temperature_config"]["writing"] == 0.5
    answers = {
        a["question_id"]: a
        for a in map(json.loads, (run.output / "answers.jsonl").read_text(encoding="utf-8").splitlines())
    }
    assert (
        answers[81]["generate_params"]["temperature"] == 0.5 and answers[111]["generate_params"]["temperature"] == 0.1
    )
    assert answers[111]["question"] == ["12 × 13 を計算してください。", "その結果を7で割った余りを求めてください。"]
    assert (
        answers[111]["reference"][0] == "156です。"
        and answers[81]["reference"] is None
        and len(answers[111]["turns"]) == 2
    )
    assert answers[131]["generate_params"] == {
        "do_sample": True,
        "temperature": 0.2,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
        "max_new_token": 8,
        "seed": 0,
    }
    assert "sekret" not in (tmp_path / "mt" / "events.jsonl").read_text()


def test_mt_bench_missing_reference_is_bad_input(tmp_path, judge_server):
    # with a judge, a math/reasoning/coding question without a reference answer fails (exit 2) before any answer
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"question_id": 101, "choices": [{"turns": ["8個", "7個"]}]}) + "\n", encoding="utf-8")
    params = {
        "questions": "data/mt-bench/question.jsonl",
        "reference": str(refs),
        "model": str(tmp_path / "none"),
        "judge": {"base_url": judge_server, "model": "fake-judge"},
    }
    run = run_stage("mt_bench", tmp_path / "mt", params)
    msg = run.of("error")[-1]["message"]
    assert run.rc == 2 and "111 (math: no reference answer)" in msg and "121 (coding: no reference answer)" in msg, (
        run.stderr[-2000:]
    )
    assert FakeJudge.requests == [] and not (tmp_path / "mt" / "out" / "answers.jsonl").exists()


def test_mt_bench_without_judge(tmp_path, pretrained):
    run = ok(
        run_stage(
            "mt_bench",
            tmp_path / "mt",
            {"questions": "data/mt-bench/question.jsonl", "max_new_tokens": 4, "max_questions": 2},
            {"pretrain": pretrained.output},
        )
    )
    assert run.result == {"judge": "not configured", "answered": 2}
    answers = [json.loads(x) for x in (run.output / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(answers) == 2 and len(answers[0]["turns"]) == 2
    assert [a["generate_params"]["temperature"] for a in answers] == [0.5, 0.5]  # writing, roleplay
    assert not (run.output / "scores.json").exists()


def test_mt_bench_sampling_is_seeded(pretrained):
    from tanren_stages.common import set_seed
    from tanren_stages.eval.mtbench import sample_chat
    from tanren_stages.generation import Generator

    gen = Generator(pretrained.output / "model", "cpu")
    msgs = [{"role": "user", "content": "京都旅行についての短いブログ記事を書いてください。"}]
    outs = []
    for _ in range(2):
        set_seed(0)
        outs.append(sample_chat(gen, msgs, 12, 0.5))
    assert outs[0] == outs[1] and outs[0][1] > 0


def test_judge_host_and_note_keep_nothing_secret():
    from tanren_stages.mt_bench import TINY_JUDGE_NOTE, judge_note, url_host

    assert url_host("http://user:sk-secret@127.0.0.1:8000/v1?key=x") == "127.0.0.1:8000"
    assert url_host("https://api.openai.com/v1") == "api.openai.com" and url_host("http://[::1]:9/v1") == "[::1]:9"
    assert (
        judge_note(" tiny ") == TINY_JUDGE_NOTE and judge_note("") is None and judge_note("a 7B judge") == "a 7B judge"
    )

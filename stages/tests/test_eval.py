import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import ok, run_stage
from tanren_stages.llm_jp_eval import bleu, build_prompt, char_f1, clean_prediction, exact_match, set_f1
from tanren_stages.mt_bench import judge_prompt, parse_rating


def test_exact_match_and_normalisation():
    assert clean_prediction("ＡＢＣ１\n\n余計な続き") == "ABC1"
    assert exact_match(clean_prediction(" 東京 "), "東京") == 1.0
    assert exact_match("東京都", "東京") == 0.0


def test_char_f1():
    assert char_f1("東京", "東京") == 1.0
    assert char_f1("", "") == 1.0
    assert char_f1("abcd", "abce") == 0.75  # 2*3/(4+4)
    assert char_f1("京都", "東京") == 0.5  # one matching char: 2*1/(2+2)
    assert char_f1("b a", "a b") == 1.0  # token-sorted like fuzzywuzzy token_sort_ratio
    assert char_f1("xyz", "東京") == 0.0


def test_set_f1():
    assert set_f1("a\nb", "a\nb") == 1.0
    assert set_f1("a\nb\nc", "a\nb") == pytest.approx(0.8)  # p=2/3, r=1
    assert set_f1("a", "a\nb\nc\nd") == pytest.approx(0.4)  # p=1, r=1/4
    assert set_f1("x", "a") == 0.0 and set_f1("", "a") == 0.0


def test_bleu():
    assert bleu("今日は良い天気です", "今日は良い天気です") == pytest.approx(1.0)
    assert bleu("全然違う", "今日は良い天気です") == 0.0
    # hyp "ABCD" vs ref "ABCE": 1-gram 3/4, 2-gram 2/3, 3-gram 1/2, 4-gram 0 → 0 (no smoothing)
    assert bleu("ABCD", "ABCE") == 0.0
    # hyp "ABC" vs ref "ABCD": precisions 1,1,1 (3-gram max order), brevity penalty exp(1-4/3)
    import math

    assert bleu("ABC", "ABCD") == pytest.approx(math.exp(1 - 4 / 3))


def test_prompt_format():
    p = build_prompt("指示文", [{"input": "例", "output": "答"}], "問題")
    assert p.endswith("### 入力:\n問題\n\n### 応答:\n") and "### 指示:\n指示文\n\n### 入力:\n例\n\n### 応答:\n答" in p


def test_llm_jp_eval_stage(tmp_path, pretrained):
    run = ok(run_stage("llm_jp_eval", tmp_path / "ev", {"datasets": "data/jaster", "max_samples": 3, "num_few_shots": 1},
                       {"pretrain": pretrained.output}))
    scores = json.loads((run.output / "scores.json").read_text())
    assert set(scores["datasets"]) == {"toy_regionqa", "toy_birthplace"}
    assert set(scores["datasets"]["toy_birthplace"]["metrics"]) == {"char_f1", "exact_match"}
    assert 0 <= run.result["average"] <= 1 and run.result["average"] == scores["average"]
    lines = (run.output / "outputs" / "toy_regionqa.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and {"input", "expected", "prediction", "scores"} <= set(json.loads(lines[0]))


def test_parse_rating():
    assert parse_rating("Explanation... Rating: [[7]]") == 7.0
    assert parse_rating("[[8.5]]") == 8.5
    assert parse_rating("I'd say [6] overall") == 6.0
    assert parse_rating("Rating: [[3]] then [[9]]") == 9.0
    assert parse_rating("no rating here") is None
    assert parse_rating("[[42]]") is None


def test_judge_prompt_uses_reference():
    q = {"question_id": 1, "category": "math", "turns": ["1+1?", "2+2?"]}
    p1 = judge_prompt(q, ["2", "4"], 1, ["2です", "4です"])
    assert "[The Start of Reference Answer]\n2です" in p1 and "[[rating]]" in p1
    p2 = judge_prompt(q, ["2", "4"], 2, None)
    assert "### Assistant A:\n4" in p2 and "Reference" not in p2


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
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                          "usage": {"prompt_tokens": 100, "completion_tokens": 10}}).encode()
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
    params = {"questions": "data/mt-bench/question.jsonl", "reference": "data/mt-bench/reference_answer.jsonl", "max_new_tokens": 8,
              "judge": {"base_url": judge_server, "model": "fake-judge", "api_key_env": "FAKE_JUDGE_KEY", "price_per_1k_input": 1.0}}
    run = ok(run_stage("mt_bench", tmp_path / "mt", params, {"pretrain": pretrained.output}, extra_env={"FAKE_JUDGE_KEY": "sekret"}))
    r = run.result
    assert len(FakeJudge.requests) == 16 and FakeJudge.requests[0]["auth"] == "Bearer sekret"
    assert FakeJudge.requests[0]["body"]["model"] == "fake-judge"
    assert r["unparsable"] == 2  # both turns of the reasoning question
    assert r["categories"]["math"] == 3.0 and r["categories"]["coding"] == 3.0 and r["categories"]["writing"] == 6.0
    assert "reasoning" not in r["categories"]
    assert r["score"] == pytest.approx((2 * 3 * 2 + 5 * 6 * 2) / 14)
    assert r["judge_prompt_tokens"] == 1600 and r["judge_cost"] == pytest.approx(1.6)
    judg = [json.loads(x) for x in (run.output / "judgments.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum(j["status"] == "unparsable" for j in judg) == 2
    assert "sekret" not in (tmp_path / "mt" / "events.jsonl").read_text()


def test_mt_bench_without_judge(tmp_path, pretrained):
    run = ok(run_stage("mt_bench", tmp_path / "mt", {"questions": "data/mt-bench/question.jsonl", "max_new_tokens": 4, "max_questions": 2},
                       {"pretrain": pretrained.output}))
    assert run.result == {"judge": "not configured", "answered": 2}
    answers = [json.loads(x) for x in (run.output / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(answers) == 2 and len(answers[0]["turns"]) == 2

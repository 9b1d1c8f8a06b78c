"""Golden values for the evaluation definitions, each worked out by hand from upstream's definition (the derivation is
next to the value), so a change in a metric shows up as a wrong number rather than a drifting one.

llm-jp-eval v1.4.1 (stages/tanren_stages/eval/jaster.py names the sources): char_f1 = fuzzywuzzy
token_sort_ratio / 100 (with python-Levenshtein: Indel ratio, rounded to an integer percent); set_f1 over the
prediction's line set and the reference's line list; exact_match on the NFKC, first-paragraph, stripped prediction;
bleu_ja = sacrebleu BLEU(trg_lang="ja", effective_order=True) on MeCab/IPAdic tokens, 0–100.
Japanese MT-Bench: Stability-AI/FastChat jp-stable (stages/tanren_stages/eval/mtbench.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tanren_stages.eval import jaster, mtbench
from tanren_stages.eval.jaster import bleu_ja, char_f1, clean_prediction, clean_reference, exact_match, set_f1
from tanren_stages.llm_jp_eval import evaluate, load_datasets


# ---- char_f1 -------------------------------------------------------------------------------------------------------
# fuzzywuzzy full_process: drop U+0080–U+00FF, non-word chars (regex \W) → space, lower, strip; split, sort, join;
# ratio = 1 - indel / (len a + len b) (indel = len a + len b - 2·LCS), as int(round(100·ratio)) / 100.
@pytest.mark.parametrize(
    "pred, true, expected",
    [
        (
            "東京。",
            "東京",
            1.0,
        ),  # "。" is \W → space → stripped: "東京" == "東京" → 100 (the old difflib code gave 0.80)
        ("東京都", "東京", 0.80),  # LCS 2, indel 3+2-4 = 1, 1 - 1/5 = 0.8
        ("名古屋市", "名古屋", 0.86),  # LCS 3, indel 1, 1 - 1/7 = 0.857… → round(85.7) = 86
        ("京都", "東京", 0.50),  # LCS 1 ("京"), indel 2+2-2 = 2, 1 - 2/4 = 0.5
        ("今日は晴れ", "今日は雨", 0.67),  # LCS 3, indel 5+4-6 = 3, 1 - 3/9 = 0.666… → 67
        (
            "abcdefgh",
            "abcdexyz",
            0.62,
        ),  # LCS 5, indel 6, 1 - 6/16 = 0.625 → round(62.5) = 62 (Python rounds half to even)
        ("b a", "a b", 1.0),  # tokens sorted: "a b" == "a b"
        ("ABC", "abc", 1.0),  # lower-cased
        ("é x", "x", 1.0),  # force_ascii drops "é" (U+00E9): " x" → "x"
        ("a_b", "a b", 0.67),  # "_" is a word character: "a_b" vs "a b", LCS 2, indel 2, 1 - 2/6 → 67
        ("", "東京", 0.0),  # one side empty → 0 (check_empty_string)
        ("", "", 1.0),  # equal → 100 (check_for_equivalence comes first)
    ],
)
def test_char_f1(pred, true, expected):
    assert char_f1(pred, true) == expected


# ---- set_f1 --------------------------------------------------------------------------------------------------------
# pred lines as a set, true lines as a list (both stripped, blank lines kept); hits = |{p in set: p in list}|;
# precision = hits / |set|, recall = hits / |list|, F1 = 2PR / (P + R).
@pytest.mark.parametrize(
    "pred, true, expected",
    [
        ("a\nb", "a\nb", 1.0),
        ("a\nb\nc", "a\nb", 0.8),  # hits 2: P 2/3, R 2/2 → 2·(2/3)/(5/3) = 0.8
        ("a", "a\nb\nc\nd", 0.4),  # P 1, R 1/4 → 0.5/1.25 = 0.4
        ("a\n\nb", "a\nb", 0.8),  # the blank line is an item of the set: {a, "", b} → P 2/3, R 1 → 0.8
        ("a\na", "a\na", 2 / 3),  # set {a} vs list [a, a]: P 1, R 1/2 → 1/1.5
        (" a \nb", "a\n b", 1.0),  # each line stripped
        ("x", "a", 0.0),
        ("", "a", 0.0),  # {""}: no hit
    ],
)
def test_set_f1(pred, true, expected):
    assert set_f1(pred, true) == pytest.approx(expected)


# ---- exact_match and the cleaning around it -----------------------------------------------------------------------
def test_exact_match():
    assert clean_prediction("ＡＢＣ１\n\n余計な続き") == "ABC1"  # NFKC, text before the first blank line
    assert exact_match(clean_prediction(" 東京 \n\n以上"), clean_reference("東京")) == 1.0
    assert exact_match(clean_prediction("東京都"), clean_reference("東京")) == 0.0
    # llm-jp-eval strips the prediction but not the reference
    assert (
        clean_reference("東京\n") == "東京\n"
        and exact_match(clean_prediction("東京"), clean_reference("東京\n")) == 0.0
    )


# ---- BLEU-ja ---------------------------------------------------------------------------------------------------------
# sacrebleu BLEU(trg_lang="ja", effective_order=True): MeCab/IPAdic tokens; modified n-gram precisions p1..p4 (orders
# longer than the hypothesis dropped); "exp" smoothing: the k-th order with no match gets 100 / (2^k · total);
# BP = exp(1 - r/c) when c < r; BLEU = 100 · BP · exp(mean log p_n).
def test_bleu_ja_tokens():
    from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

    tok = TokenizerJaMecab()
    assert tok("今日は天気です") == "今日 は 天気 です"
    assert tok("今日は良い天気です") == "今日 は 良い 天気 です"
    assert tok("東京に行きました") == "東京 に 行き まし た" and tok("東京へ行った") == "東京 へ 行っ た"
    assert tok("京都は古い都です") == "京都 は 古い 都 です"


@pytest.mark.parametrize(
    "pred, true, expected",
    [
        ("今日は良い天気です", "今日は良い天気です", 100.0),
        # c=4, r=5. p1 4/4; p2 2/3 (今日 は, 天気 です); p3 0/2 → 1st zero: 100/(2·2) = 25%; p4 0/1 → 2nd: 100/(4·1) = 25%
        (
            "今日は天気です",
            "今日は良い天気です",
            100 * math.exp(1 - 5 / 4) * (1 * (2 / 3) * 0.25 * 0.25) ** 0.25,
        ),  # 35.19
        # c=r=5. p1 4/5; p2 2/4; p3 1/3 (京都 は 古い); p4 0/2 → 100/(2·2) = 25%; BP 1
        ("京都は古い都です", "京都は古い町です", 100 * (0.8 * 0.5 * (1 / 3) * 0.25) ** 0.25),  # 42.73
        # c=5 > r=4, BP 1. p1 2/5 (東京, た); p2 0/4 → 100/(2·4); p3 0/3 → 100/(4·3); p4 0/2 → 100/(8·2)
        ("東京に行きました", "東京へ行った", 100 * (0.4 * (1 / 8) * (1 / 12) * (1 / 16)) ** 0.25),  # 12.70
        # c=1: only p1 (effective order) = 1/1; BP = exp(1 - 2/1)
        ("東京", "東京です", 100 * math.exp(-1)),  # 36.79
        ("", "東京", 0.0),  # a blank side: float(pred.strip() == true.strip())
        (" ", "", 1.0),  # … so two blanks score 1.0 (on llm-jp-eval's 0–100 scale, as upstream)
    ],
)
def test_bleu_ja(pred, true, expected):
    assert bleu_ja(pred, true) == pytest.approx(expected, abs=1e-9)


# ---- categories and AVG ------------------------------------------------------------------------------------------------
def test_category_average_on_a_synthetic_table():
    table = {
        "jamp": 0.5,
        "janli": 0.7,
        "jemhopqa": 0.4,
        "niilc": 0.6,
        "jsquad": 0.9,
        "jcommonsenseqa": 0.8,
        "chabsa": 0.3,
    }
    cats = jaster.category_scores({n: (jaster.TASKS[n][0], v) for n, v in table.items()})
    # NLI = (0.5 + 0.7)/2 = 0.6; QA = (0.4 + 0.6)/2 = 0.5; RC 0.9; MC 0.8; EL 0.3
    assert cats == pytest.approx({"NLI": 0.6, "QA": 0.5, "RC": 0.9, "MC": 0.8, "EL": 0.3})
    assert list(cats) == ["NLI", "QA", "RC", "MC", "EL"]  # llm-jp-eval's category order
    # AVG = mean of the categories present = (0.6 + 0.5 + 0.9 + 0.8 + 0.3) / 5 = 0.62 — not the mean of the 7 datasets (0.6)
    assert jaster.average(cats) == pytest.approx(0.62)
    assert jaster.average({}) is None


def test_designated_metrics_and_categories():
    # the ⭐ metric of each dataset on llm-jp's leaderboard (llm-jp-eval v1.4.1)
    assert jaster.TASKS["jsquad"] == ("RC", "char_f1") and jaster.TASKS["chabsa"] == ("EL", "set_f1")
    assert jaster.TASKS["wiki_reading"] == ("FA", "char_f1") and jaster.TASKS["wiki_ner"] == ("FA", "set_f1")
    assert jaster.TASKS["alt-e-to-j"] == ("MT", "comet_wmt22") and jaster.TASKS["mbpp"] == ("CG", "code_exec")
    assert "jsts" not in jaster.TASKS and "jsts" in jaster.EXCLUDED
    assert {c for c, _ in jaster.TASKS.values()} == set(jaster.CATEGORIES)


def _write(root: Path, split: str, name: str, samples: list, metrics: list, **extra) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    obj = {"instruction": f"{name}の指示", "output_length": 8, "metrics": metrics, "samples": samples, **extra}
    (root / split / f"{name}.json").write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def _s(i: str, o: str) -> dict:
    return {"input": i, "output": o}


@pytest.fixture()
def jaster_dir(tmp_path):
    root = tmp_path / "1.4.1" / "evaluation"
    _write(
        root, "train", "jnli", [_s("t1", "entailment"), _s("t2", "neutral"), _s("t3", "contradiction")], ["exact_match"]
    )
    _write(root, "test", "jnli", [_s("q1", "entailment"), _s("q2", "neutral")], ["exact_match"])
    _write(root, "train", "jsquad", [_s("t", "京都")] * 5, ["char_f1"])
    _write(root, "test", "jsquad", [_s("q3", "東京")], ["char_f1"])
    _write(root, "train", "chabsa", [_s("t", "a")] * 5, ["set_f1"])
    _write(root, "test", "chabsa", [_s("q4", "a\nb")], ["set_f1"])
    _write(root, "train", "jsts", [_s("t", "1")] * 5, ["pearson", "spearman"])
    _write(root, "test", "jsts", [_s("s1", "1"), _s("s2", "2"), _s("s3", "3")], ["pearson", "spearman"])
    _write(root, "train", "alt-e-to-j", [_s("t", "訳")] * 5, ["comet_wmt22", "bleu_ja"])
    _write(root, "test", "alt-e-to-j", [_s("m1", "今日は良い天気です")], ["comet_wmt22", "bleu_ja"])
    _write(root, "train", "mydata", [_s("t", "x")] * 5, ["exact_match"])
    _write(root, "test", "mydata", [_s("u1", "x")], ["exact_match"])
    return tmp_path / "1.4.1"


def test_few_shots_are_the_first_n_of_train(jaster_dir):
    ds = {
        d.name: d for d in load_datasets([jaster_dir], "test", 2, {}, "datasets")
    }  # <dataset_dir>/<version> → evaluation/test
    assert [s["output"] for s in ds["jnli"].few_shots] == [
        "entailment",
        "neutral",
    ]  # train[0], train[1]: not test, not shuffled
    prompt = jaster.build_prompt(ds["jnli"].instruction, ds["jnli"].few_shots, "q1")
    assert (
        prompt.index("### 入力:\nt1\n\n### 応答:\nentailment")
        < prompt.index("### 入力:\nt2\n\n### 応答:\nneutral")
        < prompt.index("### 入力:\nq1")
    )
    assert prompt.endswith("### 入力:\nq1\n\n### 応答:\n")
    assert all(
        d.few_shots == [] for d in load_datasets([jaster_dir / "evaluation" / "test"], "test", 0, {}, "datasets")
    )


def test_too_few_train_samples_is_an_error_naming_the_dataset(jaster_dir):
    from tanren_stages.protocol import InvalidStageInput

    with pytest.raises(
        InvalidStageInput, match=r"dataset 'jnli': .*train/jnli.json has 3 samples, fewer than num_few_shots=4"
    ):
        load_datasets([jaster_dir], "test", 4, {}, "datasets")
    (jaster_dir / "evaluation" / "train" / "chabsa.json").unlink()
    with pytest.raises(
        InvalidStageInput, match=r"dataset 'chabsa': num_few_shots is 1 but .*train/chabsa.json does not exist"
    ):
        load_datasets([jaster_dir], "test", 1, {}, "datasets")


def test_flat_directory_is_not_jaster(tmp_path):
    from tanren_stages.protocol import InvalidStageInput

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "x.json").write_text("{}")
    with pytest.raises(InvalidStageInput, match="not a jaster directory"):
        load_datasets([tmp_path / "old"], "test", 0, {}, "datasets")


def test_evaluate_scores_as_llm_jp_eval(jaster_dir, tmp_path):
    answers = {
        "q1": "entailment\n\n理由は…",
        "q2": "contradiction",
        "q3": "東京。",
        "q4": "a\nb\nc",
        "s1": "1.0",
        "s2": "2.5",
        "s3": "2.0",
        "m1": "今日は天気です",
        "u1": "x",
    }

    def predict(prompt: str, budget: int) -> str:
        return answers[prompt.rsplit("### 入力:\n", 1)[1].split("\n")[0]]

    ds = load_datasets([jaster_dir], "test", 1, {}, "datasets")
    out = evaluate(ds, predict, max_samples=None, max_new_tokens=None, out_dir=tmp_path / "outputs")
    d = out["datasets"]
    assert (
        d["jnli"]["score"] == 0.5 and d["jnli"]["metric"] == "exact_match"
    )  # "entailment" ✓ (first paragraph), "contradiction" ✗
    assert d["jsquad"]["score"] == 1.0  # char_f1("東京。", "東京") = 1.0
    assert d["chabsa"]["score"] == pytest.approx(0.8)  # set_f1: P 2/3, R 1
    assert out["categories"] == pytest.approx({"NLI": 0.5, "RC": 1.0, "EL": 0.8})
    assert out["average"] == pytest.approx((0.5 + 1.0 + 0.8) / 3)  # 0.7667: categories present; JSTS and MT not in it
    # JSTS: reported, not averaged. trues 1,2,3 vs preds 1.0,2.5,2.0: Pearson = 1 / sqrt(2 · 7/6) = 0.6547;
    # ranks 1,2,3 vs 1,3,2: Spearman = 1/2
    assert out["excluded"]["jsts"]["metrics"] == pytest.approx({"pearson": 1 / math.sqrt(2 * 7 / 6), "spearman": 0.5})
    # MT's designated metric is COMET, which tanren does not compute: BLEU is reported, the category is absent
    assert "alt-e-to-j" in out["not_scored"] and "comet_wmt22" in out["not_scored"]["alt-e-to-j"]["reason"]
    assert out["not_scored"]["alt-e-to-j"]["metrics"]["bleu_ja"] == pytest.approx(35.1862973998119)
    assert out["not_scored"]["alt-e-to-j"]["not_computed"] == ["comet_wmt22"]
    assert "mydata" in out["uncategorised"] and "MT" in out["categories_missing"]
    assert out["llm_jp_eval_version"] == "1.4.1"
    lines = [json.loads(x) for x in (tmp_path / "outputs" / "jnli.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (
        lines[0]["prediction"] == "entailment"
        and lines[0]["raw"].startswith("entailment\n\n")
        and lines[0]["scores"] == {"exact_match": 1.0}
    )
    assert "### 入力:\nt1\n\n### 応答:\nentailment" in lines[0]["prompt"]  # the few-shot example from train/

    # a dataset of one's own joins a category when told which
    ds = load_datasets([jaster_dir], "test", 1, {"mydata": "QA"}, "datasets")
    out = evaluate(ds, predict, max_samples=None, max_new_tokens=None, out_dir=tmp_path / "o2")
    assert out["categories"]["QA"] == 1.0 and out["average"] == pytest.approx((0.5 + 1.0 + 0.8 + 1.0) / 4)


# ---- MT-Bench: judge parsing, prompts, sampling settings ------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("[[7]] … and on reflection [[3]]", 7.0),  # re.search: the FIRST [[n]]
        ("Explanation… Rating: [[8.5]]", 8.5),
        ("see [3]. Rating: [[7]]", 7.0),  # [[n]] anywhere wins over an earlier [n]
        ("I'd say [6] overall, maybe [2]", 6.0),  # no [[n]]: the first [n]
        ("評価：[[5]]", 5.0),  # the Japanese prompts' [[評価]] format
        ("[[42]]", 42.0),  # upstream checks no range
        ("no rating here", None),  # upstream: -1
    ],
)
def test_parse_rating(text, expected):
    assert mtbench.parse_rating(text) == expected


def test_judge_prompts_as_upstream():
    p = mtbench.load_prompts("en")
    assert set(p) == {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}
    q = {"question_id": 111, "category": "math", "turns": ["1+1?", "2+2?"]}
    assert (
        mtbench.judge_prompt_name("math", 1) == "single-math-v1"
        and mtbench.judge_prompt_name("writing", 2) == "single-v1-multi-turn"
    )
    # turn 1: "You are a helpful assistant." as the system message, the whole instruction in the user message
    sys1, user1 = mtbench.judge_messages(p["single-math-v1"], q, ["2", "4"], ["2です", "4です"], 1)
    assert sys1 == {"role": "system", "content": "You are a helpful assistant."}
    assert (
        user1["content"].startswith("[Instruction]\nPlease act as an impartial judge")
        and "Identify and correct any mistakes." in user1["content"]
    )
    assert (
        "[Question]\n1+1?\n\n[The Start of Reference Answer]\n2です\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n2\n"
        in user1["content"]
    )
    # turn 2: the instruction is the system prompt, the user message is the conversation (with the reference for math)
    sys2, user2 = mtbench.judge_messages(p["single-math-v1-multi-turn"], q, ["2", "4"], ["2です", "4です"], 2)
    assert "You evaluation should focus on the assistant's answer to the second question." in sys2["content"]
    assert user2["content"].startswith(
        "<|The Start of Reference Answer|>\n\n### User:\n1+1?\n\n### Reference answer:\n2です"
    )
    assert user2["content"].endswith(
        "### User:\n2+2?\n\n### Assistant A:\n4\n\n<|The End of Assistant A's Conversation with User|>"
    )
    sys3, user3 = mtbench.judge_messages(p["single-v1-multi-turn"], {**q, "category": "writing"}, ["2", "4"], None, 2)
    assert (
        "[Instruction]" not in sys3["content"]
        and "second user question" in sys3["content"]
        and "Reference" not in user3["content"]
    )
    ja = mtbench.load_prompts("ja")
    assert (
        ja["single-v1"]["system_prompt"] == "あなたは有益な助手です。"
        and ja["single-v1"]["output_format"] == "[[評価]]"
    )
    assert ja["single-v1-multi-turn"]["file"] == "judge_prompts.jsonl"  # the Japanese file has no multi-turn prompts


def test_temperatures_as_the_japanese_fork():
    # Stability-AI/FastChat jp-stable fastchat/llm_judge/common.py temperature_config (lm-sys FastChat uses 0.7/0.0/0.1)
    assert mtbench.TEMPERATURE_CONFIG == {
        "writing": 0.5,
        "roleplay": 0.5,
        "extraction": 0.2,
        "math": 0.1,
        "coding": 0.1,
        "reasoning": 0.1,
        "stem": 0.2,
        "humanities": 0.2,
    }
    assert mtbench.temperature_for("general") == 0.7  # gen_model_answer.py: categories not in the table
    assert (mtbench.MAX_NEW_TOKENS, mtbench.TOP_P, mtbench.REPETITION_PENALTY) == (512, 0.9, 1.1)


def test_missing_references():
    qs = [
        {"question_id": 1, "category": "math", "turns": ["a", "b"]},
        {"question_id": 2, "category": "writing", "turns": ["a", "b"]},
        {"question_id": 3, "category": "coding", "turns": ["a", "b"]},
    ]
    assert mtbench.missing_references(qs, {1: ["x", "y"], 3: ["x"]}, mtbench.NEED_REF_CATS) == [
        "3 (coding: reference has 1 turn(s), the question 2)"
    ]
    assert mtbench.missing_references(qs, {}, mtbench.NEED_REF_CATS)[0].startswith("1 (math: no reference answer)")


def test_judge_asks_again_when_no_rating(tmp_path):
    from tanren_stages.mt_bench import judge_answers, summarise

    class FakeJudge:
        model = "fake"

        def __init__(self):
            self.replies = iter(["Good, but no score.", "Rating: [[4]]", "[[9]] then [[1]]"])
            self.seen = []

        def __call__(self, messages):
            self.seen.append(messages)
            return next(self.replies)

    j = FakeJudge()
    q = {"question_id": 81, "category": "writing", "turns": ["書いて", "要約して"]}
    a = {"question_id": 81, "category": "writing", "turns": ["答え1", "答え2"]}
    out = judge_answers(j, mtbench.load_prompts(), [q], [a], {}, mtbench.NEED_REF_CATS, 2, tmp_path / "j.jsonl")
    assert [r["rating"] for r in out] == [4.0, 9.0] and out[0]["attempts"] == ["Good, but no score.", "Rating: [[4]]"]
    assert out[0]["judge"] == ["fake", "single-v1"] and out[1]["judge"] == ["fake", "single-v1-multi-turn"]
    assert j.seen[0] == j.seen[1]  # the same prompt again
    s = summarise(out)
    assert s["score"] == 6.5 and s["turn_1"] == 4.0 and s["turn_2"] == 9.0 and s["unparsable"] == 0


def test_category_must_be_llm_jp_evals(tmp_path):
    _write(tmp_path, "test", "mine", [_s("a", "b")], ["exact_match"], category="qa")
    with pytest.raises(jaster.DatasetError, match="field 'category' must be one of NLI, QA"):
        jaster.read_dataset(tmp_path / "test" / "mine.json")

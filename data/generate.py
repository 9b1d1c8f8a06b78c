#!/usr/bin/env python3
"""Writes tanren's small committed fixtures, deterministically (fixed seed).

    python3 data/generate.py          # needs pyarrow (use the stages venv)

Everything here is synthetic and written by us: Japanese sentences built from
vocabulary templates so a tokenizer and a tiny LM have structure to learn, in
the real formats (wiki-40b parquet with its markers, chat/DPO jsonl, llm-jp-eval's
jaster layout train/dev/test, MT-bench question/reference jsonl).
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240611

PLACES = ["東京", "大阪", "京都", "札幌", "福岡", "名古屋", "仙台", "広島", "神戸", "横浜", "奈良", "金沢", "長崎", "那覇", "松山", "新潟"]
REGIONS = ["関東地方", "近畿地方", "北海道", "九州地方", "中部地方", "東北地方", "中国地方", "四国地方", "沖縄県"]
KINDS = ["寺院", "神社", "城", "博物館", "公園", "橋", "駅", "大学", "図書館", "美術館", "港", "山", "川", "湖"]
PEOPLE = ["山田太郎", "佐藤花子", "鈴木一郎", "高橋健", "田中美咲", "伊藤誠", "渡辺直子", "中村翔", "小林優", "加藤明"]
JOBS = ["作家", "画家", "建築家", "政治家", "科学者", "音楽家", "俳優", "医師", "教師", "技術者"]
TOPICS = ["文学", "歴史", "物理学", "数学", "音楽", "美術", "経済学", "哲学", "化学", "天文学"]
ADJ = ["有名な", "古い", "新しい", "大きな", "美しい", "静かな", "重要な", "人気のある"]
ERAS = ["江戸時代", "明治時代", "大正時代", "昭和時代", "平成時代", "室町時代", "鎌倉時代"]
VERBS = ["建てられた", "設立された", "整備された", "再建された", "開業した", "発見された"]
SECTIONS = ["概要", "歴史", "特徴", "交通", "脚注", "人物", "作品", "評価", "沿革", "地理"]

def sentence(rng: random.Random, name: str) -> str:
    t = rng.randrange(10)
    p, r, k = rng.choice(PLACES), rng.choice(REGIONS), rng.choice(KINDS)
    if t == 0:
        return f"{name}は{r}の{p}にある{rng.choice(ADJ)}{k}である。"
    if t == 1:
        return f"{rng.choice(ERAS)}に{rng.choice(VERBS)}。"
    if t == 2:
        return f"{rng.randint(1600, 2020)}年に{rng.choice(PEOPLE)}によって{rng.choice(VERBS)}。"
    if t == 3:
        return f"{p}駅から徒歩{rng.randint(2, 30)}分の場所にある。"
    if t == 4:
        return f"{rng.choice(PEOPLE)}は{name}について{rng.choice(TOPICS)}の観点から研究した。"
    if t == 5:
        return f"毎年{rng.randint(1, 12)}月には多くの観光客が訪れる。"
    if t == 6:
        return f"{name}の周辺には{rng.choice(ADJ)}{rng.choice(KINDS)}がある。"
    if t == 7:
        return f"{rng.choice(JOBS)}の{rng.choice(PEOPLE)}は{p}で生まれた。"
    if t == 8:
        return f"{name}は{rng.choice(TOPICS)}の分野で知られている。"
    return f"現在は{p}市が管理している。"

def article(rng: random.Random) -> tuple[str, str]:
    title = rng.choice(PLACES) + rng.choice(["中央", "北", "南", "東", "西", "新", ""]) + rng.choice(KINDS)
    parts = ["", "_START_ARTICLE_", title]
    for s in rng.sample(SECTIONS, rng.randint(2, 4)):
        parts += ["_START_SECTION_", s]
        for _ in range(rng.randint(1, 3)):
            sents = [sentence(rng, title) for _ in range(rng.randint(3, 6))]
            cut = rng.randrange(len(sents))
            para = "".join(sents[:cut + 1]) + ("_NEWLINE_" + "".join(sents[cut + 1:]) if cut + 1 < len(sents) else "")
            parts += ["_START_PARAGRAPH_", para]
    return title, "\n".join(parts) + "\n"

def english_article(rng: random.Random) -> str:
    words = "the city river bridge museum was built in century by famous architect and is known for its garden station".split()
    body = " ".join(rng.choice(words) for _ in range(80)) + "."
    return f"\n_START_ARTICLE_\nEnglish Bridge {rng.randint(1, 99)}\n_START_PARAGRAPH_\n{body}\n"

def wiki40b(rng: random.Random) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = []
    for i in range(360):
        _, text = article(rng)
        rows.append(text)
    for i in range(12):  # exact duplicates of earlier articles
        rows.append(rows[rng.randrange(100)])
    for i in range(15):  # too short
        rows.append(f"\n_START_ARTICLE_\n短い{i}\n_START_PARAGRAPH_\n{rng.choice(PLACES)}の駅。\n")
    for i in range(15):  # mostly not Japanese
        rows.append(english_article(rng))
    rng.shuffle(rows)
    ids = [f"Q{100000 + i}" for i in range(len(rows))]
    vers = [str(rng.randint(10**17, 10**18)) for _ in rows]
    table = pa.table({"wikidata_id": ids, "text": rows, "version_id": vers})
    out = HERE / "wiki40b-ja" / "train-00000-of-00001.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, row_group_size=64, compression="zstd")

QA = [(f"{p}は何地方にありますか？", f"{p}は{r}にあります。") for p, r in
      [("東京", "関東地方"), ("大阪", "近畿地方"), ("京都", "近畿地方"), ("札幌", "北海道"), ("福岡", "九州地方"),
       ("名古屋", "中部地方"), ("仙台", "東北地方"), ("広島", "中国地方"), ("松山", "四国地方"), ("那覇", "沖縄県"),
       ("横浜", "関東地方"), ("神戸", "近畿地方"), ("長崎", "九州地方"), ("金沢", "中部地方"), ("新潟", "中部地方")]]

def sft(rng: random.Random) -> None:
    sys_msg = "あなたは親切な日本語アシスタントです。"
    lines = []
    for i, (q, a) in enumerate(QA * 4):
        msgs = ([{"role": "system", "content": sys_msg}] if i % 2 == 0 else []) + [
            {"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 3 == 0:
            w = rng.choice(TOPICS)
            msgs += [{"role": "user", "content": f"{w}について一言で説明してください。"},
                     {"role": "assistant", "content": f"{w}は奥が深い学問です。"}]
        lines.append(json.dumps({"messages": msgs}, ensure_ascii=False))
    (HERE / "sft").mkdir(exist_ok=True)
    (HERE / "sft" / "chat.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

def dpo(rng: random.Random) -> None:
    lines = []
    for i in range(64):
        p = rng.choice(PLACES)
        prompt = f"{p}について教えてください。"
        chosen = f"はい。{p}は{rng.choice(ADJ)}街です。{rng.choice(KINDS)}が有名です。"
        rejected = "わかりません。" * rng.randint(2, 4)
        if i % 2:
            prompt = [{"role": "user", "content": prompt}]
        lines.append(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False))
    (HERE / "dpo").mkdir(exist_ok=True)
    (HERE / "dpo" / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

def jaster(rng: random.Random) -> None:
    """Toy datasets in the layout llm-jp-eval's preprocessing writes: jaster/{train,dev,test}/<dataset>.json, each
    {instruction, output_length, metrics, samples}; the evaluator reads test/ and takes few-shot examples from the
    first samples of train/. They are not jaster datasets, so each names its llm-jp-eval category (a tanren field)."""
    import shutil

    d = HERE / "jaster"
    if d.exists():
        shutil.rmtree(d)

    def write(name: str, category: str, instruction: str, output_length: int, metrics: list, samples: list, splits: tuple) -> None:
        n_train, n_dev = splits
        for split, part in (("train", samples[:n_train]), ("dev", samples[n_train:n_train + n_dev]), ("test", samples[n_train + n_dev:])):
            (d / split).mkdir(parents=True, exist_ok=True)
            obj = {"instruction": instruction, "output_length": output_length, "metrics": metrics, "category": category, "samples": part}
            (d / split / f"{name}.json").write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    mc = []
    for p, r in [(q.split("は")[0], a.split("は")[1].replace("にあります。", "")) for q, a in QA]:
        choices = rng.sample(REGIONS, 3)
        if r not in choices:
            choices[rng.randrange(3)] = r
        mc.append({"input": f"質問：{p}は何地方にありますか？\n選択肢：0.{choices[0]},1.{choices[1]},2.{choices[2]}", "output": str(choices.index(r))})
    write("toy_regionqa", "MC", "質問と回答の選択肢を入力として受け取り、選択肢から回答を選択してください。回答の他には何も含めないことを厳守してください。",
          1, ["exact_match"], mc, (4, 3))
    rc = []
    for i in range(14):
        person, job, place = PEOPLE[i % len(PEOPLE)], JOBS[i % len(JOBS)], PLACES[i % len(PLACES)]
        rc.append({"input": f"文章：{job}の{person}は{place}で生まれた。\n質問：{person}はどこで生まれましたか？", "output": place})
    write("toy_birthplace", "RC", "文章と質問を入力として受け取り、質問に対する回答を抜き出してください。回答の他には何も含めないことを厳守してください。",
          8, ["char_f1", "exact_match", "bleu_ja"], rc, (4, 2))
    ner = []
    for i in range(12):
        places = rng.sample(PLACES, rng.randint(1, 3))
        text = "、".join(f"{p}の{rng.choice(KINDS)}" for p in places) + "を訪れた。"
        ner.append({"input": f"文章：{rng.choice(PEOPLE)}は{text}", "output": "\n".join(places)})
    write("toy_places", "FA", "文章を入力として受け取り、文章に含まれる地名を出現順に一行に一つずつ抜き出してください。回答の他には何も含めないことを厳守してください。",
          16, ["set_f1"], ner, (4, 2))


def mt_bench() -> None:
    d = HERE / "mt-bench"
    d.mkdir(exist_ok=True)
    qs = [
        (81, "writing", ["京都旅行についての短いブログ記事を書いてください。", "その記事を三文で要約してください。"]),
        (91, "roleplay", ["あなたは駅員です。道に迷った旅行者に話しかけてください。", "旅行者が英語しか話せない場合はどうしますか？"]),
        (101, "reasoning", ["りんごが3個、みかんがりんごより2個多くあります。果物は全部で何個ですか？", "みかんを1個食べたら何個残りますか？"]),
        (111, "math", ["12 × 13 を計算してください。", "その結果を7で割った余りを求めてください。"]),
        (121, "coding", ["Pythonでリストの合計を返す関数を書いてください。", "空のリストの場合はどうなりますか？"]),
        (131, "extraction", ["次の文から地名を抜き出してください：山田太郎は大阪で生まれ東京で働いた。", "抜き出した地名を五十音順に並べてください。"]),
        (141, "stem", ["水の沸点は気圧によってどう変わりますか？", "富士山の山頂ではどうなりますか？"]),
        (151, "humanities", ["江戸時代の特徴を簡単に説明してください。", "明治時代との違いを一つ挙げてください。"]),
    ]
    (d / "question.jsonl").write_text("".join(json.dumps({"question_id": i, "category": c, "turns": t}, ensure_ascii=False) + "\n" for i, c, t in qs), encoding="utf-8")
    refs = {101: ["りんご3個、みかん5個で、全部で8個です。", "7個残ります。"],
            111: ["156です。", "156 = 7 × 22 + 2 なので余りは2です。"],
            121: ["def total(xs):\n    return sum(xs)", "sum([]) は 0 を返すので 0 になります。"]}
    (d / "reference_answer.jsonl").write_text("".join(json.dumps({"question_id": i, "model_id": "reference", "choices": [{"index": 0, "turns": t}]}, ensure_ascii=False) + "\n" for i, t in refs.items()), encoding="utf-8")

# Published figures only, each with the page it was read from (see docs/evaluation.md, "Reference scores");
# an empty cell is a figure that was not found, never a guess. Rows with both scores are plotted: the LLM-jp
# paper (arXiv 2407.03963v2) gives both for six 13B fine-tuned models, by its own model IDs (Table 9), with
# llm-jp-eval v1.3.0 "AVR" (Table 10: mean of the categories EL FA HE MC MR MT NLI QA RC) and Japanese
# MT-Bench "Avg." (Table 12: mean of the eight categories, judge gpt-4-0613); test/unit/report.test.ts
# recomputes both averages from the tables' category columns.
LLM_JP_PAPER = "https://arxiv.org/abs/2407.03963v2"
LLM_JP_PAPER_NOTE = ("LLM-jp paper, model ID {id} (13B, {tuning}); llm-jp-eval v1.3.0 AVR (Table 10), "
                     "Japanese MT-Bench Avg. judged by gpt-4-0613 (Table 12)")
REFERENCE_ROWS = [
    ("model", "mt_bench", "llm_jp_eval", "note", "source", "date"),
    ("llm-jp-3-1.8b-instruct", "4.93", "",
     "Japanese MT-Bench average, judge gpt-4-0613 (llm-jp-3 model card); no llm-jp-eval average found for this model",
     "https://huggingface.co/llm-jp/llm-jp-3-3.7b-instruct/commit/1f5a6d0ac8a389d594e9972bec142d3d29d990ed", "not stated"),
    ("llm-jp-3-1.8b", "", "0.3767",
     "base model; llm-jp-eval v1.3.1 average, 100 examples of the dev split (llm-jp-3 model card); no MT-Bench for a base model",
     "https://huggingface.co/llm-jp/llm-jp-3-13b/commit/ae2a0fb2cdfe82d213563ecdadeae3be103fd202", "not stated"),
    ("Moriyasu_Qwen2_JP_7B", "7.04", "",
     "Japanese MT-Bench (Stability-AI FastChat jp-stable), judge gpt-4o-2024-08-06 (model card); its Japanese-task average is "
     "swallow-evaluation, not llm-jp-eval, so it is left out",
     "https://huggingface.co/AIJapanese/Moriyasu_Qwen2_JP_7B/commit/1781c0a5ac5e71a0b5ee64abeaedc89c408c0cde", "not stated"),
    ("Tanuki-8B-dpo-v1.0", "7.24", "",
     "Japanese MT-Bench average as a model overview page quotes it (secondary source; judge not stated there)",
     "https://featherless.ai/models/weblab-GENIAC/Tanuki-8B-dpo-v1.0", "not stated"),
    *((f"LLM-jp {pid}", mt, avr, LLM_JP_PAPER_NOTE.format(id=pid, tuning=tuning), LLM_JP_PAPER, "2024-12-30 (paper v2)")
      for pid, tuning, mt, avr in [
          ("v1.1-I", "SFT on dolly, oasst, ichikara", "3.05", "0.365"),
          ("v1.1-J", "LoRA on dolly, oasst, ichikara", "2.69", "0.395"),
          ("v1.1-K", "SFT on dolly, oasst, ichikara, then DPO on HH-RLHF", "3.09", "0.350"),
          ("v2.0-M", "SFT on dolly, oasst, ichikara", "3.54", "0.387"),
          ("v2.0-N", "SFT, AnswerCarefully added", "3.54", "0.383"),
          ("v2.0-O", "SFT, AnswerCarefully 16x", "3.68", "0.388"),
      ]),
]


def reference_scores() -> None:
    with open(HERE / "reference-scores.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(REFERENCE_ROWS)

def judge_sft(rng: random.Random) -> None:
    """Chats ending as the MT-Bench judge's prompts end (single-v1, single-math-v1, the multi-turn ones) whose reply is a
    rating, so the tiny pipeline can train its own judge (protocol-true, meaningless scores): a right answer gets
    [8], an evasive one [2] (the rating format upstream accepts after [[n]])."""
    lines = []
    for i, (q, a) in enumerate(QA * 3):
        good = i % 3 != 2
        answer = a if good else "わかりません。" * rng.randint(1, 3)
        form = (i // 3) % 3
        if form == 0:
            user = f"[Question]\n{q}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
        elif form == 1:
            user = (f"[Question]\n{q}\n\n[The Start of Reference Answer]\n{a}\n[The End of Reference Answer]\n\n"
                    f"[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]")
        else:
            user = (f"<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{q}\n\n### Assistant A:\n{answer}\n\n"
                    "<|The End of Assistant A's Conversation with User|>")
        msgs = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": user},
                {"role": "assistant", "content": f"[{8 if good else 2}]"}]
        lines.append(json.dumps({"messages": msgs}, ensure_ascii=False))
    (HERE / "sft" / "judge.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

def main() -> None:
    rng = random.Random(SEED)
    wiki40b(rng)
    sft(rng)
    dpo(rng)
    jaster(random.Random(SEED))  # its own generator: the eval fixtures do not move when the others change
    mt_bench()
    reference_scores()
    judge_sft(random.Random(SEED))  # its own generator too

if __name__ == "__main__":
    main()

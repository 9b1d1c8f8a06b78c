"""Stage `llm_jp_eval`: llm-jp-eval style evaluation on datasets in its evaluation JSON format.

params (defaults):
  model / input       HF model dir, Hub repo id "org/name", or model/ of a needed stage (full weights, or
                      base.json: base + the stage's adapter/)
  precision           "auto" (bf16 on CUDA, fp16 where bf16 is unsupported, fp32 on CPU) | bf16 | fp16 | fp32
  load_in_4bit        NF4 base (needs CUDA + bitsandbytes); default: true on CUDA for an adapter trained
                      on a 4-bit base (QLoRA sft/dpo), else false
  datasets            a dir of *.json, one file, or a list of files (relative to the project root); required
  num_few_shots       0 (zero-shot); uses the dataset's few_shots
  max_samples         per dataset (default: all)
  max_new_tokens      default: the dataset's output_length + 2
  use_chat_template   false (llm-jp-eval's Alpaca-style prompt as plain text)
Each dataset JSON: {instruction, output_length, metrics: [exact_match|char_f1|set_f1|bleu], few_shots, samples[{input, output}]}.
Predictions: NFKC-normalised text before the first blank line, stripped (as llm-jp-eval).
Outputs: scores.json, outputs/<dataset>.jsonl. Result: average, and per-dataset scores.
"""
from __future__ import annotations

import json
import math
import unicodedata
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path

from .protocol import InvalidStageInput, StageContext, run_stage, write_json

METRICS = ("exact_match", "char_f1", "set_f1", "bleu")


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def clean_prediction(raw: str) -> str:
    return normalize(raw.split("\n\n")[0]).strip()


def exact_match(pred: str, true: str) -> float:
    return 1.0 if pred == true else 0.0


def char_f1(pred: str, true: str) -> float:
    """fuzzywuzzy token_sort_ratio / 100 (what llm-jp-eval calls char_f1), computed with difflib."""
    a = " ".join(sorted(pred.split()))
    b = " ".join(sorted(true.split()))
    if not a and not b:
        return 1.0
    return round(100 * SequenceMatcher(None, a, b, autojunk=False).ratio()) / 100


def set_f1(pred: str, true: str) -> float:
    """F1 of the sets of newline-separated items (llm-jp-eval set_f1)."""
    sp = {x.strip() for x in pred.split("\n") if x.strip()}
    st = {x.strip() for x in true.split("\n") if x.strip()}
    if not sp or not st:
        return 0.0
    p = len(sp & st) / len(sp)
    r = len(sp & st) / len(st)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(pred: str, true: str, max_n: int = 4) -> float:
    """Sentence BLEU in [0, 1] on characters (Japanese has no spaces), effective order, brevity penalty.

    Like sacrebleu's sentence_score with effective_order=True; characters stand in for
    MeCab tokens since no Japanese tokenizer is installed.
    """
    hyp = [c for c in pred if not c.isspace()]
    ref = [c for c in true if not c.isspace()]
    if not hyp or not ref:
        return 0.0
    logs = []
    for n in range(1, max_n + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        total = sum(h.values())
        if total == 0:
            break  # effective order: ignore orders longer than the hypothesis
        match = sum(min(c, r[g]) for g, c in h.items())
        if match == 0:
            return 0.0
        logs.append(math.log(match / total))
    bp = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return bp * math.exp(sum(logs) / len(logs))


SCORERS = {"exact_match": exact_match, "char_f1": char_f1, "set_f1": set_f1, "bleu": bleu}


def build_prompt(instruction: str, few_shots: list[dict], text: str) -> str:
    """llm-jp-eval's Alpaca-style Japanese prompt, few-shot examples folded into the instruction."""
    shots = "".join(f"\n\n### 入力:\n{s['input']}\n\n### 応答:\n{s['output']}" for s in few_shots)
    return ("以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
            f"\n\n### 指示:\n{instruction}{shots}\n\n### 入力:\n{text}\n\n### 応答:\n")


def load_dataset(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InvalidStageInput(f"{path}: not valid JSON ({e.msg})")
    for k, t in (("instruction", str), ("samples", list), ("metrics", list)):
        if not isinstance(d.get(k), t):
            raise InvalidStageInput(f"{path}: field '{k}' is missing or not a {t.__name__}")
    bad = [m for m in d["metrics"] if m not in SCORERS]
    if bad:
        raise InvalidStageInput(f"{path}: field 'metrics' has unsupported {', '.join(bad)} (supported: {', '.join(METRICS)})")
    for i, s in enumerate(d["samples"]):
        if not isinstance(s, dict) or not isinstance(s.get("input"), str) or not isinstance(s.get("output"), str):
            raise InvalidStageInput(f"{path}: samples[{i}] must have string fields 'input' and 'output'")
    return d


def dataset_files(ctx: StageContext) -> list[Path]:
    raw = ctx.params.raw("datasets")
    if raw is None:
        raise InvalidStageInput(f"{ctx.params.source}: field 'datasets' is required (a dir of llm-jp-eval JSON files, a file, or a list)")
    paths = [Path(x) for x in (raw if isinstance(raw, list) else [raw])]
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(p.glob("*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise InvalidStageInput(f"{ctx.params.source}: field 'datasets': {p} does not exist")
    if not files:
        raise InvalidStageInput(f"{ctx.params.source}: field 'datasets': no .json files found")
    return files


def score_dataset(name: str, data: dict, predict, *, num_few_shots: int, max_samples: int | None, max_new_tokens: int | None, out_file: Path) -> dict:
    shots = (data.get("few_shots") or [])[:num_few_shots]
    samples = data["samples"][:max_samples] if max_samples else data["samples"]
    budget = max_new_tokens or int(data.get("output_length", 32)) + 2
    sums = {m: 0.0 for m in data["metrics"]}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8") as fh:
        for s in samples:
            prompt = build_prompt(data["instruction"], shots, s["input"])
            raw = predict(prompt, budget)
            pred, true = clean_prediction(raw), normalize(s["output"]).strip()
            scores = {m: SCORERS[m](pred, true) for m in data["metrics"]}
            for m, v in scores.items():
                sums[m] += v
            fh.write(json.dumps({"input": s["input"], "expected": true, "prediction": pred, "raw": raw, "scores": scores}, ensure_ascii=False) + "\n")
    n = max(1, len(samples))
    metrics = {m: v / n for m, v in sums.items()}
    return {"samples": len(samples), "metrics": metrics, "score": sum(metrics.values()) / max(1, len(metrics))}


def main(ctx: StageContext) -> None:
    from .generation import Generator

    p = ctx.params
    p.reject_unknown({"model", "input", "datasets", "num_few_shots", "max_samples", "max_new_tokens", "use_chat_template", "device", "seed", "precision", "load_in_4bit"})
    files = dataset_files(ctx)
    loaded = [(f.stem, load_dataset(f)) for f in files]
    gen = Generator.from_ctx(ctx)
    chat = p.bool("use_chat_template", False)

    def predict(prompt: str, budget: int) -> str:
        if chat:
            return gen.chat([{"role": "user", "content": prompt}], budget)[0]
        return gen.complete(prompt, budget)[0]

    per = {}
    for i, (name, data) in enumerate(loaded):
        per[name] = score_dataset(name, data, predict, num_few_shots=p.int("num_few_shots", 0, min=0),
                                  max_samples=p.int("max_samples", None, min=1), max_new_tokens=p.int("max_new_tokens", None, min=1),
                                  out_file=ctx.output / "outputs" / f"{name}.jsonl")
        ctx.metric({f"{name}/{m}": v for m, v in per[name]["metrics"].items()})
        ctx.progress(i + 1, len(loaded), message=name)
    average = sum(d["score"] for d in per.values()) / len(per)
    write_json(ctx.output / "scores.json", {"average": average, "datasets": per})
    ctx.artifact("scores.json", "per-dataset and average scores")
    ctx.result({"average": average, **{name: d["score"] for name, d in per.items()}})


if __name__ == "__main__":
    run_stage(main)

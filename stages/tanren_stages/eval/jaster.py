"""llm-jp-eval's definitions, as tanren follows them (LLM_JP_EVAL_VERSION).

Sources. llm-jp-eval's own repository could not be read from this project's build machines, so each definition
below names where it was taken from:
  [U] llm-jp-eval v1.4.x `src/llm_jp_eval/utils.py` / `evaluator.py` (get_few_shot_samples, get_evaluation_prompt,
      get_evaluation_result, post_process_score_results), as reproduced verbatim in the copies of that file that
      W&B's Nejumi leaderboard (github.com/wandb/llm-leaderboard, scripts/evaluator/evaluate_utils/metrics.py) and
      other public forks carry;
  [L] llm-jp's Open Japanese LLM Leaderboard (huggingface.co/spaces/llm-jp/open-japanese-llm-leaderboard,
      src/about.py), which runs llm-jp-eval v1.4.1 and marks with ⭐ the one metric per dataset that enters the
      category averages and AVG ("The calculation of the average score (AVG) includes only the scores of datasets
      marked with a ⭐"; "JSTS ... is not included in the evaluation score average").

Layout [U]: llm-jp-eval's preprocessing writes <dataset_dir>/<version>/evaluation/{train,dev,test}/<dataset>.json,
each {instruction, output_length, metrics, samples: [{input, output}], ...}; the evaluator reads test/ (dev/ for the
leaderboard's dev run) and takes the few-shot examples from the FIRST n samples of the same dataset's train/ file
(`target_dataset_path.parent.parent / "train" / name`), asserting there are at least n.

Prediction and reference [U]: y_pred = NFKC(raw.split("\\n\\n")[0]).strip(); y_true = NFKC(sample["output"]).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

LLM_JP_EVAL_VERSION = "1.4.1"
DEFINITIONS = (
    "llm-jp-eval v1.4.1: one designated metric per dataset, the mean of those per category, AVG = mean of "
    "the categories present (JSTS excluded)"
)

CATEGORIES = ("NLI", "QA", "RC", "MC", "EL", "FA", "MR", "MT", "HE", "CG", "SUM")

# dataset → (category, designated metric) [L] (the ⭐ metrics) / [U] post_process_score_results.
TASKS: dict[str, tuple[str, str]] = {
    "jamp": ("NLI", "exact_match"),
    "janli": ("NLI", "exact_match"),
    "jnli": ("NLI", "exact_match"),
    "jsem": ("NLI", "exact_match"),
    "jsick": ("NLI", "exact_match"),
    "jemhopqa": ("QA", "char_f1"),
    "niilc": ("QA", "char_f1"),
    "aio": ("QA", "char_f1"),
    "jsquad": ("RC", "char_f1"),
    "jcommonsenseqa": ("MC", "exact_match"),
    "commonsensemoralja": ("MC", "exact_match"),
    "kuci": ("MC", "exact_match"),
    "chabsa": ("EL", "set_f1"),
    "wiki_reading": ("FA", "char_f1"),
    "wiki_ner": ("FA", "set_f1"),
    "wiki_dependency": ("FA", "set_f1"),
    "wiki_pas": ("FA", "set_f1"),
    "wiki_coreference": ("FA", "set_f1"),
    "mawps": ("MR", "exact_match"),
    "mgsm": ("MR", "exact_match"),
    "alt-e-to-j": ("MT", "comet_wmt22"),
    "alt-j-to-e": ("MT", "comet_wmt22"),
    "wikicorpus-e-to-j": ("MT", "comet_wmt22"),
    "wikicorpus-j-to-e": ("MT", "comet_wmt22"),
    "mmlu_en": ("HE", "exact_match"),
    "jmmlu": ("HE", "exact_match"),
    "mbpp": ("CG", "code_exec"),
    "xlsum_ja": ("SUM", "rouge2_scaling"),
}
# Evaluated and reported, never averaged [L].
EXCLUDED = {"jsts": "STS (JSTS) is supported by llm-jp-eval but not included in the category averages or AVG"}
# Designated metrics tanren does not compute, and why; their categories are then absent (reported, not averaged).
NOT_COMPUTED = {
    "comet_wmt22": "needs the Unbabel/wmt22-comet-da model (unbabel-comet); tanren does not run it",
    "code_exec": "runs the model's code against the dataset's tests in a sandbox; tanren does not execute generated code",
    "rouge2_scaling": "ROUGE-2 of XL-Sum (non-commercial licence, opt-in upstream); tanren does not compute ROUGE",
}


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def clean_prediction(raw: str) -> str:
    """[U] the text before the first blank line, NFKC-normalised, stripped."""
    return normalize(raw.split("\n\n")[0]).strip()


def clean_reference(output: str) -> str:
    """[U] NFKC only: llm-jp-eval does not strip the reference."""
    return normalize(output)


# ---- per-sample metrics ----


def exact_match(pred: str, true: str) -> float:
    """[U] accuracy_score(y_trues, y_preds): 1.0 when the strings are equal."""
    return 1.0 if pred == true else 0.0


# fuzzywuzzy.utils.full_process(s, force_ascii=True), which token_sort_ratio applies to both strings:
# drop the characters U+0080–U+00FF (asciidammit), every non-word character (regex (?ui)\W) → space, lower-case, strip.
_LATIN1 = {i: None for i in range(128, 256)}
_NON_WORD = re.compile(r"(?ui)\W")


def _fuzzywuzzy_process(s: str) -> str:
    return _NON_WORD.sub(" ", s.translate(_LATIN1)).lower().strip()


def char_f1(pred: str, true: str) -> float:
    """[U] fuzzywuzzy `fuzz.token_sort_ratio(pred, true) / 100.0`, computed with rapidfuzz.

    token_sort_ratio = ratio of the processed, whitespace-split, sorted, space-joined strings; with python-Levenshtein
    installed (llm-jp-eval installs it) fuzzywuzzy's ratio is Levenshtein.ratio, the Indel similarity
    1 - indel_distance / (len(a) + len(b)), rounded to an integer percentage (int(round(100 * r))). Equal strings give
    100 and one empty string gives 0 (fuzzywuzzy's check_for_equivalence then check_empty_string). So "東京。" vs
    "東京" is 1.0: "。" is a non-word character and becomes a space that strip() removes.
    """
    from rapidfuzz.distance import Indel

    a = " ".join(sorted(_fuzzywuzzy_process(pred).split()))
    b = " ".join(sorted(_fuzzywuzzy_process(true).split()))
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    return int(round(100 * Indel.normalized_similarity(a, b))) / 100


def set_f1(pred: str, true: str) -> float:
    """[U] the prediction's lines as a set, the reference's as a list, each line stripped (blank lines kept):
    precision = |{p in pred_set : p in true_list}| / |pred_set|, recall = the same count / |true_list|, F1 of the two."""
    split_pred = {x.strip() for x in pred.split("\n")}
    split_true = [x.strip() for x in true.split("\n")]
    hits = sum(1 if y in split_true else 0 for y in split_pred)
    p = hits / len(split_pred)
    r = hits / len(split_true)
    return 2 * p * r / (p + r) if (p + r) != 0 else 0.0


_BLEU: dict[str, object] = {}


def _bleu(lang: str):
    if lang not in _BLEU:
        from sacrebleu.metrics import BLEU

        _BLEU[lang] = BLEU(trg_lang=lang, effective_order=True)  # ja → the ja-mecab tokenizer (MeCab + IPAdic)
    return _BLEU[lang]


def bleu(pred: str, true: str, lang: str = "ja") -> float:
    """[U] sentence BLEU on llm-jp-eval's 0–100 scale: sacrebleu BLEU(trg_lang=lang, effective_order=True) on the
    stripped pair (trg_lang "ja" tokenises with MeCab/IPAdic; exp smoothing, sacrebleu's default); when either side
    is blank, float(pred.strip() == true.strip())."""
    p, t = pred.strip(), true.strip()
    if not p or not t:
        return float(p == t)
    return float(_bleu(lang).corpus_score([p], [[t]]).score)


def bleu_ja(pred: str, true: str) -> float:
    return bleu(pred, true, "ja")


def bleu_en(pred: str, true: str) -> float:
    return bleu(pred, true, "en")


SAMPLE_METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "char_f1": char_f1,
    "set_f1": set_f1,
    "bleu_ja": bleu_ja,
    "bleu_en": bleu_en,
}


# ---- dataset-level metrics (JSTS) ----


def parse_float(s: str) -> float:
    """[U] keep digits and dots, float() of that, -2.0 when it is not a number."""
    try:
        return float(re.sub(r"[^0-9.]", "", str(s)))
    except ValueError:
        return -2.0


def _pearson(x: list[float], y: list[float]) -> float:
    import numpy as np

    if len(x) < 2:
        return 0.0
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    r = float((a * b).sum()) / den if den else math.nan
    return 0.0 if math.isnan(r) else r  # [U] NaN → 0.0


def _ranks(v: list[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions), as scipy.stats.rankdata / spearmanr use."""
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(preds: list[str], trues: list[str]) -> float:
    """[U] pearsonr(map(float, y_trues), map(parse_float, y_preds))[0], NaN → 0.0."""
    return _pearson([float(t) for t in trues], [parse_float(p) for p in preds])


def spearman(preds: list[str], trues: list[str]) -> float:
    """[U] spearmanr(...) likewise: Pearson of the average ranks."""
    return _pearson(_ranks([float(t) for t in trues]), _ranks([parse_float(p) for p in preds]))


CORPUS_METRICS: dict[str, Callable[[list[str], list[str]], float]] = {"pearson": pearson, "spearman": spearman}
SUPPORTED = tuple(SAMPLE_METRICS) + tuple(CORPUS_METRICS)


# ---- categories and AVG ----


def category_scores(dataset_scores: dict[str, tuple[str, float]]) -> dict[str, float]:
    """{dataset: (category, designated score)} → {category: mean of its datasets' scores}, in CATEGORIES order
    (others after, alphabetically). Datasets in EXCLUDED must not be passed in."""
    by: dict[str, list[float]] = {}
    for cat, score in dataset_scores.values():
        by.setdefault(cat, []).append(score)
    order = [c for c in CATEGORIES if c in by] + sorted(c for c in by if c not in CATEGORIES)
    return {c: mean(by[c]) for c in order}


def average(categories: dict[str, float]) -> float | None:
    """AVG = mean of the categories present. (Upstream computes AVG only for a run over every dataset, where every
    category is present; a category whose datasets all failed counts 0 there.)"""
    return mean(categories.values()) if categories else None


# ---- datasets on disk ----


class DatasetError(ValueError):
    """A dataset file or layout problem, with a message naming the file and the field."""


@dataclass
class Dataset:
    name: str
    path: Path
    instruction: str
    output_length: int
    metrics: list[str]
    samples: list[dict]
    category: str | None = None  # tanren extension for datasets not in TASKS (JSON field "category" or params)
    few_shots: list[dict] = field(default_factory=list)

    @property
    def designated(self) -> str | None:
        """The metric that enters the category mean: upstream's for a jaster dataset, else the first listed."""
        if self.name in TASKS:
            return TASKS[self.name][1]
        return self.metrics[0] if self.metrics else None

    @property
    def task_category(self) -> str | None:
        if self.name in TASKS:
            return TASKS[self.name][0]
        if self.name in EXCLUDED:
            return None
        return self.category


def read_dataset(path: Path) -> Dataset:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})")
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({e.strerror})")
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: must be a JSON object {{instruction, output_length, metrics, samples}}")
    for k, t in (("instruction", str), ("samples", list), ("metrics", list)):
        if not isinstance(d.get(k), t):
            raise DatasetError(f"{path}: field '{k}' is missing or not a {t.__name__}")
    out_len = d.get("output_length", 0)
    if isinstance(out_len, bool) or not isinstance(out_len, int) or out_len < 0:
        raise DatasetError(f"{path}: field 'output_length' must be a non-negative integer")
    for i, s in enumerate(d["samples"]):
        if not isinstance(s, dict) or not isinstance(s.get("input"), str) or not isinstance(s.get("output"), str):
            raise DatasetError(f"{path}: samples[{i}] must have string fields 'input' and 'output'")
    cat = d.get("category")
    if cat is not None and cat not in CATEGORIES:
        raise DatasetError(
            f"{path}: field 'category' must be one of {', '.join(CATEGORIES)}, got {json.dumps(cat, ensure_ascii=False)[:40]}"
        )
    return Dataset(path.stem, path, d["instruction"], out_len, [str(m) for m in d["metrics"]], d["samples"], cat)


def few_shot_samples(dataset_path: Path, num_few_shots: int) -> list[dict]:
    """[U] get_few_shot_samples: the first `num_few_shots` samples of <dataset_path>/../../train/<name>.json."""
    if num_few_shots <= 0:
        return []
    name = dataset_path.stem
    train = dataset_path.resolve().parent.parent / "train" / dataset_path.name
    if not train.is_file():
        raise DatasetError(
            f"dataset '{name}': num_few_shots is {num_few_shots} but {train} does not exist "
            "(llm-jp-eval takes few-shot examples from the dataset's train/ split)"
        )
    samples = read_dataset(train).samples
    if len(samples) < num_few_shots:
        raise DatasetError(
            f"dataset '{name}': {train} has {len(samples)} samples, fewer than num_few_shots={num_few_shots}"
        )
    return samples[:num_few_shots]


def evaluation_files(paths: list[Path], split: str = "test") -> list[Path]:
    """The evaluation files: for a directory, <dir>/evaluation/<split>/*.json, <dir>/<split>/*.json, or <dir>/*.json
    when <dir> is itself a split directory (named train, dev or test); a file is taken as it is."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            if (p / "evaluation" / split).is_dir():
                d = p / "evaluation" / split
            elif (p / split).is_dir():
                d = p / split
            elif p.name in ("train", "dev", "test"):
                d = p
            else:
                raise DatasetError(
                    f"{p}: not a jaster directory: expected {p}/{split}/*.json with train/ beside it (llm-jp-eval's "
                    f"preprocessing writes <dataset_dir>/<version>/evaluation/{{train,dev,test}}/<dataset>.json)"
                )
            found = sorted(d.glob("*.json"))
            if not found:
                raise DatasetError(f"{d}: no .json dataset files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p} does not exist")
    return files


def build_prompt(instruction: str, few_shots: list[dict], text: str) -> str:
    """[U] get_evaluation_prompt (Japanese, no custom template): the Alpaca-style prompt with the few-shot examples
    folded into the instruction block."""
    shots = "".join(f"\n\n### 入力:\n{s['input']}\n\n### 応答:\n{s['output']}" for s in few_shots)
    return (
        "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
        f"\n\n### 指示:\n{instruction}{shots}\n\n### 入力:\n{text}\n\n### 応答:\n"
    )


def score_samples(
    metrics: list[str], preds: list[str], trues: list[str]
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The dataset's metrics (those tanren computes) and each sample's per-sample ones."""
    per = [{m: SAMPLE_METRICS[m](p, t) for m in metrics if m in SAMPLE_METRICS} for p, t in zip(preds, trues)]
    agg: dict[str, float] = {}
    for m in metrics:
        if m in SAMPLE_METRICS:
            agg[m] = mean(s[m] for s in per) if per else 0.0
        elif m in CORPUS_METRICS:
            agg[m] = CORPUS_METRICS[m](preds, trues)
    return agg, per

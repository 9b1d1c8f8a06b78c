"""Stage `llm_jp_eval`: llm-jp-eval on jaster data, with llm-jp-eval's definitions (see eval/jaster.py for sources).

params (generated from LlmJpEvalParams; `python -m tanren_stages.protocol` rewrites this block):
  device ("cpu" | "cuda" | "auto"; default "auto"): auto: cuda when the worker has one
  precision ("auto" | "bf16" | "fp16" | "fp32"; default "auto"): auto: bf16 on CUDA, fp16 where bf16 is
      unsupported, fp32 on CPU
  load_in_4bit (bool; default true on CUDA for an adapter trained on a 4-bit base (QLoRA sft/dpo), else false):
      NF4 base (needs CUDA + bitsandbytes)
  model (string; default model/ of the needed stage (or the one `input` names)): HF model dir, Hub repo id
      "org/name", or model/ of a needed stage (full weights, or base.json: base + the stage's adapter/)
  input (string): the needed stage whose model/ is evaluated
  datasets (any): required: a jaster directory as llm-jp-eval's preprocessing writes it
      (<dir>/{train,dev,test}/, or <dataset_dir>/<version>/ holding evaluation/), a split directory
      (…/evaluation/test), one dataset file or a list of them; relative paths are from the project root
  split ("test" | "dev"; default "test"): test: as llm-jp-eval's evaluator
  num_few_shots (integer >= 0; default 4): llm-jp-eval's default: the first n samples of the dataset's train/
      file; fewer there is an error
  max_samples (integer >= 1; default all): samples per dataset
  max_new_tokens (integer >= 1; default the dataset's output_length): as llm-jp-eval's generation
  use_chat_template (any; default "auto"): auto: true when the model was chat-tuned by sft/dpo (chat_format.json
      beside its tokenizer), so it is asked in the chat format it was tuned on; false: the Alpaca-style prompt
      as plain text (llm-jp-eval without a custom template), for base models. With the chat template the
      instruction is the system message, each few-shot example a user/assistant turn, the sample's input the
      last user turn; the prompt recorded per sample is the rendered template
  categories (any; default {}): {dataset: category} for datasets that are not jaster's (a dataset file may also
      carry a "category" field); jaster datasets always take llm-jp-eval's category
  seed (integer; default 1234): generation seed
(end of params)
Each dataset: {instruction, output_length, metrics: [exact_match|char_f1|set_f1|bleu_ja|bleu_en|pearson|spearman|…],
samples: [{input, output}]}; metrics tanren does not compute (comet_wmt22, code_exec, rouge…) are listed as such.
Scores: one designated metric per dataset, category means, AVG = mean of the categories present; JSTS reported, not
averaged; a dataset whose designated metric tanren does not compute is reported under not_scored.
Outputs: scores.json, outputs/<dataset>.jsonl (per sample: prompt, raw output, prediction, reference, scores).
Result: average, llm_jp_eval_version, categories, and each scored dataset's score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .eval import jaster
from .generation import GenerationParams
from .protocol import InvalidStageInput, StageContext, param, run_stage, write_json


def load_datasets(
    paths: list[Path], split: str, num_few_shots: int, categories: dict, where: str
) -> list[jaster.Dataset]:
    """Reads every evaluation file and its few-shot examples (before any model is loaded, so bad data fails fast)."""
    try:
        files = jaster.evaluation_files(paths, split)
        out = []
        for f in files:
            d = jaster.read_dataset(f)
            d.few_shots = jaster.few_shot_samples(f, num_few_shots)
            if d.name in categories:
                if d.name in jaster.TASKS:
                    raise jaster.DatasetError(
                        f"field 'categories': {d.name} is a jaster dataset, whose category is "
                        f"llm-jp-eval's ({jaster.TASKS[d.name][0]})"
                    )
                d.category = categories[d.name]
            out.append(d)
    except jaster.DatasetError as e:
        raise InvalidStageInput(f"{where}: {e}")
    names = [d.name for d in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidStageInput(f"{where}: field 'datasets' names dataset(s) {', '.join(dup)} more than once")
    return out


def scorable(d: jaster.Dataset) -> bool:
    """Whether the dataset enters a category mean: not excluded, a category, a designated metric tanren computes."""
    return (
        d.name not in jaster.EXCLUDED
        and d.task_category is not None
        and d.designated in jaster.SUPPORTED
        and d.designated in d.metrics
    )


def chat_messages(instruction: str, few_shots: list[dict], text: str) -> list[dict]:
    """The chat form of llm-jp-eval's prompt: the instruction as the system message, each few-shot example a
    user/assistant turn, the sample's input the last user turn."""
    msgs = [{"role": "system", "content": instruction}]
    for s in few_shots:
        msgs += [{"role": "user", "content": s["input"]}, {"role": "assistant", "content": s["output"]}]
    return msgs + [{"role": "user", "content": text}]


def evaluate(
    datasets: list[jaster.Dataset],
    predict,
    *,
    max_samples: int | None,
    max_new_tokens: int | None,
    out_dir: Path,
    progress=None,
    metric=None,
    render=None,
) -> dict:
    """Runs `predict(prompt, max_new_tokens) -> raw text` on every sample and scores as llm-jp-eval; returns scores.json.
    `render(instruction, few_shots, input) -> prompt` builds the prompt (default: the Alpaca-style text)."""
    render = render or jaster.build_prompt
    per: dict[str, dict] = {}
    not_scored: dict[str, dict] = {}
    excluded: dict[str, dict] = {}
    uncategorised: dict[str, dict] = {}
    for i, d in enumerate(datasets):
        samples = d.samples[:max_samples] if max_samples else d.samples
        budget = max_new_tokens or max(1, d.output_length)
        preds, trues, raws, prompts = [], [], [], []
        for s in samples:
            prompt = render(d.instruction, d.few_shots, s["input"])
            raw = predict(prompt, budget)
            prompts.append(prompt)
            raws.append(raw)
            preds.append(jaster.clean_prediction(raw))
            trues.append(jaster.clean_reference(s["output"]))
        metrics, per_sample = jaster.score_samples(d.metrics, preds, trues)
        out_file = out_dir / f"{d.name}.jsonl"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        with open(out_file, "w", encoding="utf-8") as fh:
            for k, s in enumerate(samples):
                fh.write(
                    json.dumps(
                        {
                            "index": k,
                            "input": s["input"],
                            "prompt": prompts[k],
                            "raw": raws[k],
                            "prediction": preds[k],
                            "expected": trues[k],
                            "scores": per_sample[k],
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        rec = {
            "samples": len(samples),
            "few_shots": len(d.few_shots),
            "metrics": metrics,
            "not_computed": [m for m in d.metrics if m not in jaster.SUPPORTED],
        }
        designated, cat = d.designated, d.task_category
        rec["metric"] = designated
        if designated is not None and designated in metrics:
            rec["score"] = metrics[designated]
        if d.name in jaster.EXCLUDED:
            excluded[d.name] = {**rec, "reason": jaster.EXCLUDED[d.name]}
        elif "score" not in rec:
            why = (
                f"designated metric {designated}: {jaster.NOT_COMPUTED[designated]}"
                if designated in jaster.NOT_COMPUTED
                else f"designated metric {designated} is not one tanren computes"
                if designated
                else "the dataset lists no metric"
            )
            not_scored[d.name] = {**rec, "category": cat, "reason": why}
        elif cat is None:
            uncategorised[d.name] = {
                **rec,
                "reason": "not a jaster dataset and no category given (params 'categories' "
                "or the file's 'category' field)",
            }
        else:
            per[d.name] = {**rec, "category": cat}
        if metric is not None and metrics:
            metric({f"{d.name}/{m}": v for m, v in metrics.items()})
        if progress is not None:
            progress(i + 1, len(datasets), d.name)
    cats = jaster.category_scores({n: (r["category"], r["score"]) for n, r in per.items()})
    return {
        "llm_jp_eval_version": jaster.LLM_JP_EVAL_VERSION,
        "definitions": jaster.DEFINITIONS,
        "average": jaster.average(cats),
        "categories": cats,
        "category_datasets": {c: [n for n, r in per.items() if r["category"] == c] for c in cats},
        "categories_missing": [c for c in jaster.CATEGORIES if c not in cats],
        "datasets": per,
        "excluded": excluded,
        "not_scored": not_scored,
        "uncategorised": uncategorised,
    }


@dataclass
class LlmJpEvalParams(GenerationParams):
    """The `with:` params of an llm_jp_eval stage."""

    model: str | None = param(
        default_doc="model/ of the needed stage (or the one `input` names)",
        help='HF model dir, Hub repo id "org/name", or model/ of a needed stage (full weights, or base.json: base '
        "+ the stage's adapter/)",
    )
    input: str | None = param(help="the needed stage whose model/ is evaluated")
    datasets: object = param(
        help="required: a jaster directory as llm-jp-eval's preprocessing writes it (<dir>/{train,dev,test}/, or "
        "<dataset_dir>/<version>/ holding evaluation/), a split directory (…/evaluation/test), one dataset file or "
        "a list of them; relative paths are from the project root"
    )
    split: str = param("test", choices=["test", "dev"], help="test: as llm-jp-eval's evaluator")
    num_few_shots: int = param(
        4,
        min=0,
        help="llm-jp-eval's default: the first n samples of the dataset's train/ file; fewer there is an error",
    )
    max_samples: int | None = param(min=1, default_doc="all", help="samples per dataset")
    max_new_tokens: int | None = param(
        min=1, default_doc="the dataset's output_length", help="as llm-jp-eval's generation"
    )
    use_chat_template: object = param(
        "auto",
        help="auto: true when the model was chat-tuned by sft/dpo (chat_format.json beside its tokenizer), so it is "
        "asked in the chat format it was tuned on; false: the Alpaca-style prompt as plain text (llm-jp-eval "
        "without a custom template), for base models. With the chat template the instruction is the system "
        "message, each few-shot example a user/assistant turn, the sample's input the last user turn; the prompt "
        "recorded per sample is the rendered template",
    )
    categories: object = param(
        {},
        help='{dataset: category} for datasets that are not jaster\'s (a dataset file may also carry a "category" '
        "field); jaster datasets always take llm-jp-eval's category",
    )
    seed: int = param(1234, help="generation seed")


PARAMS = LlmJpEvalParams


def main(ctx: StageContext) -> None:
    from .generation import Generator

    p = ctx.params
    a = ctx.typed_params(LlmJpEvalParams)
    raw = a.datasets
    if raw is None:
        raise InvalidStageInput(
            f"{p.source}: field 'datasets' is required (a jaster directory with train/ and test/, "
            "a split directory, a dataset file, or a list of files)"
        )
    if (
        not isinstance(raw, (str, list))
        or (isinstance(raw, list) and not all(isinstance(x, str) and x for x in raw))
        or raw == ""
    ):
        raise InvalidStageInput(f"{p.source}: field 'datasets' must be a path or a list of paths")
    cats = a.categories
    if not isinstance(cats, dict) or not all(v in jaster.CATEGORIES for v in cats.values()):
        raise InvalidStageInput(
            f"{p.source}: field 'categories' must be an object {{dataset: category}} "
            f"(categories: {', '.join(jaster.CATEGORIES)})"
        )
    datasets = load_datasets(
        [Path(x) for x in (raw if isinstance(raw, list) else [raw])],
        a.split,
        a.num_few_shots,
        cats,
        f"{p.source}: field 'datasets'",
    )
    if not any(scorable(d) for d in datasets):
        raise InvalidStageInput(
            f"{p.source}: field 'datasets': none of {', '.join(d.name for d in datasets)} can be scored in an "
            "llm-jp-eval category; name datasets as jaster does, or give each a category (params 'categories' "
            f"or the file's 'category' field, one of {', '.join(jaster.CATEGORIES)})"
        )
    max_samples = a.max_samples
    max_new_tokens = a.max_new_tokens
    chat_param = a.use_chat_template
    gen = Generator.from_ctx(ctx)
    chat = gen.chat_format is not None if chat_param == "auto" else p.bool("use_chat_template")

    def render(instruction: str, few_shots: list[dict], text: str) -> str:
        if chat:  # the template's text, special tokens included, so complete() sees exactly what chat() would
            return gen.chat_prompt(chat_messages(instruction, few_shots, text))
        return jaster.build_prompt(instruction, few_shots, text)

    def predict(prompt: str, budget: int) -> str:
        return gen.complete(prompt, budget)[0]

    scores = evaluate(
        datasets,
        predict,
        max_samples=max_samples,
        max_new_tokens=max_new_tokens,
        out_dir=ctx.output / "outputs",
        progress=lambda i, n, name: ctx.progress(i, n, message=name),
        metric=ctx.metric,
        render=render,
    )
    scores["num_few_shots"] = a.num_few_shots
    scores["split"] = a.split
    scores["prompt_format"] = "chat template" if chat else "alpaca"
    if gen.chat_format is not None:
        scores["chat_format"] = gen.chat_format
    write_json(ctx.output / "scores.json", scores)
    ctx.artifact("scores.json", f"llm-jp-eval {jaster.LLM_JP_EVAL_VERSION} scores: AVG, categories, datasets")
    for d in datasets:
        ctx.artifact(f"outputs/{d.name}.jsonl", f"{d.name}: prompt, output and scores per sample")
    ctx.metric({"average": scores["average"], **{f"category/{c}": v for c, v in scores["categories"].items()}})
    ctx.result(
        {
            "average": scores["average"],
            "llm_jp_eval_version": jaster.LLM_JP_EVAL_VERSION,
            "categories": scores["categories"],
            **{name: d["score"] for name, d in scores["datasets"].items()},
        }
    )


if __name__ == "__main__":
    run_stage(main)

"""Stage `mt_bench`: Japanese MT-Bench answers, judged by an OpenAI-compatible endpoint, as Stability AI's FastChat
fork (jp-stable) does it; see eval/mtbench.py for the sources of every setting.

params (generated from MtBenchParams; `python -m tanren_stages.protocol` rewrites this block):
  device ("cpu" | "cuda" | "auto"; default "auto"): auto: cuda when the worker has one
  precision ("auto" | "bf16" | "fp16" | "fp32"; default "auto"): auto: bf16 on CUDA, fp16 where bf16 is
      unsupported, fp32 on CPU
  load_in_4bit (bool; default true on CUDA for an adapter trained on a 4-bit base (QLoRA sft/dpo), else false):
      NF4 base (needs CUDA + bitsandbytes)
  model (string; default model/ of the needed stage (or the one `input` names)): HF model dir, Hub repo id
      "org/name", or model/ of a needed stage (full weights, or base.json: base + the stage's adapter/)
  input (string): the needed stage whose model/ answers
  questions (string; required): question.jsonl ({question_id, category, turns})
  reference (string): reference answers jsonl ({question_id, choices:[{turns}]} or {question_id, turns}); with a
      judge, every question in reference_categories must have one (else exit 2)
  max_new_tokens (integer >= 1; default 512): the same for every category (the fork's --max-new-token)
  temperature (number >= 0; default per category): as the fork's temperature_config (writing/roleplay 0.5,
      extraction/stem/humanities 0.2, math/coding/reasoning 0.1, others 0.7); a number here overrides it for
      every category
  top_p (number >= 0, <= 1; default 0.9): the fork's default
  repetition_penalty (number >= 0; default 1.1): the fork's default
  max_questions (integer >= 1; default all): answer only the first n questions
  max_turns (integer >= 1, <= 2; default 2): turns answered per question
  judge (object): {base_url, model, api_key_env (the NAME of an env var holding the key), prompts "en"
      (judge_prompts.jsonl) | "ja" (judge_ja_prompts.jsonl for turn 1), rating_retries 2 (asks again when a
      judgment has no [[rating]]), timeout_s 120, max_retries 3 (HTTP), price_per_1k_input, price_per_1k_output,
      note: "tiny" (the judge is the pipeline's own tiny model: scores.json's judge.note says its scores are not
      meaningful) or any text to record as judge.note}; without base_url and model: no judge
  reference_categories (list; default ["math", "reasoning", "coding"]): categories the judge grades against a
      reference answer
  seed (integer; default 0): torch.manual_seed before each question
(end of params)
Without `judge` the answers are written and the result is {"judge": "not configured", "answered": n}.
Outputs: answers.jsonl (per question: the answers as `turns`, the question's turns as `question`, the reference
answer's turns as `reference` or null, the sampling settings), judgments.jsonl (every judgment: judge model,
prompt name and file, the messages, every reply, the rating), scores.json. Result: score, per-category and per-turn
scores, judge, judge tokens/cost.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .eval import mtbench
from .generation import GenerationParams
from .protocol import InvalidStageInput, StageConfigError, StageContext, param, read_jsonl, run_stage, write_json


class Judge:
    """POSTs chat completions to an OpenAI-compatible endpoint with urllib; counts calls and tokens."""

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float = 120, max_retries: int = 3):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0

    def __call__(self, messages: list[dict]) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "temperature": mtbench.JUDGE_TEMPERATURE,
                "max_tokens": mtbench.JUDGE_MAX_TOKENS,
                "n": 1,
                "messages": messages,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.max_retries):
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    data = json.loads(r.read().decode("utf-8"))
                self.calls += 1
                usage = data.get("usage") or {}
                self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                self.completion_tokens += int(usage.get("completion_tokens") or 0)
                return data["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} from {self.url}"
                if e.code in (401, 403, 404):
                    raise StageConfigError(
                        f"judge: {last} (check judge.base_url, judge.model and the key in judge.api_key_env)"
                    )
            except (
                urllib.error.URLError,
                TimeoutError,
                OSError,
                KeyError,
                IndexError,
                TypeError,
                json.JSONDecodeError,
            ) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(min(30, 2**attempt))
        raise StageConfigError(f"judge at {self.url} failed {self.max_retries} times: {last}")


TINY_JUDGE_NOTE = "the judge is the pipeline's own tiny model: the protocol is real, the scores are not meaningful"


def judge_note(value: str) -> str | None:
    """scores.json's judge.note: the fixed sentence for `note: tiny`, else the user's text (None when empty)."""
    value = value.strip()
    if not value:
        return None
    return TINY_JUDGE_NOTE if value.lower() == "tiny" else value


def url_host(url: str) -> str:
    """host[:port] of a URL: never its user info (a key someone put in the URL), path or query."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return host + (f":{u.port}" if u.port else "")


def load_questions(path: Path, limit: int | None) -> list[dict]:
    qs = []
    for ln, q in read_jsonl(path):
        if (
            not isinstance(q, dict)
            or "question_id" not in q
            or not isinstance(q.get("turns"), list)
            or not q["turns"]
            or not all(isinstance(t, str) for t in q["turns"])
        ):
            raise InvalidStageInput(
                f"{path}:{ln}: need fields question_id, category, turns (a non-empty list of strings)"
            )
        q.setdefault("category", "general")
        qs.append(q)
    return qs[:limit] if limit else qs


def load_references(path: Path | None) -> dict:
    refs = {}
    if path is None:
        return refs
    for ln, r in read_jsonl(path):
        if not isinstance(r, dict):
            raise InvalidStageInput(f"{path}:{ln}: need an object with question_id and turns (or choices[0].turns)")
        turns = r.get("turns") if "turns" in r else ((r.get("choices") or [{}])[0].get("turns"))
        if "question_id" not in r or not isinstance(turns, list):
            raise InvalidStageInput(f"{path}:{ln}: need question_id and turns (or choices[0].turns)")
        refs[r["question_id"]] = turns
    return refs


def judge_answers(
    judge: Judge,
    prompts: dict,
    questions: list[dict],
    answers: list[dict],
    refs: dict,
    ref_cats: list[str],
    rating_retries: int,
    out_file: Path,
    progress=None,
) -> list[dict]:
    """Single-answer grading of every turn (turn 1: single-v1 / single-math-v1; turn 2: the multi-turn prompts);
    each judgment with every reply the judge gave until one had a rating."""
    judgments = []
    with open(out_file, "w", encoding="utf-8") as fh:
        for q, a in zip(questions, answers):
            ref = refs.get(q["question_id"]) if q["category"] in ref_cats else None
            for turn in range(1, min(2, len(a["turns"])) + 1):
                name = mtbench.judge_prompt_name(q["category"], turn, ref_cats)
                prompt = prompts[name]
                messages = mtbench.judge_messages(prompt, q, a["turns"], ref, turn)
                replies, rating = [], None
                for _ in range(1 + rating_retries):
                    text = judge(messages)
                    replies.append(text)
                    rating = mtbench.parse_rating(text)
                    if rating is not None:
                        break
                rec = {
                    "question_id": q["question_id"],
                    "category": q["category"],
                    "turn": turn,
                    "judge": [judge.model, name],
                    "prompt_file": prompt["file"],
                    "prompt_source": f"{mtbench.FASTCHAT_REPO} {mtbench.FASTCHAT_BRANCH}@{mtbench.FASTCHAT_COMMIT}",
                    "system_prompt": messages[0]["content"],
                    "user_prompt": messages[1]["content"],
                    "judgment": replies[-1],
                    "attempts": replies,
                    "rating": rating,
                    "score": rating if rating is not None else -1,  # upstream's -1 for "no rating found"
                    "status": "ok" if rating is not None else "unparsable",
                    "with_reference": ref is not None,
                }
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                judgments.append(rec)
            if progress is not None:
                progress(q)
    return judgments


def summarise(judgments: list[dict]) -> dict:
    """show_result.py: ratings of -1 dropped; the average over every judged turn, and per turn; per category too."""
    ok = [j for j in judgments if j["rating"] is not None]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    cats: dict[str, list[float]] = {}
    for j in ok:
        cats.setdefault(j["category"], []).append(j["rating"])
    return {
        "score": mean([j["rating"] for j in ok]),
        "turn_1": mean([j["rating"] for j in ok if j["turn"] == 1]),
        "turn_2": mean([j["rating"] for j in ok if j["turn"] == 2]),
        "categories": {c: mean(v) for c, v in sorted(cats.items())},
        "unparsable": len(judgments) - len(ok),
        "judged": len(judgments),
    }


@dataclass
class MtBenchParams(GenerationParams):
    """The `with:` params of an mt_bench stage; `judge` stays a plain object, checked field by field in main."""

    model: str | None = param(
        default_doc="model/ of the needed stage (or the one `input` names)",
        help='HF model dir, Hub repo id "org/name", or model/ of a needed stage (full weights, or base.json: base '
        "+ the stage's adapter/)",
    )
    input: str | None = param(help="the needed stage whose model/ answers")
    questions: str = param(required=True, help="question.jsonl ({question_id, category, turns})")
    reference: str | None = param(
        help="reference answers jsonl ({question_id, choices:[{turns}]} or {question_id, turns}); with a judge, "
        "every question in reference_categories must have one (else exit 2)"
    )
    max_new_tokens: int = param(
        mtbench.MAX_NEW_TOKENS, min=1, help="the same for every category (the fork's --max-new-token)"
    )
    temperature: float | None = param(
        min=0,
        default_doc="per category",
        help="as the fork's temperature_config (writing/roleplay 0.5, extraction/stem/humanities 0.2, "
        "math/coding/reasoning 0.1, others 0.7); a number here overrides it for every category",
    )
    top_p: float = param(mtbench.TOP_P, min=0, max=1, help="the fork's default")
    repetition_penalty: float = param(mtbench.REPETITION_PENALTY, min=0, help="the fork's default")
    max_questions: int | None = param(min=1, default_doc="all", help="answer only the first n questions")
    max_turns: int = param(2, min=1, max=2, help="turns answered per question")
    judge: dict | None = param(
        help='{base_url, model, api_key_env (the NAME of an env var holding the key), prompts "en" '
        '(judge_prompts.jsonl) | "ja" (judge_ja_prompts.jsonl for turn 1), rating_retries 2 (asks again when a '
        "judgment has no [[rating]]), timeout_s 120, max_retries 3 (HTTP), price_per_1k_input, price_per_1k_output, "
        "note: \"tiny\" (the judge is the pipeline's own tiny model: scores.json's judge.note says its scores are "
        "not meaningful) or any text to record as judge.note}; without base_url and model: no judge",
    )
    reference_categories: list = param(
        mtbench.NEED_REF_CATS, help="categories the judge grades against a reference answer"
    )
    seed: int = param(mtbench.SEED, help="torch.manual_seed before each question")


PARAMS = MtBenchParams


def main(ctx: StageContext) -> None:
    from .common import set_seed
    from .generation import Generator

    p = ctx.params
    a = ctx.typed_params(MtBenchParams)
    qpath = Path(a.questions)
    if not qpath.is_file():
        raise InvalidStageInput(f"{p.source}: field 'questions': {qpath} does not exist")
    rpath = Path(a.reference) if a.reference is not None else None
    if rpath is not None and not rpath.is_file():
        raise InvalidStageInput(f"{p.source}: field 'reference': {rpath} does not exist")
    questions = load_questions(qpath, a.max_questions)
    refs = load_references(rpath)
    ref_cats = a.reference_categories
    jp = p.sub("judge")
    if jp is not None and not jp.raw("base_url") and not jp.raw("model"):
        # A spec that leaves the judge's params empty (the tiny pipeline's default) has no judge.
        jp = None
    judge = None
    if jp is not None:
        jp.reject_unknown(
            {
                "base_url",
                "model",
                "api_key_env",
                "prompts",
                "rating_retries",
                "timeout_s",
                "max_retries",
                "price_per_1k_input",
                "price_per_1k_output",
                "note",
            }
        )
        key_env = jp.str("api_key_env")
        key = None
        if key_env:
            key = os.environ.get(key_env)
            if not key:
                raise StageConfigError(
                    f"{jp.source}: field 'api_key_env' names {key_env}, which is not set in the worker's environment"
                )
        judge = Judge(
            jp.str("base_url", required=True),
            jp.str("model", required=True),
            key,
            jp.float("timeout_s", 120, min=1),
            jp.int("max_retries", 3, min=1),
        )
        missing = mtbench.missing_references(questions, refs, ref_cats)
        if missing:
            where = f"field 'reference' ({rpath})" if rpath else "field 'reference' (not set)"
            raise InvalidStageInput(
                f"{p.source}: {where}: the judge grades {', '.join(ref_cats)} questions against a reference "
                f"answer, and these have none: {'; '.join(missing)}"
            )
    language = jp.str("prompts", "en", choices=["en", "ja"]) if jp is not None else "en"
    rating_retries = jp.int("rating_retries", 2, min=0) if jp is not None else 0

    gen = Generator.from_ctx(ctx)
    max_new = a.max_new_tokens
    temp_override = a.temperature
    top_p = a.top_p
    rep = a.repetition_penalty
    max_turns = a.max_turns
    seed = a.seed
    answers = []
    with open(ctx.output / "answers.jsonl", "w", encoding="utf-8") as fh:
        for i, q in enumerate(questions):
            temp = mtbench.temperature_for(q["category"]) if temp_override is None else temp_override
            set_seed(seed)  # gen_model_answer.py: torch.manual_seed(choice) before each question's turns
            msgs, outs, ntok = [], [], 0
            for turn in q["turns"][:max_turns]:
                msgs.append({"role": "user", "content": turn})
                text, n = mtbench.sample_chat(gen, msgs, max_new, temp, top_p, rep)
                ntok += n
                outs.append(text)
                msgs.append({"role": "assistant", "content": text})
            rec = {
                "question_id": q["question_id"],
                "category": q["category"],
                "turns": outs,
                "new_tokens": ntok,
                # what was asked and the reference answer, so the report can show them beside the answers
                "question": q["turns"][:max_turns],
                "reference": refs.get(q["question_id"]),
                "generate_params": {
                    "do_sample": temp >= 1e-4,
                    "temperature": temp,
                    "top_p": top_p,
                    "repetition_penalty": rep,
                    "max_new_token": max_new,
                    "seed": seed,
                },
            }
            answers.append(rec)
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            ctx.progress(i + 1, len(questions), message=f"answered {q['question_id']}")
    ctx.artifact("answers.jsonl", "model answers, with each question's sampling settings")
    if judge is None:
        ctx.result({"judge": "not configured", "answered": len(answers)})
        return

    prompts = mtbench.load_prompts(language)
    done = [0]

    def progress(q):
        done[0] += 1
        ctx.progress(done[0], len(questions), message=f"judged {q['question_id']}")

    judgments = judge_answers(
        judge, prompts, questions, answers, refs, ref_cats, rating_retries, ctx.output / "judgments.jsonl", progress
    )
    ctx.artifact("judgments.jsonl", "every judgment: judge, prompt, replies, rating")
    s = summarise(judgments)
    cost = None
    if jp.has("price_per_1k_input") or jp.has("price_per_1k_output"):
        cost = judge.prompt_tokens / 1000 * jp.float(
            "price_per_1k_input", 0.0
        ) + judge.completion_tokens / 1000 * jp.float("price_per_1k_output", 0.0)
    usage = {
        "judge_calls": judge.calls,
        "judge_prompt_tokens": judge.prompt_tokens,
        "judge_completion_tokens": judge.completion_tokens,
        "judge_cost": cost,
    }
    judge_info = {
        "model": judge.model,
        "base_url_host": url_host(judge.url),
        "prompts": language,
        "prompt_files": sorted({j["prompt_file"] for j in judgments}),
        "prompt_source": f"{mtbench.FASTCHAT_REPO} {mtbench.FASTCHAT_BRANCH}@{mtbench.FASTCHAT_COMMIT}",
        "rating_retries": rating_retries,
        "temperature": mtbench.JUDGE_TEMPERATURE,
        "max_tokens": mtbench.JUDGE_MAX_TOKENS,
    }
    note = judge_note(jp.str("note", "") or "")
    if note:
        judge_info["note"] = note
    generation = {
        "temperature": "per category" if temp_override is None else temp_override,
        "temperature_config": mtbench.TEMPERATURE_CONFIG,
        "default_temperature": mtbench.DEFAULT_TEMPERATURE,
        "max_new_tokens": max_new,
        "top_p": top_p,
        "repetition_penalty": rep,
        "seed": seed,
        "max_turns": max_turns,
    }
    write_json(ctx.output / "scores.json", {**s, "judge": judge_info, "generation": generation, **usage})
    ctx.artifact("scores.json", "MT-Bench score: average over judged turns, per turn and per category")
    vals = {f"category/{c}": v for c, v in s["categories"].items()}
    for k in ("score", "turn_1", "turn_2"):
        if s[k] is not None:
            vals[k] = s[k]
    ctx.metric(vals)
    ctx.result(
        {
            "score": s["score"],
            "turn_1": s["turn_1"],
            "turn_2": s["turn_2"],
            "categories": s["categories"],
            "unparsable": s["unparsable"],
            "judge": judge.model,
            "judge_prompts": language,
            **usage,
        }
    )


if __name__ == "__main__":
    run_stage(main)

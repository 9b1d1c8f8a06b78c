"""Stage `mt_bench`: MT-Bench style two-turn answers, judged by an OpenAI-compatible endpoint.

params (defaults):
  model / input     HF model dir, Hub repo id "org/name", or model/ of a needed stage (full weights, or
                    base.json: base + the stage's adapter/)
  precision         "auto" (bf16 on CUDA, fp16 where bf16 is unsupported, fp32 on CPU) | bf16 | fp16 | fp32
  load_in_4bit      NF4 base (needs CUDA + bitsandbytes); default: true on CUDA for an adapter trained
                    on a 4-bit base (QLoRA sft/dpo), else false
  questions         question.jsonl ({question_id, category, turns[2]}); required
  reference         reference answers jsonl ({question_id, choices:[{turns}]} or {question_id, turns}),
                    used for the categories in reference_categories (math, reasoning, coding)
  max_new_tokens    512; temperature 0.0 (greedy); max_questions (all)
  judge             {base_url, model, api_key_env (the NAME of an env var holding the key), timeout_s 120,
                     max_retries 3, price_per_1k_input, price_per_1k_output}
Without `judge` the answers are written and the result is {"judge": "not configured"}.
Outputs: answers.jsonl, judgments.jsonl, scores.json. Result: score, per-category scores, judge tokens/cost.
"""
from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from .protocol import InvalidStageInput, StageConfigError, StageContext, read_jsonl, run_stage, write_json

REFERENCE_CATEGORIES = ["math", "reasoning", "coding"]
JUDGE_SYSTEM = "You are a helpful assistant."
_INSTRUCTION = ("Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user "
                "question displayed below. {focus}Begin your evaluation by providing a short explanation. Be as objective as possible. "
                "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "
                "\"[[rating]]\", for example: \"Rating: [[5]]\".")
_GENERAL = ("Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of "
            "detail of the response. ")
_REF = ("Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant's "
        "answer. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and correct any mistakes. ")
_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(text: str) -> float | None:
    """The judge's [[n]] rating (1–10), else a single-bracket [n], else None (unparsable)."""
    for pat in (_SCORE, _SCORE_BACKUP):
        m = pat.findall(text or "")
        if m:
            try:
                v = float(m[-1] if pat is _SCORE else m[0])
            except ValueError:
                continue
            if 0 <= v <= 10:
                return v
    return None


def judge_prompt(question: dict, answers: list[str], turn: int, reference: list[str] | None) -> str:
    """FastChat single-answer grading prompt; turn 2 shows the whole conversation and asks about the second answer."""
    focus = _REF if reference else _GENERAL
    if turn == 1:
        body = f"[Question]\n{question['turns'][0]}\n\n"
        if reference:
            body += f"[The Start of Reference Answer]\n{reference[0]}\n[The End of Reference Answer]\n\n"
        body += f"[The Start of Assistant's Answer]\n{answers[0]}\n[The End of Assistant's Answer]"
        return "[Instruction]\n" + _INSTRUCTION.format(focus=focus) + "\n\n" + body
    focus2 = focus + "You evaluate the second user question. "
    conv = (f"<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question['turns'][0]}\n\n### Assistant A:\n{answers[0]}\n\n"
            f"### User:\n{question['turns'][1]}\n\n### Assistant A:\n{answers[1]}\n\n<|The End of Assistant A's Conversation with User|>")
    ref = ""
    if reference and len(reference) > 1:
        ref = (f"<|The Start of Reference Answer|>\n\n### User:\n{question['turns'][0]}\n\n### Reference answer:\n{reference[0]}\n\n"
               f"### User:\n{question['turns'][1]}\n\n### Reference answer:\n{reference[1]}\n\n<|The End of Reference Answer|>\n\n")
    return "[Instruction]\n" + _INSTRUCTION.format(focus=focus2) + "\n\n" + ref + conv


class Judge:
    """POSTs chat completions to an OpenAI-compatible endpoint with urllib; counts tokens."""

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float = 120, max_retries: int = 3):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0

    def __call__(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 2048,
                           "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]}).encode()
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
                    raise StageConfigError(f"judge: {last} (check judge.base_url, judge.model and the key in judge.api_key_env)")
            except (urllib.error.URLError, TimeoutError, OSError, KeyError, IndexError, json.JSONDecodeError) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(min(30, 2 ** attempt))
        raise StageConfigError(f"judge at {self.url} failed {self.max_retries} times: {last}")


def load_questions(path: Path, limit: int | None) -> list[dict]:
    qs = []
    for ln, q in read_jsonl(path):
        if not isinstance(q, dict) or "question_id" not in q or not isinstance(q.get("turns"), list) or not q["turns"]:
            raise InvalidStageInput(f"{path}:{ln}: need fields question_id, category, turns (a non-empty list)")
        q.setdefault("category", "general")
        qs.append(q)
    return qs[:limit] if limit else qs


def load_references(path: Path | None) -> dict:
    refs = {}
    if path is None:
        return refs
    for ln, r in read_jsonl(path):
        turns = r.get("turns") if "turns" in r else ((r.get("choices") or [{}])[0].get("turns"))
        if "question_id" not in r or not isinstance(turns, list):
            raise InvalidStageInput(f"{path}:{ln}: need question_id and turns (or choices[0].turns)")
        refs[r["question_id"]] = turns
    return refs


def main(ctx: StageContext) -> None:
    from .generation import Generator

    p = ctx.params
    p.reject_unknown({"model", "input", "questions", "reference", "max_new_tokens", "temperature", "max_questions", "judge",
                      "reference_categories", "device", "seed", "precision", "load_in_4bit"})
    qpath = Path(p.str("questions", required=True))
    if not qpath.is_file():
        raise InvalidStageInput(f"{p.source}: field 'questions': {qpath} does not exist")
    rpath = Path(p.str("reference")) if p.has("reference") else None
    if rpath is not None and not rpath.is_file():
        raise InvalidStageInput(f"{p.source}: field 'reference': {rpath} does not exist")
    questions = load_questions(qpath, p.int("max_questions", None, min=1))
    refs = load_references(rpath)
    ref_cats = p.list("reference_categories", REFERENCE_CATEGORIES)
    jp = p.sub("judge")
    if jp is not None and not jp.raw("base_url") and not jp.raw("model"):
        # A spec that leaves the judge's params empty (the tiny pipeline's default) has no judge.
        jp = None
    judge = None
    if jp is not None:
        key_env = jp.str("api_key_env")
        key = None
        if key_env:
            key = os.environ.get(key_env)
            if not key:
                raise StageConfigError(f"{jp.source}: field 'api_key_env' names {key_env}, which is not set in the worker's environment")
        judge = Judge(jp.str("base_url", required=True), jp.str("model", required=True), key,
                      jp.float("timeout_s", 120, min=1), jp.int("max_retries", 3, min=1))

    gen = Generator.from_ctx(ctx)
    max_new = p.int("max_new_tokens", 512, min=1)
    temp = p.float("temperature", 0.0, min=0)
    answers = []
    with open(ctx.output / "answers.jsonl", "w", encoding="utf-8") as fh:
        for i, q in enumerate(questions):
            msgs, outs, ntok = [], [], 0
            for turn in q["turns"][:2]:
                msgs.append({"role": "user", "content": turn})
                text, n = gen.chat(msgs, max_new, temp)
                ntok += n
                outs.append(text.strip())
                msgs.append({"role": "assistant", "content": text.strip()})
            rec = {"question_id": q["question_id"], "category": q["category"], "turns": outs, "new_tokens": ntok}
            answers.append(rec)
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            ctx.progress(i + 1, len(questions), message=f"answered {q['question_id']}")
    ctx.artifact("answers.jsonl", "model answers (two turns)")
    if judge is None:
        ctx.result({"judge": "not configured", "answered": len(answers)})
        return

    judgments, by_cat, unparsable = [], {}, 0
    with open(ctx.output / "judgments.jsonl", "w", encoding="utf-8") as fh:
        for q, a in zip(questions, answers):
            ref = refs.get(q["question_id"]) if q["category"] in ref_cats else None
            for turn in range(1, len(a["turns"]) + 1):
                text = judge(judge_prompt(q, a["turns"], turn, ref))
                rating = parse_rating(text)
                rec = {"question_id": q["question_id"], "category": q["category"], "turn": turn, "rating": rating,
                       "status": "ok" if rating is not None else "unparsable", "with_reference": ref is not None, "judgment": text}
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                judgments.append(rec)
                if rating is None:
                    unparsable += 1
                else:
                    by_cat.setdefault(q["category"], []).append(rating)
            ctx.progress(len(judgments), 2 * len(questions), message=f"judged {q['question_id']}")
    cats = {c: sum(v) / len(v) for c, v in sorted(by_cat.items())}
    all_r = [r for v in by_cat.values() for r in v]
    score = sum(all_r) / len(all_r) if all_r else None
    cost = None
    if jp.has("price_per_1k_input") or jp.has("price_per_1k_output"):
        cost = judge.prompt_tokens / 1000 * jp.float("price_per_1k_input", 0.0) + judge.completion_tokens / 1000 * jp.float("price_per_1k_output", 0.0)
    usage = {"judge_calls": judge.calls, "judge_prompt_tokens": judge.prompt_tokens, "judge_completion_tokens": judge.completion_tokens,
             "judge_cost": cost}
    write_json(ctx.output / "scores.json", {"score": score, "categories": cats, "unparsable": unparsable, **usage})
    ctx.artifact("scores.json", "per-category and overall MT-Bench scores")
    ctx.metric({"score": score, **{f"category/{c}": v for c, v in cats.items()}} if score is not None else {f"category/{c}": v for c, v in cats.items()})
    ctx.result({"score": score, "categories": cats, "unparsable": unparsable, "judge": jp.str("model"), **usage})


if __name__ == "__main__":
    run_stage(main)

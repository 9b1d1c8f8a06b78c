"""Japanese MT-Bench as Stability AI's FastChat fork runs it (the `jp-stable` branch, FASTCHAT_COMMIT).

Sources, all in github.com/Stability-AI/FastChat at FASTCHAT_COMMIT:
  fastchat/llm_judge/common.py        temperature_config, NEED_REF_CATS, one_score_pattern(_backup), run_judge_single
                                      (system prompt from the template, judge temperature 0 and max_tokens 2048),
                                      check_data (a reference-based question without a reference answer is an error)
  fastchat/llm_judge/gen_model_answer.py  sampling: temperature from temperature_config (0.7 for other categories),
                                      do_sample when temperature >= 1e-4, --max-new-token 512 for every category,
                                      --top-p 0.9, --repetition-penalty 1.1, torch.manual_seed(choice index) per question
  fastchat/llm_judge/gen_judgment.py  single-answer grading: single-v1 / single-math-v1 for turn 1, the
                                      *-multi-turn prompts for turn 2; math-style prompts for NEED_REF_CATS
  fastchat/llm_judge/data/judge_prompts.jsonl, judge_ja_prompts.jsonl  the prompts (the single-* lines are copied
                                      unchanged into judge_prompts.jsonl / judge_ja_prompts.jsonl beside this file)
  fastchat/llm_judge/show_result.py   scores of -1 (no rating found) are dropped before averaging

Differences, on purpose: where upstream records -1 for a judgment without a rating, tanren asks the judge again
(`rating_retries` times) before recording it as unparsable; the Japanese prompt file has no multi-turn prompts, so
with `prompts: ja` turn 2 is judged with the English multi-turn prompts (upstream cannot judge turn 2 with it).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

FASTCHAT_REPO = "https://github.com/Stability-AI/FastChat"
FASTCHAT_BRANCH = "jp-stable"
FASTCHAT_COMMIT = "e37eb28ee490480f6f4989274ed47c55f7dfce82"

# fastchat/llm_judge/common.py (jp-stable): "Sampling temperature configs for" each category.
TEMPERATURE_CONFIG = {
    "writing": 0.5,
    "roleplay": 0.5,
    "extraction": 0.2,
    "math": 0.1,
    "coding": 0.1,
    "reasoning": 0.1,
    "stem": 0.2,
    "humanities": 0.2,
}
DEFAULT_TEMPERATURE = 0.7  # gen_model_answer.py: a category not in temperature_config
MAX_NEW_TOKENS = (
    512  # gen_model_answer.py --max-new-token: the same for every category (the fork sets no per-category limit)
)
TOP_P = 0.9  # gen_model_answer.py --top-p
REPETITION_PENALTY = 1.1  # gen_model_answer.py --repetition-penalty
SEED = 0  # gen_model_answer.py: torch.manual_seed(i) for choice i (one choice) before each question
NEED_REF_CATS = ["math", "reasoning", "coding"]  # common.py

JUDGE_TEMPERATURE = 0  # common.py run_judge_single → chat_compeletion_openai(..., temperature=0, max_tokens=2048)
JUDGE_MAX_TOKENS = 2048

_HERE = Path(__file__).resolve().parent
PROMPT_FILES = {"en": "judge_prompts.jsonl", "ja": "judge_ja_prompts.jsonl"}


def load_prompts(language: str = "en") -> dict[str, dict]:
    """The single-answer grading prompts by name; for "ja" the Japanese turn-1 prompts over the English set."""

    def read(fname: str) -> dict[str, dict]:
        out = {}
        for line in (_HERE / fname).read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                out[d["name"]] = {**d, "file": fname}
        return out

    prompts = read(PROMPT_FILES["en"])
    if language == "ja":
        prompts.update(read(PROMPT_FILES["ja"]))
    return prompts


def temperature_for(category: str) -> float:
    return TEMPERATURE_CONFIG.get(category, DEFAULT_TEMPERATURE)


# common.py: one_score_pattern / one_score_pattern_backup
ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(judgment: str) -> float | None:
    """common.py run_judge_single: the FIRST [[n]] (re.search), else the first [n]; ast.literal_eval of the number.
    None where upstream records -1 (no match)."""
    m = ONE_SCORE.search(judgment or "") or ONE_SCORE_BACKUP.search(judgment or "")
    if not m:
        return None
    return float(ast.literal_eval(m.groups()[0]))


def judge_prompt_name(category: str, turn: int, ref_categories: list[str] = NEED_REF_CATS) -> str:
    """gen_judgment.py make_judge_single: math-style (reference-based) prompts for ref_categories, multi-turn for turn 2."""
    base = "single-math-v1" if category in ref_categories else "single-v1"
    return base + ("-multi-turn" if turn == 2 else "")


def judge_messages(
    prompt: dict, question: dict, answers: list[str], reference: list[str] | None, turn: int
) -> list[dict]:
    """common.py run_judge_single: the template's system_prompt as the system message, the filled template as the
    user message (conv.set_system_message + to_openai_api_messages)."""
    kwargs = {}
    if reference is not None:
        kwargs = {"ref_answer_1": reference[0], "ref_answer_2": reference[1] if len(reference) > 1 else ""}
    if turn == 2:
        user = prompt["prompt_template"].format(
            question_1=question["turns"][0],
            question_2=question["turns"][1],
            answer_1=answers[0],
            answer_2=answers[1],
            **kwargs,
        )
    else:
        user = prompt["prompt_template"].format(question=question["turns"][0], answer=answers[0], **kwargs)
    return [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}]


def missing_references(questions: list[dict], refs: dict, ref_categories: list[str]) -> list[str]:
    """common.py check_data: every question in a reference category needs a reference answer (one per judged turn)."""
    bad = []
    for q in questions:
        if q["category"] not in ref_categories:
            continue
        r = refs.get(q["question_id"])
        turns = min(2, len(q["turns"]))
        if r is None:
            bad.append(f"{q['question_id']} ({q['category']}: no reference answer)")
        elif len(r) < turns or not all(isinstance(x, str) for x in r[:turns]):
            bad.append(f"{q['question_id']} ({q['category']}: reference has {len(r)} turn(s), the question {turns})")
    return bad


def sample_chat(
    gen,
    messages: list[dict],
    max_new_tokens: int,
    temperature: float,
    top_p: float = TOP_P,
    repetition_penalty: float = REPETITION_PENALTY,
) -> tuple[str, int]:
    """One assistant turn as gen_model_answer.py generates it: sampled (temperature, top_p) when temperature >= 1e-4,
    greedy otherwise, with the repetition penalty either way. `gen` is a generation.Generator (model, tokenizer);
    the caller seeds torch per question."""
    import torch

    tok = gen.tok
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    budget = max(1, min(max_new_tokens, gen.max_positions - 1))
    keep = gen.max_positions - budget
    if ids.shape[1] > keep:  # keep the end of an over-long conversation
        ids = ids[:, -keep:]
    ids = ids.to(gen.device)
    stop = [
        t
        for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
        if isinstance(t, int) and t >= 0 and t != tok.unk_token_id
    ]
    kw = dict(
        max_new_tokens=budget,
        pad_token_id=tok.pad_token_id,
        eos_token_id=stop or None,
        attention_mask=torch.ones_like(ids),
        repetition_penalty=repetition_penalty,
    )
    if temperature >= 1e-4:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = gen.model.generate(ids, **kw)
    new = out[0, ids.shape[1] :]
    return tok.decode(new, skip_special_tokens=True).strip(), int(new.shape[0])

#!/usr/bin/env python3
"""GPU check of the QLoRA route: do answers of a QLoRA-SFT'd model end at the end-of-turn token of the chat
format it was tuned in? (entry point: bench/gpu/qlora-eot.sh)

llm-jp-3's tokenizer has a chat template without {% generation %} markers, so `sft` with `chat_template: auto`
switches it to ChatML and adds <|im_start|>/<|im_end|> to the vocabulary. LoRA on the linear layers alone would
leave those new embedding / LM-head rows as initialised, and the tuned model could not end a turn; hf_train trains
them (peft trainable_token_indices, the untied LM head as modules_to_save). `chat_template: llm-jp` instead ends a
turn with EOS and adds no token. This script checks both routes on a real 4-bit base:

1. builds a tiny random Llama in llm-jp-3's shape (untied LM head, <s>/</s>/<unk>/<pad>, a chat template in
   llm-jp-3's "### 指示 / ### 応答" layout without generation markers) and a BPE tokenizer trained here on
   data/sft/chat.jsonl, saved under $OUT/base: nothing is downloaded;
2. per route, runs the `sft` stage as the worker does (its own process, TANREN_* environment, params file,
   events file) with `load_in_4bit: true`, LoRA on all linear layers, data/sft/chat.jsonl; the adapter is
   not merged into the 4-bit base (adapter/ + model/base.json, as on the QLoRA route);
3. loads base (NF4) + adapter as the eval stages do (generation.Generator) and answers a few prompts greedily
   through Generator.chat, recording the ids it generated;
4. PASS when every answer is non-empty and ends at the route's end-of-turn token (<|im_end|> for ChatML, EOS for
   llm-jp) before the token budget, and the model was trained and loaded 4-bit, in the format it was tuned in.

The last line on stdout is the verdict as JSON ({"status": "PASS" | "FAIL" | "SKIPPED" | "ERROR", ...}), also
written to $OUT/qlora-eot.json. Exit status: 0 PASS, 1 FAIL, 2 ERROR (a stage failed, a package is missing),
77 SKIPPED: no CUDA device (the check needs bitsandbytes' CUDA kernels).

--cpu-smoke: the same flow on the CPU with plain LoRA (no 4-bit: the route QLoRA takes except the quantisation,
adapter likewise not merged), to test this script where no GPU is lent. It is not the QLoRA check and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# bench/gpu holds profile.py, which would shadow the stdlib `profile` (cProfile imports it): keep it off sys.path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO / "stages"))

EXIT = {"PASS": 0, "FAIL": 1, "ERROR": 2, "SKIPPED": 77}
DATA = REPO / "data" / "sft" / "chat.jsonl"
ROUTES = {  # route → (sft's chat_template param, the format it should end up tuned in, its end-of-turn token)
    "chatml": ("auto", "chatml", "<|im_end|>"),
    "llm-jp": ("llm-jp", "llm-jp", None),  # None: the tokenizer's EOS
}
PROMPTS = [  # four seen in training, one not (the same pattern): the check is about ending the turn, not knowledge
    "東京は何地方にありますか？",
    "大阪は何地方にありますか？",
    "文学について一言で説明してください。",
    "札幌は何地方にありますか？",
    "奈良は何地方にありますか？",
]
MAX_NEW_TOKENS = 32
# A chat template in llm-jp-3's layout (system text, "### 指示:", "### 応答:", EOS after the answer) without the
# {% generation %} markers TRL's assistant-only loss needs: what sft's `chat_template: auto` meets on llm-jp-3.
BASE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '\n\n### 指示:\n' + m['content'] }}"
    "{% else %}{{ '\n\n### 応答:\n' + m['content'] + eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '\n\n### 応答:\n' }}{% endif %}"
)


def say(msg: str) -> None:
    print(f"[qlora-eot] {msg}", file=sys.stderr, flush=True)


def verdict(out: Path, status: str, **fields) -> int:
    doc = {"check": "qlora-end-of-turn", "status": status, **fields}
    (out / "qlora-eot.json").write_text(
        json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    print(json.dumps(doc, ensure_ascii=False), flush=True)
    return EXIT[status]


def build_base(root: Path, seed: int) -> Path:
    """A random 2-layer Llama shaped like llm-jp-3 (untied head) and its BPE tokenizer, saved to root/base."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    texts = [
        m["content"]
        for line in DATA.read_text(encoding="utf-8").splitlines()
        for m in json.loads(line)["messages"]
    ]
    texts += PROMPTS + ["### 指示:", "### 応答:"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tok.chat_template = BASE_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,  # as llm-jp-3
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    d = root / "base"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def run_sft(
    work: Path, python: str, params: dict, device: str, timeout: float
) -> tuple[int, list[dict], str]:
    """The sft stage in its own process, with the environment and files the worker gives a stage."""
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("out", "ckpt", "inputs"):
        (work / sub).mkdir(exist_ok=True)
    (work / "params.json").write_text(
        json.dumps(params, ensure_ascii=False), encoding="utf-8"
    )
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO / "stages"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TANREN_RUN_ID="qlora-eot",
        TANREN_PIPELINE="qlora-eot",
        TANREN_STAGE_ID=work.name,
        TANREN_ATTEMPT="1",
        TANREN_PARAMS=str(work / "params.json"),
        TANREN_INPUTS=str(work / "inputs"),
        TANREN_OUTPUT=str(work / "out"),
        TANREN_CHECKPOINTS=str(work / "ckpt"),
        TANREN_EVENTS=str(work / "events.jsonl"),
        TANREN_DEVICE=device,
    )
    try:
        proc = subprocess.run(
            [python, "-m", "tanren_stages.sft"],
            check=False,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = (
            124,
            (e.stderr or b"").decode("utf-8", "replace")
            if isinstance(e.stderr, bytes)
            else (e.stderr or ""),
        )
    events_file = work / "events.jsonl"
    events = (
        [
            json.loads(x)
            for x in events_file.read_text(encoding="utf-8").splitlines()
            if x.strip()
        ]
        if events_file.exists()
        else []
    )
    (work / "stderr.log").write_text(err, encoding="utf-8")
    return rc, events, err


def answer(gen, prompt: str) -> dict:
    """Generator.chat (the eval stages' path) on one prompt, with the ids it generated."""
    seen: dict = {}
    generate = gen.model.generate

    def spy(*args, **kwargs):
        out = generate(*args, **kwargs)
        seen["ids"], seen["stop"] = out, kwargs.get("eos_token_id")
        return out

    gen.model.generate = spy
    try:
        text, n = gen.chat([{"role": "user", "content": prompt}], MAX_NEW_TOKENS)
    finally:
        gen.model.generate = generate
    new = seen["ids"][0, -n:].tolist()
    return {
        "prompt": prompt,
        "answer": text,
        "tokens": n,
        "last_id": new[-1],
        "last": gen.tok.convert_ids_to_tokens(new[-1]),
        "stop_ids": seen["stop"],
    }


def check_route(
    route: str, base: Path, out: Path, python: str, device: str, args
) -> dict:
    from tanren_stages.common import model_source_at
    from tanren_stages.generation import Generator

    template, fmt, eot_token = ROUTES[route]
    params = {
        "model": str(base),
        "data": str(DATA),
        "chat_template": template,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "max_steps": args.steps,
        "lr": args.lr,
        "micro_batch_size": 8,
        "max_length": 96,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
        "eval_fraction": 0,
        "log_every": 10,
        "seed": args.seed,
    }
    if args.cpu_smoke:
        params.update(
            device="cpu",
            merge_adapter=False,
            threads=max(1, min(4, os.cpu_count() or 1)),
        )
    else:
        params.update(device="cuda", load_in_4bit=True)
    t0 = time.monotonic()
    rc, events, err = run_sft(
        out / f"sft-{route}", python, params, device, args.stage_timeout
    )
    res = {
        "route": route,
        "chat_template_param": template,
        "sft_rc": rc,
        "sft_s": round(time.monotonic() - t0, 1),
    }
    results = [e["values"] for e in events if e.get("event") == "result"]
    if rc != 0 or not results:
        errors = [e for e in events if e.get("event") == "error"]
        res.update(
            error=(errors[-1]["message"] if errors else "no result event"),
            stderr_tail=err[-2000:],
        )
        return res
    res["sft"] = results[-1]
    model_dir = out / f"sft-{route}" / "out" / "model"
    pointer = model_dir / "base.json"
    res["adapter_unmerged"] = pointer.exists()
    res["pointer_4bit"] = (
        bool(json.loads(pointer.read_text())["load_in_4bit"])
        if pointer.exists()
        else False
    )
    fmt_file = model_dir.parent / "adapter" / "chat_format.json"
    res["tuned_format"] = (
        json.loads(fmt_file.read_text())["format"] if fmt_file.exists() else None
    )
    source = model_source_at(model_dir, f"sft-{route}")
    gen = Generator(
        source, device, args.seed, load_in_4bit=None, where=f"sft-{route}"
    )  # None: as trained
    res["generator_4bit"] = bool(
        getattr(gen.model, "is_loaded_in_4bit", False)
        or getattr(
            getattr(gen.model, "get_base_model", lambda: None)(),
            "is_loaded_in_4bit",
            False,
        )
    )
    eot_id = (
        gen.tok.eos_token_id
        if eot_token is None
        else gen.tok.convert_tokens_to_ids(eot_token)
    )
    res["end_of_turn"] = {"token": gen.tok.convert_ids_to_tokens(eot_id), "id": eot_id}
    res["answers"] = [answer(gen, p) for p in PROMPTS]
    for a in res["answers"]:
        a["ends_at_end_of_turn"] = (
            a["last_id"] == eot_id and a["tokens"] < MAX_NEW_TOKENS
        )
        a["nonempty"] = a["tokens"] >= 2 and bool(
            a["answer"].strip()
        )  # a turn ended at once is no answer
    want_4bit = not args.cpu_smoke
    res["checks"] = {
        "trained": res["sft"].get("steps") == args.steps
        and res["sft"].get("lora") is True,
        "tuned_in_format": res["tuned_format"] == fmt,
        "adapter_not_merged": res["adapter_unmerged"],
        "base_4bit_in_training": res["pointer_4bit"] == want_4bit,
        "base_4bit_in_generation": res["generator_4bit"] == want_4bit,
        "every_answer_ends_at_end_of_turn": all(
            a["ends_at_end_of_turn"] for a in res["answers"]
        ),
        "every_answer_nonempty": all(a["nonempty"] for a in res["answers"]),
    }
    res["pass"] = all(res["checks"].values())
    del gen
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="plain LoRA on the CPU: tests this script, not QLoRA",
    )
    ap.add_argument(
        "--routes",
        default="chatml,llm-jp",
        help="comma-separated: chatml (chat_template auto), llm-jp",
    )
    ap.add_argument(
        "--steps", type=int, default=150, help="sft optimizer steps per route"
    )
    ap.add_argument("--lr", type=float, default=5e-3, help="sft learning rate")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--stage-timeout", type=float, default=600, help="seconds per sft run"
    )
    args = ap.parse_args()
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="qlora-eot-"))
    out.mkdir(parents=True, exist_ok=True)
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    bad = [r for r in routes if r not in ROUTES]
    if bad or not routes:
        return verdict(
            out,
            "ERROR",
            reason=f"--routes: unknown {bad or 'none'}; choose from {', '.join(ROUTES)}",
        )
    mode = (
        "cpu-smoke (plain LoRA, no 4-bit: not the QLoRA check)"
        if args.cpu_smoke
        else "qlora (NF4 base on CUDA)"
    )
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return verdict(
            out,
            "ERROR",
            mode=mode,
            reason=f"torch does not import under {sys.executable} ({e}); "
            "run with PYTHON=$(infra/install-stages | tail -1)",
        )
    info = {
        "mode": mode,
        "torch": torch.__version__,
        "python": sys.executable,
        "out_dir": str(out),
    }
    if not args.cpu_smoke:
        if not torch.cuda.is_available():
            say(
                "no CUDA device: skipped (this check needs a GPU; --cpu-smoke tests the script without one)"
            )
            return verdict(out, "SKIPPED", reason="no CUDA device: skipped", **info)
        info["device"] = torch.cuda.get_device_name(0)
        try:
            import bitsandbytes

            info["bitsandbytes"] = bitsandbytes.__version__
        except Exception as e:  # noqa: BLE001
            return verdict(
                out,
                "ERROR",
                reason=f"bitsandbytes does not import ({e}): the 4-bit route needs it",
                **info,
            )
    device = "cpu" if args.cpu_smoke else "cuda"
    try:
        import peft
        import transformers
        import trl

        info.update(
            transformers=transformers.__version__,
            peft=peft.__version__,
            trl=trl.__version__,
        )
    except Exception as e:  # noqa: BLE001
        return verdict(
            out, "ERROR", reason=f"a training package does not import ({e})", **info
        )
    say(f"{mode}; OUT={out}")
    base = build_base(out, args.seed)
    say(f"tiny llm-jp-3-shaped base in {base}")
    routes_out = []
    for route in routes:
        say(
            f"route {route}: sft ({args.steps} steps), then answers through Generator.chat"
        )
        r = check_route(route, base, out, sys.executable, device, args)
        routes_out.append(r)
        if "error" in r:
            say(f"route {route}: sft failed (rc {r['sft_rc']}): {r['error']}")
            return verdict(
                out,
                "ERROR",
                reason=f"route {route}: sft failed: {r['error']}",
                routes=routes_out,
                **info,
            )
        ends = sum(a["ends_at_end_of_turn"] for a in r["answers"])
        say(
            f"route {route}: {ends}/{len(r['answers'])} answers end at {r['end_of_turn']['token']}; checks {r['checks']}"
        )
    status = "PASS" if all(r["pass"] for r in routes_out) else "FAIL"
    return verdict(out, status, routes=routes_out, **info)


if __name__ == "__main__":
    try:
        code = main()
    except Exception as e:  # noqa: BLE001  (a crash is an ERROR, never a FAIL)
        import traceback

        traceback.print_exc()
        print(
            json.dumps(
                {
                    "check": "qlora-end-of-turn",
                    "status": "ERROR",
                    "reason": f"{type(e).__name__}: {e}",
                }
            ),
            flush=True,
        )
        code = EXIT["ERROR"]
    sys.exit(code)

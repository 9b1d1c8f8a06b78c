#!/usr/bin/env python3
"""GPU profile of the built-in `preflight` and `pretrain` stages (entry point: bench/gpu/profile.sh).

Runs the real stage programs through the stage protocol (TANREN_* env, params file, events
file), one process per run, each under a hard timeout and a global time budget, and writes
under $OUT:
  report.json        the preflight stage's report
  gpu-profile.json   every figure (per run: tokens/s, step time, peak memory, losses, estimates)
  gpu-profile.md     a table ready to paste into bench/README.md
  events.jsonl       the events file of the main run (RTX-3090 profile, bf16)
  profile.log        the tail of each stage's stdout/stderr

Only the standard library is used here (numpy is imported lazily to write the dataset), so
this orchestrator runs under any python3; the stages run under $PYTHON (default python3).

--cpu-smoke: the same flow with tiny configs and TANREN_DEVICE=cpu, for testing without a GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# this file is named like the stdlib's `profile` (imported by cProfile): keep its folder off sys.path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
T0 = time.monotonic()

# ---------------------------------------------------------------------------------------------
# Hardware figures (dense, no sparsity), used only for MFU and the RTX 3090 extrapolation.
# fp32 training in torch runs matmuls in true fp32 (TF32 off by default), so fp32 peak = CUDA cores.
GPUS = [  # (name substring, bf16 TFLOP/s, fp32 TFLOP/s, memory GB/s)
    ("H100 PCIe", 756.0, 51.0, 2000.0),
    ("H100 NVL", 835.0, 60.0, 3900.0),
    ("GH200", 989.0, 67.0, 4000.0),
    ("H200", 989.0, 67.0, 4800.0),
    ("H100", 989.0, 67.0, 3350.0),
    ("A100", 312.0, 19.5, 2000.0),
    ("RTX 3090", 71.0, 35.6, 936.0),
]
RTX3090 = {"name": "NVIDIA GeForce RTX 3090", "bf16_tflops": 71.0, "fp32_tflops": 35.6, "mem_gbps": 936.0,
           "vram_gib": 24.0, "usable_gib": 23.0}  # ~0.5-1 GiB goes to the CUDA context, display, fragmentation


def gpu_spec(name: str | None) -> dict | None:
    for sub, bf16, fp32, bw in GPUS:
        if name and sub.lower() in name.lower():
            return {"match": sub, "bf16_tflops": bf16, "fp32_tflops": fp32, "mem_gbps": bw}
    return None


# ---------------------------------------------------------------------------------------------
# Configs. "main" is the RTX-3090 profile of pipelines/wiki40b-ja.rtx3090.yaml: a ~340M-parameter
# Llama (hidden 1024, 24 layers, 16 heads, intermediate 2816, vocab 32000) at seq 2048, micro-batch 2
# (that pipeline accumulates 32 micro-batches per step; here every step is one micro-batch, which
# changes neither tokens/s nor peak memory much). Its alternatives: micro-batch 4 without and
# micro-batch 8 with gradient checkpointing.
VOCAB = 32000
MAIN = dict(hidden_size=1024, intermediate_size=2816, num_layers=24, num_heads=16, seq_len=2048, micro_batch_size=2)
SMALL = dict(hidden_size=512, num_layers=8, num_heads=8, seq_len=1024, micro_batch_size=16)
COMMON = dict(lr=6e-4, log_every=1, seed=1234)

GPU_RUNS = [  # priority order: later runs are skipped when the time budget runs short
    dict(name="main-bf16", main=True, params=dict(MAIN, precision="bf16", max_steps=60, warmup_steps=10, checkpoint_every=30),
         timeout=120, need=40),
    dict(name="main-fp32", params=dict(MAIN, precision="fp32", max_steps=16, warmup_steps=3), timeout=100, need=35),
    dict(name="main-bf16-gc-mbs8", params=dict(MAIN, micro_batch_size=8, precision="bf16", gradient_checkpointing=True, max_steps=25,
                                               warmup_steps=5), timeout=100, need=30),
    dict(name="main-bf16-mbs4", params=dict(MAIN, micro_batch_size=4, precision="bf16", max_steps=30, warmup_steps=5), timeout=100, need=30),
    dict(name="small-bf16", params=dict(SMALL, precision="bf16", max_steps=60, warmup_steps=10), timeout=60, need=20),
    dict(name="main-bf16-nondet", params=dict(MAIN, precision="bf16", deterministic=False, max_steps=40, warmup_steps=5),
         timeout=100, need=30),
]

TINY = dict(hidden_size=64, num_layers=2, num_heads=4, seq_len=128, micro_batch_size=4)
CPU_RUNS = [  # same shapes of experiment, tiny model; bf16 is not available on CPU so "auto" (= fp32) stands in
    dict(name="main-bf16", main=True, params=dict(TINY, precision="auto", max_steps=12, warmup_steps=2, checkpoint_every=6, threads=2),
         timeout=90, need=10),
    dict(name="main-fp32", params=dict(TINY, precision="fp32", max_steps=6, warmup_steps=1, threads=2), timeout=60, need=10),
    dict(name="main-bf16-gc-mbs8", params=dict(TINY, micro_batch_size=8, precision="auto", gradient_checkpointing=True, max_steps=6, warmup_steps=1, threads=2),
         timeout=60, need=10),
]


def remaining(budget: float) -> float:
    return budget - (time.monotonic() - T0)


def log(msg: str) -> None:
    print(f"[profile {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Running one stage under the protocol, with a hard timeout.

CURRENT: list = [None]  # the running stage process, killed (whole group) if this script is terminated


def _on_term(signum, _frame):
    p = CURRENT[0]
    if p is not None and p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


class Runner:
    def __init__(self, work: Path, out: Path, python: str, device: str, budget: float):
        self.work, self.out, self.python, self.device, self.budget = work, out, python, device, budget
        self.logf = open(out / "profile.log", "a", encoding="utf-8")
        self.n = 0

    def env(self, stage_id: str, d: Path, params: dict, inputs: Path | None) -> dict:
        env = dict(os.environ)
        pp = [str(REPO / "stages")]
        if env.get("PYTHONPATH"):
            pp.append(env["PYTHONPATH"])  # after the repo's stages; lets a test put another transformers on the path
        (d / "params.json").write_text(json.dumps(params))
        (d / "output").mkdir(parents=True, exist_ok=True)
        (d / "checkpoints").mkdir(exist_ok=True)
        env.update(PYTHONPATH=os.pathsep.join(pp), PYTHONUNBUFFERED="1", TANREN_RUN_ID="gpu-profile", TANREN_PIPELINE="gpu-profile",
                   TANREN_STAGE_ID=stage_id, TANREN_ATTEMPT="1", TANREN_PARAMS=str(d / "params.json"),
                   TANREN_OUTPUT=str(d / "output"), TANREN_CHECKPOINTS=str(d / "checkpoints"), TANREN_EVENTS=str(d / "events.jsonl"),
                   TANREN_DEVICE=self.device, PROFILE_CUDA_STATS=str(d / "cuda-stats.json"),
                   TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env.pop("TANREN_RESUME_FROM", None)
        inp = d / "inputs"
        inp.mkdir(exist_ok=True)
        env["TANREN_INPUTS"] = str(inputs or inp)
        return env

    def run(self, stage_id: str, module: str, params: dict, *, timeout: float, inputs: Path | None = None) -> dict:
        self.n += 1
        d = self.work / f"{self.n:02d}-{stage_id}"
        d.mkdir(parents=True)
        env = self.env(stage_id, d, params, inputs)
        timeout = max(5.0, min(timeout, remaining(self.budget) - 8))
        cmd = [self.python, str(HERE / "stage_wrapper.py"), module]
        log(f"{stage_id}: {module} (timeout {timeout:.0f}s) params={json.dumps(params)}")
        t_start = time.monotonic()
        seen: list[tuple[float, dict]] = []  # (seconds since start, event) as the events arrive
        ev_path = d / "events.jsonl"
        pos = 0
        with open(d / "stage.log", "wb") as lf:
            proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
            CURRENT[0] = proc
            timed_out = False
            while True:
                rc = proc.poll()
                if ev_path.exists():
                    with open(ev_path, "rb") as f:
                        f.seek(pos)
                        chunk = f.read()
                    cut = chunk.rfind(b"\n") + 1
                    pos += cut
                    now = time.monotonic() - t_start
                    for line in chunk[:cut].splitlines():
                        try:
                            seen.append((now, json.loads(line)))
                        except ValueError:
                            pass
                if rc is not None:
                    break
                if time.monotonic() - t_start > timeout:
                    timed_out = True
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(timeout=30)
                    rc = proc.returncode
                    break
                time.sleep(0.05)
        CURRENT[0] = None
        wall = time.monotonic() - t_start
        tail = (d / "stage.log").read_text(errors="replace").splitlines()
        ok = rc == 0 and not timed_out
        self.logf.write(f"\n===== {stage_id} ({module}) rc={rc} timed_out={timed_out} wall={wall:.1f}s =====\n")
        self.logf.write("\n".join(tail[-(25 if ok else 80):]) + "\n")
        self.logf.flush()
        errors = [e for _, e in seen if e.get("event") == "error"]
        cuda = None
        if (d / "cuda-stats.json").exists():
            try:
                cuda = json.loads((d / "cuda-stats.json").read_text())
            except ValueError:
                pass
        res = {"stage": stage_id, "module": module, "rc": rc, "ok": ok, "timed_out": timed_out, "wall_s": round(wall, 2),
               "dir": str(d), "events_timed": seen, "error": errors[-1] if errors else None, "cuda": cuda}
        if not ok:
            res["log_tail"] = tail[-15:]
            why = (errors[-1].get("type", "") + ": " + errors[-1].get("message", "")) if errors else (tail[-1] if tail else "")
            log(f"{stage_id}: FAILED rc={rc} timed_out={timed_out}: {why[:300]}")
        else:
            log(f"{stage_id}: ok in {wall:.1f}s")
        return res


# ---------------------------------------------------------------------------------------------
# Data

def write_dataset(prefix: Path, tokens: int, vocab: int, seed: int = 1234) -> dict:
    """Synthetic but learnable token stream: Zipf-distributed 'phrases' of 4-12 tokens drawn from a
    Zipf unigram distribution, concatenated into documents ending in EOS (id 2). A model first
    learns the unigram statistics, then the phrases, so the loss falls fast from ln(vocab)."""
    sys.path.insert(0, str(REPO / "stages"))
    import numpy as np
    from tanren_stages.indexed_dataset import IndexedDatasetWriter, optimal_dtype

    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    n_phrases, plen = 4096, 12
    ranks = np.arange(1, vocab - 3, dtype=np.float64)
    p_tok = 1.0 / ranks ** 1.1
    p_tok /= p_tok.sum()
    phrases = (rng.choice(len(ranks), size=(n_phrases, plen), p=p_tok) + 4).astype(np.int64)
    lens = rng.integers(4, plen + 1, size=n_phrases)
    p_ph = 1.0 / np.arange(1, n_phrases + 1) ** 1.0
    p_ph /= p_ph.sum()
    written, docs = 0, 0
    with IndexedDatasetWriter(prefix, optimal_dtype(vocab)) as w:
        while written < tokens:
            idx = rng.choice(n_phrases, size=int(rng.integers(40, 200)), p=p_ph)
            doc = np.concatenate([phrases[i, :lens[i]] for i in idx] + [np.array([2])])
            w.add_document(doc)
            written += len(doc)
            docs += 1
    return {"tokens": written, "documents": docs, "vocab": vocab, "seconds": round(time.perf_counter() - t, 2),
            "kind": "synthetic Zipf phrases (numpy), written with stages/tanren_stages/indexed_dataset.py"}


def write_corpus(path: Path, docs: int, seed: int = 7) -> None:
    import random

    rng = random.Random(seed)
    words = ["東京", "大阪", "京都", "寺院", "神社", "博物館", "歴史", "文学", "音楽", "時代", "建てられた", "有名な", "である",
             "the", "model", "train", "token", "data", "river", "city", "music", "history", "2024", "1999"]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(docs):
            sents = ["".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "。" for _ in range(rng.randint(3, 8))]
            f.write(json.dumps({"text": "\n".join(sents)}, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Analysis

def n_params(c: dict, vocab: int) -> dict:
    h, L = c["hidden_size"], c["num_layers"]
    heads = c["num_heads"]
    kv = c.get("num_kv_heads", heads)
    i = c.get("intermediate_size", int(h * 8 / 3 / 8 + 0.999) * 8)
    hd = h // heads
    layer = h * (heads * hd) + 2 * h * (kv * hd) + (heads * hd) * h + 3 * h * i + 2 * h
    non_emb = L * layer + h
    return {"intermediate": i, "non_embedding": non_emb, "embedding": vocab * h, "total": non_emb + vocab * h}


def flops_per_token(c: dict, vocab: int) -> float:
    """Model FLOPs per trained token (PaLM appendix B): 6*N_matmul + 12*L*h*s; the tied LM head is a matmul."""
    p = n_params(c, vocab)
    return 6.0 * (p["non_embedding"] + p["embedding"]) + 12.0 * c["num_layers"] * c["hidden_size"] * c["seq_len"]


def memory_estimate(c: dict, vocab: int, bf16: bool, gc: bool) -> dict:
    """Analytical peak (GiB) of this stage's training loop (HF Llama, SDPA, AdamW, fp32 master weights).

    The peak falls at the start of backward (all activations + the logits' gradients alive):
      fp32 weights 4P + AdamW exp_avg/exp_avg_sq 8P + the tied embedding/LM-head grad 4Vh (grads are
      set_to_none, so the other 4P of grads are allocated later, as activations are freed) + under
      autocast the bf16 weight copies saved for backward 2P (only the LM head's with grad checkpointing).
    activations per token per layer, counted from what autograd saves in LlamaDecoderLayer:
      bf16 autocast: 2 RMSNorms (fp32 in, fp32 normed: 8h each) + bf16 casts of the q/k/v and
      gate/up inputs (6h + 4h) + SDPA q,k,v,out (8h) + o_proj input (2h) + MLP gate,silu,up,prod (8i)
      = 36h + 8i bytes;  fp32: 16h (norms) + 4h + 4h (shared inputs) + 16h (SDPA) + 4h + 16i = 44h + 16i.
      With gradient checkpointing only each layer's fp32 input (4h) is kept, plus one layer recomputed.
    logits: bf16 logits held + fp32 log-softmax + its grad + grad input ~ 14V bytes per token (fp32: 16V).
    Ignores: CUDA context (~0.5 GiB, not in torch's counters), allocator fragmentation, cuBLAS workspaces.
    `upper_bound_gib` adds all 4P of grads (a loose bound)."""
    p = n_params(c, vocab)
    P, h, L, i, V = p["total"], c["hidden_size"], c["num_layers"], p["intermediate"], vocab
    T = c["micro_batch_size"] * c["seq_len"]
    per_layer = (36 * h + 8 * i) if bf16 else (44 * h + 16 * i)
    act = (L * 4 * h + per_layer) * T if gc else L * per_layer * T
    act += 8 * h * T  # final norm
    logits = (14 if bf16 else 16) * V * T
    cast = (2 * V * h if gc else 2 * P) if bf16 else 0
    static = 12 * P + 4 * V * h + cast
    g = 2**30
    return {"weights_adam_gib": round(12 * P / g, 3), "grads_at_peak_gib": round(4 * V * h / g, 3), "bf16_weight_copies_gib": round(cast / g, 3),
            "activations_gib": round(act / g, 3), "logits_gib": round(logits / g, 3),
            "total_gib": round((static + act + logits) / g, 3), "upper_bound_gib": round((static + 4 * (P - V * h) + act + logits) / g, 3),
            "static_bytes": static}


def median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def analyse(spec: dict, res: dict, dev_spec: dict | None, vocab: int, smoke: bool) -> dict:
    c = spec["params"]
    bf16 = c.get("precision") == "bf16"
    gc = bool(c.get("gradient_checkpointing"))
    events = [e for _, e in res["events_timed"]]
    metrics = [e for e in events if e.get("event") == "metric" and "loss" in e.get("values", {})]
    ckpt_steps = [e["step"] for e in events if e.get("event") == "checkpoint"]
    result = next((e["values"] for e in events if e.get("event") == "result"), {})
    tok_step = c["micro_batch_size"] * c.get("gradient_accumulation_steps", 1) * c["seq_len"]
    out: dict = {"name": spec["name"], "ok": res["ok"], "rc": res["rc"], "timed_out": res["timed_out"], "wall_s": res["wall_s"],
                 "params": c, "precision": c.get("precision"), "gradient_checkpointing": gc, "deterministic": c.get("deterministic", True),
                 "tokens_per_step": tok_step, "steps_logged": len(metrics), "checkpoint_steps": ckpt_steps}
    if res.get("error"):
        out["error"] = {"type": res["error"].get("type"), "message": res["error"].get("message")}
    if not res["ok"] and res.get("log_tail"):
        out["log_tail"] = res["log_tail"]
    pc = n_params(c, vocab)
    out["parameters"] = result.get("parameters") or pc["total"]
    out["parameters_analytic"] = pc["total"]
    est = memory_estimate(c, vocab, bf16, gc)
    out["memory_estimate"] = {k: v for k, v in est.items() if k.endswith("_gib")}
    if metrics:
        losses = [m["values"]["loss"] for m in metrics]
        out["loss_first"], out["loss_last"] = round(losses[0], 4), round(losses[-1], 4)
        k = min(5, len(losses))
        out["loss_fell"] = sum(losses[-k:]) / k < sum(losses[:k]) / k and losses[-1] < losses[0]
        skip = max(3, len(metrics) // 5)
        after_ckpt = {s + 1 for s in ckpt_steps}
        steady = [m for m in metrics[skip:] if m["step"] not in after_ckpt and m["values"].get("tokens_per_s")]
        if not steady:
            steady = [m for m in metrics[1:] if m["values"].get("tokens_per_s")]
        tps = [m["values"]["tokens_per_s"] for m in steady]
        if tps:
            med = median(tps)
            mean = sum(tok_step for _ in tps) / sum(tok_step / x for x in tps)
            out["tokens_per_s"] = round(med, 1)
            out["tokens_per_s_mean"] = round(mean, 1)
            out["step_ms"] = round(1000 * tok_step / med, 2)
            out["steady_steps"] = [steady[0]["step"], steady[-1]["step"], len(steady)]
            first = metrics[0]["values"].get("tokens_per_s")
            if first:
                out["first_step_ms"] = round(1000 * tok_step / first, 1)
            for s in after_ckpt:
                m = next((x for x in metrics if x["step"] == s), None)
                if m and m["values"].get("tokens_per_s"):
                    out["checkpoint_save_s"] = round(tok_step / m["values"]["tokens_per_s"] - tok_step / med, 2)
            f = flops_per_token(c, vocab)
            out["model_flops_per_token"] = f
            out["achieved_tflops"] = round(med * f / 1e12, 2)
            if dev_spec and not smoke:
                peak = dev_spec["bf16_tflops"] if bf16 else dev_spec["fp32_tflops"]
                mfu = med * f / (peak * 1e12)
                out["mfu"] = round(mfu, 4)
                r = RTX3090["bf16_tflops"] if bf16 else RTX3090["fp32_tflops"]
                # Estimate: same MFU as measured here; and a typical 3090 MFU for this size of model.
                out["rtx3090_estimate"] = {
                    "tokens_per_s_same_mfu": round(mfu * r * 1e12 / f, 0),
                    "tokens_per_s_at_40pct_mfu": round(0.40 * r * 1e12 / f, 0),
                    "note": "ESTIMATE, not measured: scaled by dense peak TFLOP/s (3090: 71 bf16 / 35.6 fp32)",
                }
        peaks = [m["values"]["peak_mem_gb"] for m in metrics if "peak_mem_gb" in m["values"]]
        if peaks:
            out["peak_mem_gib"] = max(peaks)  # torch.cuda.max_memory_allocated since training began, GiB
            out["estimate_vs_measured"] = round(est["total_gib"] / max(peaks), 3)
        grads = [m["values"]["grad_norm"] for m in metrics if "grad_norm" in m["values"]]
        if grads:
            out["grad_norm_first_last"] = [round(grads[0], 3), round(grads[-1], 3)]
    # startup / save timing from when events arrived
    t_metric = [t for t, e in res["events_timed"] if e.get("event") == "metric"]
    t_result = [t for t, e in res["events_timed"] if e.get("event") == "result"]
    if t_metric:
        out["startup_to_first_step_s"] = round(t_metric[0], 2)
        out["train_loop_s"] = round(t_metric[-1] - t_metric[0], 2)
        if t_result:
            out["final_save_s"] = round(t_result[-1] - t_metric[-1], 2)
    if res.get("cuda"):
        out["cuda_process"] = res["cuda"]
    if out.get("peak_mem_gib") is not None and not smoke:
        reserved = (res.get("cuda") or {}).get("max_reserved_gib") or out["peak_mem_gib"]
        frag = max(0.0, reserved - out["peak_mem_gib"])
        fits = reserved + 0.5 <= RTX3090["vram_gib"] - 0.5
        e = {"fits_24gb": fits, "needs_gib_incl_context": round(reserved + 0.5, 2),
             "note": "ESTIMATE: measured reserved memory + ~0.5 GiB CUDA context vs 24 GiB; same model/batch allocate the same on a 3090"}
        # largest micro-batch expected to fit, from the measured per-sample slope
        static = est["static_bytes"] / 2**30
        per = (out["peak_mem_gib"] - static) / c["micro_batch_size"]
        if per > 0:
            e["max_micro_batch_est"] = int(max(0, (RTX3090["usable_gib"] - frag - static) // per))
        out.setdefault("rtx3090_estimate", {}).update(e)
    return out


# ---------------------------------------------------------------------------------------------
# Report

def fmt(x, nd=1, unit=""):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.{nd}f}{unit}"
    return f"{x:,}{unit}" if isinstance(x, int) else f"{x}{unit}"


def markdown(prof: dict) -> str:
    dev = prof.get("device") or {}
    lines = [f"### GPU profile: `pretrain` stage on {dev.get('name', '?')}", "",
             f"torch {prof['versions'].get('torch')}, transformers {prof['versions'].get('transformers')}, "
             f"CUDA {prof['versions'].get('cuda')}; {prof['date']}; `bench/gpu/profile.sh`"
             + (" (**CPU SMOKE TEST: tiny model, figures are not GPU figures**)" if prof["cpu_smoke"] else ""), "",
             "| run | params | seq × mbs | precision | grad ckpt | tokens/s | step ms | MFU | peak alloc GiB | est. GiB | loss first → last |"
             " 3090 tokens/s (est.) | 3090 fits 24 GB (est.) |",
             "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in prof["runs"]:
        c = r["params"]
        if not r.get("ok") and "tokens_per_s" not in r:
            why = (r.get("error") or {}).get("type") or ("timeout" if r.get("timed_out") else f"rc={r.get('rc')}")
            if r.get("skipped"):
                why = "skipped: " + r["skipped"]
            lines.append(f"| {r['name']} | — | {c['seq_len']} × {c['micro_batch_size']} | {c.get('precision')} | "
                         f"{'yes' if c.get('gradient_checkpointing') else 'no'} | **FAILED ({why})** | | | | | | | |")
            continue
        e3 = r.get("rtx3090_estimate") or {}
        t3 = (f"{fmt(e3.get('tokens_per_s_same_mfu'), 0)}–{fmt(e3.get('tokens_per_s_at_40pct_mfu'), 0)}"
              if e3.get("tokens_per_s_same_mfu") is not None else "—")
        fits = "—" if "fits_24gb" not in e3 else (("yes" if e3["fits_24gb"] else "**no**") + f" (max mbs ≈ {e3.get('max_micro_batch_est', '?')})")
        loss = f"{fmt(r.get('loss_first'), 2)} → {fmt(r.get('loss_last'), 2)}" + ("" if r.get("loss_fell") else " (**did not fall**)")
        det = "" if r.get("deterministic", True) else ", deterministic off"
        lines.append(f"| {r['name']} | {r['parameters'] / 1e6:.0f}M | {c['seq_len']} × {c['micro_batch_size']} | {c.get('precision')}{det} | "
                     f"{'yes' if r.get('gradient_checkpointing') else 'no'} | {fmt(r.get('tokens_per_s'), 0)} | {fmt(r.get('step_ms'), 1)} | "
                     f"{fmt(r['mfu'] * 100, 1, '%') if r.get('mfu') is not None else '—'} | {fmt(r.get('peak_mem_gib'), 2)} | "
                     f"{fmt(r['memory_estimate']['total_gib'], 2)} | {loss} | {t3} | {fits} |")
    s = prof.get("summary", {})
    lines += [""]
    if s.get("bf16_over_fp32") is not None:
        lines.append(f"- bf16 / fp32 speed on this GPU: **{s['bf16_over_fp32']:.2f}×** (main config). On an RTX 3090 the dense peak ratio "
                     f"is only 71 / 35.6 ≈ 2×, so expect roughly 2× there (estimate).")
    if s.get("gc_memory_ratio") is not None:
        lines.append(f"- Gradient checkpointing at micro-batch 8 vs none at micro-batch 2 (main model): peak memory × {s['gc_memory_ratio']:.2f}, "
                     f"tokens/s × {s['gc_speed_ratio']:.2f} (the recomputed forward costs ~1/3 more compute; the larger batch wins some back).")
    if s.get("deterministic_cost") is not None:
        lines.append(f"- `deterministic: false` vs the default (true): throughput × {s['deterministic_cost']:.2f}.")
    m = next((r for r in prof["runs"] if r["name"] == "main-bf16"), None)
    if m and m.get("startup_to_first_step_s") is not None:
        lines.append(f"- main-bf16 wall time: {fmt(m.get('startup_to_first_step_s'), 1)} s from process start to the first step "
                     f"(imports, CUDA init, model init), checkpoint save ≈ {fmt(m.get('checkpoint_save_s'), 1)} s, "
                     f"final checkpoint + save_pretrained ≈ {fmt(m.get('final_save_s'), 1)} s.")
    lines += ["- tokens/s: median over steady steps (first steps and the step after a checkpoint excluded); MFU = tokens/s × "
              "model FLOPs per token (6N + 12·L·h·s) / dense peak of this GPU.",
              "- est. GiB: analytical weights + grads + AdamW + activations + logits (see `memory_estimate` in profile.py); "
              "peak alloc = `torch.cuda.max_memory_allocated` from the stage's `peak_mem_gb` metric.",
              "- **3090 columns are estimates, not measurements**: tokens/s scaled by dense peak TFLOP/s (71 bf16 / 35.6 fp32) "
              "at the MFU measured here – at 40 % MFU; memory = measured reserved + ~0.5 GiB context vs 24 GiB.",
              f"- Data: {prof.get('dataset', {}).get('kind', '?')}, vocab {VOCAB}."]
    pf = prof.get("preflight") or {}
    lines.append(f"- preflight: {'ok' if pf.get('ok') else 'FAILED'}" + (f" – {pf.get('result')}" if pf.get("result") else ""))
    pc = prof.get("pipeline_compat") or {}
    if pc:
        lines.append("- train_tokenizer → tokenize → pretrain (with HF tokenizer) on this machine's transformers: "
                     + ", ".join(f"{k} {'ok' if v.get('ok') else 'FAILED'}" for k, v in pc.items()))
    for r in prof["runs"]:
        if r.get("error"):
            lines.append(f"- {r['name']} failed: {r['error'].get('type')}: {str(r['error'].get('message'))[:300]}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole profile (default 300 GPU, 240 smoke)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    smoke = a.cpu_smoke or os.environ.get("PROFILE_CPU_SMOKE") == "1"
    budget = a.budget or float(os.environ.get("PROFILE_BUDGET_S", 240 if smoke else 300))
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-profile-out-"))
    out.mkdir(parents=True, exist_ok=True)
    python = os.environ.get("PYTHON", "python3")
    device = "cpu" if smoke else "cuda"
    base = None
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        try:
            if shutil.disk_usage(shm).free > (4 if smoke else 24) * 2**30:
                base = str(shm)
        except OSError:
            pass
    work = Path(tempfile.mkdtemp(prefix="tanren-gpu-profile-", dir=base))
    log(f"OUT={out} work={work} python={python} device={device} budget={budget:.0f}s")
    runner = Runner(work, out, python, device, budget)
    prof: dict = {"cpu_smoke": smoke, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budget_s": budget, "versions": {}, "runs": [],
                  "rtx3090_assumptions": RTX3090}
    jpath = out / "gpu-profile.json"

    def save() -> None:
        prof["elapsed_s"] = round(time.monotonic() - T0, 1)
        jpath.write_text(json.dumps(prof, indent=2, default=str) + "\n")
        (out / "gpu-profile.md").write_text(markdown(prof))

    try:
        # 1. preflight
        r = runner.run("preflight", "tanren_stages.preflight", {"require_gpu": not smoke}, timeout=90)
        rep = Path(r["dir"]) / "output" / "report.json"
        report = {}
        if rep.exists():
            shutil.copyfile(rep, out / "report.json")
            report = json.loads(rep.read_text())
        prof["preflight"] = {"ok": r["ok"], "rc": r["rc"], "wall_s": r["wall_s"], "error": r["error"],
                             "result": next((e["values"] for _, e in r["events_timed"] if e.get("event") == "result"), None)}
        pk = report.get("packages") or {}
        prof["versions"] = {"python": report.get("python"), "torch": (report.get("torch_build") or {}).get("version"),
                            "cuda": (report.get("torch_build") or {}).get("cuda"), "transformers": pk.get("transformers"),
                            "tokenizers": pk.get("tokenizers"), "sentencepiece": pk.get("sentencepiece"), "numpy": pk.get("numpy")}
        gpu = report.get("gpu") or {}
        prof["device"] = {"name": gpu.get("name") or ("cpu" if smoke else None), "capability": gpu.get("capability"),
                          "total_vram_gib": round(gpu["total_vram_bytes"] / 2**30, 2) if gpu.get("total_vram_bytes") else None,
                          "bf16": gpu.get("bf16"), "cpu_count": report.get("cpu_count")}
        dev_spec = gpu_spec(gpu.get("name"))
        prof["device"]["peak_spec"] = dev_spec
        save()
        if not r["ok"] and not smoke:
            log("preflight failed: no usable CUDA GPU; stopping (see profile.log)")
            return 3

        # 2. dataset
        data = work / "data-stage"
        (data / "output").mkdir(parents=True)
        ds = write_dataset(data / "output" / "text_document", 400_000 if smoke else 4_000_000, VOCAB)
        prof["dataset"] = ds
        log(f"dataset: {ds}")
        inputs = work / "inputs"
        inputs.mkdir()
        os.symlink(data / "output", inputs / "data")

        # 3. pretrain runs
        runs = CPU_RUNS if smoke else GPU_RUNS
        for spec in runs:
            params = dict(COMMON, **spec["params"])
            spec = dict(spec, params=params)
            if remaining(budget) < spec["need"] + 45:  # keep time for the compat check and the report
                prof["runs"].append({"name": spec["name"], "ok": False, "skipped": "time budget", "params": params})
                log(f"{spec['name']}: skipped (time budget)")
                save()
                continue
            res = runner.run(spec["name"], "tanren_stages.pretrain", params, timeout=spec["timeout"], inputs=inputs)
            a_ = analyse(spec, res, dev_spec, VOCAB, smoke)
            prof["runs"].append(a_)
            if spec.get("main"):
                ev = Path(res["dir"]) / "events.jsonl"
                if ev.exists():
                    shutil.copyfile(ev, out / "events.jsonl")
            log(f"{spec['name']}: tokens/s={a_.get('tokens_per_s')} step_ms={a_.get('step_ms')} peak={a_.get('peak_mem_gib')} GiB "
                f"est={a_['memory_estimate']['total_gib']} GiB loss {a_.get('loss_first')} -> {a_.get('loss_last')}")
            shutil.rmtree(Path(res["dir"]) / "checkpoints", ignore_errors=True)
            shutil.rmtree(Path(res["dir"]) / "output", ignore_errors=True)
            by = {x["name"]: x for x in prof["runs"]}
            m, f, g, nd = by.get("main-bf16"), by.get("main-fp32"), by.get("main-bf16-gc-mbs8"), by.get("main-bf16-nondet")
            s = prof.setdefault("summary", {})
            if m and f and m.get("tokens_per_s") and f.get("tokens_per_s"):
                s["bf16_over_fp32"] = round(m["tokens_per_s"] / f["tokens_per_s"], 3)
            if m and g and m.get("tokens_per_s") and g.get("tokens_per_s") and m.get("peak_mem_gib") and g.get("peak_mem_gib"):
                s["gc_memory_ratio"] = round(g["peak_mem_gib"] / m["peak_mem_gib"], 3)  # note: gc run has 4x the micro-batch
                s["gc_speed_ratio"] = round(g["tokens_per_s"] / m["tokens_per_s"], 3)
            if m and nd and m.get("tokens_per_s") and nd.get("tokens_per_s"):
                s["deterministic_cost"] = round(m["tokens_per_s"] / nd["tokens_per_s"], 3)
            s["all_losses_fell"] = all(x.get("loss_fell") for x in prof["runs"] if x.get("ok"))
            save()

        # 4. the real data path on this machine's transformers: train_tokenizer -> tokenize -> pretrain with the HF tokenizer
        if remaining(budget) > 40:
            compat: dict = {}
            prof["pipeline_compat"] = compat
            cw = work / "compat"
            corpus = cw / "inputs" / "corpus"
            corpus.mkdir(parents=True)
            write_corpus(corpus / "articles.jsonl", 800)
            r1 = runner.run("train_tokenizer", "tanren_stages.train_tokenizer", {"vocab_size": 600, "sample_docs": 800},
                            timeout=min(60, remaining(budget) - 20), inputs=cw / "inputs")
            compat["train_tokenizer"] = {"ok": r1["ok"], "wall_s": r1["wall_s"], "error": r1["error"]}
            if r1["ok"]:
                os.symlink(Path(r1["dir"]) / "output", cw / "inputs" / "tok")
                r2 = runner.run("tokenize", "tanren_stages.tokenize", {"input": "corpus", "tokenizer_input": "tok", "workers": 1},
                                timeout=min(60, remaining(budget) - 15), inputs=cw / "inputs")
                compat["tokenize"] = {"ok": r2["ok"], "wall_s": r2["wall_s"], "error": r2["error"]}
                if r2["ok"] and remaining(budget) > 25:
                    pin = cw / "pin"
                    pin.mkdir()
                    os.symlink(Path(r2["dir"]) / "output", pin / "tokenized")
                    r3 = runner.run("pretrain-tokenizer", "tanren_stages.pretrain",
                                    dict(TINY, max_steps=4, warmup_steps=1, seq_len=64), timeout=min(60, remaining(budget) - 8), inputs=pin)
                    files = sorted(p.name for p in (Path(r3["dir"]) / "output" / "model").glob("*")) if r3["ok"] else []
                    compat["pretrain_with_tokenizer"] = {"ok": r3["ok"], "wall_s": r3["wall_s"], "error": r3["error"], "model_files": files}
            save()
        else:
            log("pipeline compat check skipped (time budget)")
    finally:
        save()
        shutil.rmtree(work, ignore_errors=True)
        runner.logf.close()
    failed = [r["name"] for r in prof["runs"] if not r.get("ok")]
    log(f"done in {time.monotonic() - T0:.0f}s; failed/skipped runs: {failed or 'none'}; outputs in {out}")
    print((out / "gpu-profile.md").read_text())
    return 0 if prof["runs"] and prof["runs"][0].get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

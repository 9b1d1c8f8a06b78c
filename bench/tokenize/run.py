"""bench/tokenize: tokens/s of the `tokenize` stage function with 2 worker processes vs one process.

Builds a ~30 MB jsonl corpus from the wiki40b-ja fixture (converted with the
wiki40b_to_jsonl stage's logic, repeated with a distinct prefix per copy so no
two documents are identical), trains a small SentencePiece model on a sample of
it, then times on the same input:

  tokenize_files(workers=2)   the stage function as the stage runs it
  tokenize_files(workers=1)   the same function in this process
  plain loop                  json.loads + sp.encode(text) once per document + writer, in this process

and reports tokens/s and the ratio workers=2 / single process (target ≥ 1.8× on 2 cores).
It also times the serial parts the parent process does with workers=2 (reading
chunks, unpickling results, writing the .bin) and tries an alternative worker
result format (one numpy buffer per chunk instead of lists of Python ints), so
a miss can be explained.

Usage: PY=$(infra/install-stages | tail -1); PYTHONPATH=stages $PY bench/tokenize/run.py [--mb 30] [--reps 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import json
import multiprocessing as mp
import os
import pickle
import resource
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tanren_stages import tokenize as tk
from tanren_stages.indexed_dataset import IndexedDatasetWriter, optimal_dtype
from tanren_stages.train_tokenizer import train_spm
from tanren_stages.wiki40b_to_jsonl import convert_wiki40b

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "data" / "wiki40b-ja" / "train-00000-of-00001.parquet"


def log(msg: str) -> None:
    print(f"[tokenize] {msg}", file=sys.stderr, flush=True)


def build_corpus(path: Path, target_mb: float) -> dict:
    import pyarrow.parquet as pq

    texts = []
    for raw in pq.read_table(FIXTURE, columns=["text"]).column("text").to_pylist():
        _, text = convert_wiki40b(raw or "")
        if text:
            texts.append(text)
    if not texts:
        raise SystemExit(f"{FIXTURE}: no texts")
    target = int(target_mb * 1e6)
    size = docs = copy = 0
    with open(path, "w", encoding="utf-8") as out:
        while size < target:
            for i, t in enumerate(texts):
                line = json.dumps({"id": f"{copy}:{i}", "text": f"第{copy}版。{t}"}, ensure_ascii=False) + "\n"
                out.write(line)
                size += len(line.encode("utf-8"))
                docs += 1
            copy += 1
    return {"bytes": size, "documents": docs, "source_documents": len(texts), "copies": copy}


def train_model(corpus: Path, prefix: Path, vocab: int, sample: int) -> Path:
    texts = []
    with open(corpus, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if n >= sample:
                break
            texts.append(json.loads(line)["text"])
    train_spm(texts, prefix, vocab, threads=2)
    return Path(str(prefix) + ".model")


def plain_loop(files, model_path, out_prefix) -> dict:
    """The single-process baseline: one sp.encode call per document, in this process."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    eos = sp.eos_id()
    t0 = time.perf_counter()
    w = IndexedDatasetWriter(out_prefix, optimal_dtype(sp.get_piece_size()))
    docs = 0
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                w.add_document(sp.encode(json.loads(line)["text"]) + [eos])
                docs += 1
    w.close()
    secs = time.perf_counter() - t0
    return {"documents": docs, "tokens": w.tokens, "seconds": round(secs, 4), "tokens_per_s": round(w.tokens / secs, 1)}


# ----- an alternative result format, to test whether IPC is the bottleneck -----

def _encode_chunk_np(chunk):
    """Like tokenize._encode_chunk, but returns (lengths int32 bytes, ids bytes in the output dtype)."""
    status, payload = tk._encode_chunk(chunk)
    if status == "error":
        return status, payload
    lengths = np.fromiter((len(x) for x in payload), dtype=np.int32, count=len(payload))
    flat = np.fromiter((i for x in payload for i in x), dtype=_NP_DTYPE, count=int(lengths.sum()))
    return "ok", (lengths.tobytes(), flat.tobytes())


_NP_DTYPE = np.uint16


def tokenize_np(files, model_path, out_prefix, workers=2, chunk_docs=64, chunksize=1) -> dict:
    """Pool of workers returning numpy buffers; the parent only appends bytes."""
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()
    dtype = np.dtype(optimal_dtype(vocab))
    assert dtype == np.dtype(_NP_DTYPE)
    t0 = time.perf_counter()
    w = IndexedDatasetWriter(out_prefix, dtype)
    pool = mp.get_context("fork").Pool(workers, initializer=tk._init, initargs=(str(model_path), "text"))
    try:
        for status, payload in pool.imap(_encode_chunk_np, tk._chunks([Path(f) for f in files], chunk_docs), chunksize=chunksize):
            if status == "error":
                raise RuntimeError(payload)
            lb, ib = payload
            lengths = np.frombuffer(lb, dtype=np.int32)
            w.bin.write(ib)
            w.lengths.extend(lengths.tolist())
            n0 = len(w.doc_idx)
            w.doc_idx.extend(range(n0, n0 + len(lengths)))
            w.tokens += int(lengths.sum())
    finally:
        w.close()
        pool.terminate()
    secs = time.perf_counter() - t0
    return {"documents": len(w.lengths), "tokens": w.tokens, "seconds": round(secs, 4), "tokens_per_s": round(w.tokens / secs, 1)}


def serial_parts(files, model_path, chunk_docs=64) -> dict:
    """Times what the parent process does with workers>1, and the workers' own work, in one process."""
    tk._init(str(model_path), "text")
    t = time.perf_counter()
    chunks = list(tk._chunks([Path(f) for f in files], chunk_docs))
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    pickled_chunks = [pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL) for c in chunks]
    pickle_in_s = time.perf_counter() - t
    t = time.perf_counter()
    results = [tk._encode_chunk(c) for c in chunks]
    encode_s = time.perf_counter() - t
    t = time.perf_counter()
    blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results]
    pickle_out_s = time.perf_counter() - t
    t = time.perf_counter()
    for b in blobs:
        pickle.loads(b)
    unpickle_s = time.perf_counter() - t
    tmp = tempfile.mkdtemp()
    try:
        t = time.perf_counter()
        w = IndexedDatasetWriter(Path(tmp) / "x", np.uint16)
        for _, payload in results:
            for ids in payload:
                w.add_document(ids)
        w.close()
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        np_blobs = []
        for _, payload in results:
            lengths = np.fromiter((len(x) for x in payload), dtype=np.int32, count=len(payload))
            flat = np.fromiter((i for x in payload for i in x), dtype=np.uint16, count=int(lengths.sum()))
            np_blobs.append(pickle.dumps(("ok", (lengths.tobytes(), flat.tobytes())), protocol=pickle.HIGHEST_PROTOCOL))
        np_pack_s = time.perf_counter() - t
        t = time.perf_counter()
        for b in np_blobs:
            pickle.loads(b)
        np_unpickle_s = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "chunks": len(chunks),
        "parent_read_chunks_s": round(read_s, 3),
        "parent_pickle_chunks_s": round(pickle_in_s, 3),
        "worker_json_and_encode_s": round(encode_s, 3),
        "worker_pickle_results_s": round(pickle_out_s, 3),
        "parent_unpickle_results_s": round(unpickle_s, 3),
        "parent_write_bin_s": round(write_s, 3),
        "result_pickle_mb": round(sum(map(len, blobs)) / 1e6, 1),
        "chunk_pickle_mb": round(sum(map(len, pickled_chunks)) / 1e6, 1),
        "alt_numpy_pack_in_worker_s": round(np_pack_s, 3),
        "alt_numpy_unpickle_in_parent_s": round(np_unpickle_s, 3),
        "alt_numpy_result_mb": round(sum(map(len, np_blobs)) / 1e6, 1),
    }


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory": mem, "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=30.0, help="corpus size in MB (default 30)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    ap.add_argument("--vocab", type=int, default=2000, help="SentencePiece vocab (the fixture holds ~400 articles: at most ~2500)")
    ap.add_argument("--chunk-docs", type=int, default=64, help="chunk_docs of tokenize_files (stage default 64)")
    ap.add_argument("--out", help="result file (default bench/results/tokenize-<date>.json)")
    args = ap.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="tanren-bench-tokenize-"))
    try:
        corpus = work / "corpus.jsonl"
        log(f"building a {args.mb} MB corpus …")
        corpus_info = build_corpus(corpus, args.mb)
        log(f"corpus: {corpus_info}; training SentencePiece (vocab {args.vocab}) …")
        t = time.perf_counter()
        model = train_model(corpus, work / "sp", args.vocab, sample=corpus_info["source_documents"])
        train_s = time.perf_counter() - t
        files = [corpus]

        variants = {
            "workers=2": lambda r: tk.tokenize_files(files, model, work / f"w2-{r}", workers=2, chunk_docs=args.chunk_docs),
            "workers=1": lambda r: tk.tokenize_files(files, model, work / f"w1-{r}", workers=1, chunk_docs=args.chunk_docs),
            "plain loop": lambda r: plain_loop(files, model, work / f"loop-{r}"),
            "alt: workers=2, numpy results": lambda r: tokenize_np(files, model, work / f"np-{r}", workers=2, chunk_docs=args.chunk_docs),
            "alt: workers=2, numpy results, chunk_docs=256": lambda r: tokenize_np(files, model, work / f"np256-{r}", workers=2, chunk_docs=256),
        }
        # Interleaved rounds (rotating order), so load from other processes hits every variant alike;
        # ratios are taken within a round, then the median over rounds.
        runs: dict[str, list[dict]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.reps):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                log(f"round {r + 1}/{args.reps}: {name} …")
                ru0, rc0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
                res_ = variants[name](r)
                ru1, rc1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
                res_["cpu_parent_s"] = round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 3)
                res_["cpu_children_s"] = round(rc1.ru_utime + rc1.ru_stime - rc0.ru_utime - rc0.ru_stime, 3)
                runs[name].append(res_)
        res = {}
        for name, rs in runs.items():
            med = sorted(rs, key=lambda x: x["tokens_per_s"])[len(rs) // 2]
            res[name] = {**med, "all_tokens_per_s": [x["tokens_per_s"] for x in rs]}
        identical = all(filecmp.cmp(work / f"w2-0.{ext}", work / f"{other}-0.{ext}", shallow=False)
                        for other in ("w1", "loop", "np", "np256") for ext in ("bin", "idx"))
        log("timing the serial parts …")
        parts = serial_parts(files, model, args.chunk_docs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(runs[a], runs[b])), 2)

    ratios = {
        "workers=2 / workers=1": ratio("workers=2", "workers=1"),
        "workers=2 / plain loop": ratio("workers=2", "plain loop"),
        "alt numpy / workers=1": ratio("alt: workers=2, numpy results", "workers=1"),
        "alt numpy chunk 256 / workers=1": ratio("alt: workers=2, numpy results, chunk_docs=256", "workers=1"),
    }
    # What an otherwise idle 2-core machine would give, from CPU seconds (robust to other load):
    # wall ≥ max(parent CPU, all CPU / 2) with 2 workers; the single process needs all its CPU serially.
    def cpu_bound(name: str) -> float:
        rs = runs[name]
        one = statistics.median(x["cpu_parent_s"] + x["cpu_children_s"] for x in runs["workers=1"])
        par = statistics.median(max(x["cpu_parent_s"], (x["cpu_parent_s"] + x["cpu_children_s"]) / 2) for x in rs)
        return round(one / par, 2)

    ratios["cpu-time bound, workers=2 / workers=1"] = cpu_bound("workers=2")
    ratios["cpu-time bound, alt numpy / workers=1"] = cpu_bound("alt: workers=2, numpy results")
    out = {
        "benchmark": "tokenize",
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "corpus": {**corpus_info, "mb": round(corpus_info["bytes"] / 1e6, 1)},
        "tokenizer": {"type": "sentencepiece unigram", "vocab_size": args.vocab, "train_seconds": round(train_s, 2)},
        "chunk_docs": args.chunk_docs,
        "outputs_identical": identical,
        "results": res,
        "ratios": ratios,
        "target_ratio": 1.8,
        "serial_parts_single_process_s": parts,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    out_file = Path(args.out) if args.out else ROOT / "bench" / "results" / f"tokenize-{started.date().isoformat()}.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")

    rows = [("variant", "tokens", "seconds", "tokens/s", "vs workers=1", "CPU parent s", "CPU workers s")]
    for k, v in res.items():
        rows.append((k, str(v["tokens"]), f"{v['seconds']:.2f}", f"{v['tokens_per_s']:,.0f}", f"{v['tokens_per_s'] / res['workers=1']['tokens_per_s']:.2f}×", f"{v['cpu_parent_s']:.2f}", f"{v['cpu_children_s']:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\nratios (median over interleaved rounds): " + json.dumps(ratios))
    print(f"ratio workers=2 / workers=1: {ratios['workers=2 / workers=1']}× (target ≥ 1.8×); vs plain loop: {ratios['workers=2 / plain loop']}×")
    print(f"outputs byte-identical across variants: {identical}")
    print("serial parts (one process, seconds): " + json.dumps(parts))
    print(f"written {out_file.relative_to(ROOT) if out_file.is_relative_to(ROOT) else out_file}")


if __name__ == "__main__":
    main()

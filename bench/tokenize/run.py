"""bench/tokenize: tokens/s of the `tokenize` stage function with 2 worker processes vs one process.

Builds a ~30 MB jsonl corpus from the wiki40b-ja fixture (converted with the
wiki40b_to_jsonl stage's logic, repeated with a distinct prefix per copy so no
two documents are identical), trains a small SentencePiece model on a sample of
it, then times on the same input:

  tokenize_files(workers=2)   the stage function as the stage runs it
  tokenize_files(workers=1)   the same function in this process
  plain loop                  json.loads + sp.encode(text) once per document + writer, in this process

  before: workers=2 / 1        the previous implementation (kept here for comparison): the parent read the
                               files, pickled raw lines to the workers and wrote each document's Python int
                               list with np.asarray + write

and reports tokens/s, CPU seconds of the parent and of the workers, and the ratio workers=2 /
workers=1 (target ≥ 1.8× on 2 cores), both measured (wall) and bounded from CPU seconds (what an
otherwise idle 2-core machine would give). It also times the serial parts the parent process does
with workers=2, so a miss can be explained.

Usage: PY=$(infra/install-stages | tail -1); PYTHONPATH=stages $PY bench/tokenize/run.py [--mb 30] [--reps 3] [--chunk-kib 1024] [--out FILE]
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


# ----- the previous implementation, for a same-machine comparison -----

def _legacy_chunks(files, size: int):
    for f in files:
        buf: list[str] = []
        first = 1
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if not buf:
                    first = n
                buf.append(line)
                if len(buf) >= size:
                    yield (str(f), first, buf)
                    buf = []
        if buf:
            yield (str(f), first, buf)


def _legacy_encode_chunk(chunk):
    _, _, lines = chunk
    texts = [json.loads(line)["text"] for line in lines]
    eos = tk._SP.eos_id()
    return [x + [eos] for x in tk._SP.encode(texts, num_threads=1)]


def legacy_tokenize(files, model_path, out_prefix, workers=2, chunk_docs=64) -> dict:
    """The stage function before byte ranges + numpy results (chunk_docs=64 as the stage defaulted to)."""
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()
    t0 = time.perf_counter()
    w = IndexedDatasetWriter(out_prefix, optimal_dtype(vocab))
    chunks = _legacy_chunks([Path(f) for f in files], chunk_docs)
    pool = None
    try:
        if workers <= 1:
            tk._init(str(model_path), "text")
            results = map(_legacy_encode_chunk, chunks)
        else:
            pool = mp.get_context("fork").Pool(workers, initializer=tk._init, initargs=(str(model_path), "text"))
            results = pool.imap(_legacy_encode_chunk, chunks, chunksize=1)
        for payload in results:
            for ids in payload:
                w.add_document(ids)
    finally:
        w.close()
        if pool is not None:
            pool.terminate()
    secs = time.perf_counter() - t0
    return {"documents": w.documents, "tokens": w.tokens, "seconds": round(secs, 4), "tokens_per_s": round(w.tokens / secs, 1)}


def serial_parts(files, model_path, chunk_bytes: int) -> dict:
    """Times, in one process, what the parent does with workers>1 and what the workers do."""
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()
    dtype = np.dtype(optimal_dtype(vocab))
    tk._init(str(model_path), "text", dtype.name)
    t = time.perf_counter()
    tasks = list(tk.byte_ranges([Path(f) for f in files], chunk_bytes))
    ranges_s = time.perf_counter() - t
    task_blobs = [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) for x in tasks]
    t = time.perf_counter()
    results = [tk._encode_range(x) for x in tasks]
    encode_s = time.perf_counter() - t
    t = time.perf_counter()
    blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results]
    pickle_out_s = time.perf_counter() - t
    tmp = tempfile.mkdtemp()
    try:
        t = time.perf_counter()
        w = IndexedDatasetWriter(Path(tmp) / "x", dtype)
        for blob in blobs:
            _, n, lengths, buf = pickle.loads(blob)
            w.add_documents(np.frombuffer(lengths, dtype=np.int32), buf)
        w.close()
        unpickle_write_s = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "ranges": len(tasks),
        "parent_byte_ranges_s": round(ranges_s, 4),
        "parent_task_pickle_kb": round(sum(map(len, task_blobs)) / 1e3, 1),
        "worker_read_json_encode_pack_s": round(encode_s, 3),
        "worker_pickle_results_s": round(pickle_out_s, 4),
        "parent_unpickle_and_write_s": round(unpickle_write_s, 4),
        "result_pickle_mb": round(sum(map(len, blobs)) / 1e6, 1),
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
    ap.add_argument("--chunk-kib", type=int, default=tk.DEFAULT_CHUNK_BYTES // 1024,
                    help=f"chunk_bytes of tokenize_files in KiB (stage default {tk.DEFAULT_CHUNK_BYTES // 1024})")
    ap.add_argument("--corpus", help="use this jsonl (or .jsonl.xz) corpus instead of building one (no pyarrow needed)")
    ap.add_argument("--out", help="result file (default bench/results/tokenize-<date>.json)")
    args = ap.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="tanren-bench-tokenize-"))
    try:
        corpus = work / "corpus.jsonl"
        if args.corpus:
            import lzma

            opener = lzma.open if args.corpus.endswith(".xz") else open
            with opener(args.corpus, "rb") as src, open(corpus, "wb") as dst:
                shutil.copyfileobj(src, dst)
            lines = corpus.read_bytes().splitlines()
            first_copy = sum(1 for x in lines if x.startswith(b'{"id": "0:')) or min(len(lines), 400)  # copy 0 trains the model
            corpus_info = {"bytes": corpus.stat().st_size, "documents": len(lines), "source_documents": first_copy, "copies": None,
                           "from": Path(args.corpus).name}
        else:
            log(f"building a {args.mb} MB corpus …")
            corpus_info = build_corpus(corpus, args.mb)
        log(f"corpus: {corpus_info}; training SentencePiece (vocab {args.vocab}) …")
        t = time.perf_counter()
        model = train_model(corpus, work / "sp", args.vocab, sample=corpus_info["source_documents"])
        train_s = time.perf_counter() - t
        files = [corpus]

        cb = args.chunk_kib * 1024
        variants = {
            "workers=2": lambda r: tk.tokenize_files(files, model, work / f"w2-{r}", workers=2, chunk_bytes=cb),
            "workers=1": lambda r: tk.tokenize_files(files, model, work / f"w1-{r}", workers=1, chunk_bytes=cb),
            "plain loop": lambda r: plain_loop(files, model, work / f"loop-{r}"),
            "workers=2, chunk_bytes=256 KiB": lambda r: tk.tokenize_files(files, model, work / f"w2s-{r}", workers=2, chunk_bytes=256 * 1024),
            "workers=2, chunk_bytes=4 MiB": lambda r: tk.tokenize_files(files, model, work / f"w2l-{r}", workers=2, chunk_bytes=4 << 20),
            "before: workers=2": lambda r: legacy_tokenize(files, model, work / f"old2-{r}", workers=2),
            "before: workers=1": lambda r: legacy_tokenize(files, model, work / f"old1-{r}", workers=1),
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
                        for other in ("w1", "loop", "w2s", "w2l", "old2", "old1") for ext in ("bin", "idx"))
        log("timing the serial parts …")
        parts = serial_parts(files, model, cb)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(runs[a], runs[b])), 2)

    ratios = {
        "workers=2 / workers=1": ratio("workers=2", "workers=1"),
        "workers=2 / plain loop": ratio("workers=2", "plain loop"),
        "workers=2 256 KiB / workers=1": ratio("workers=2, chunk_bytes=256 KiB", "workers=1"),
        "workers=2 4 MiB / workers=1": ratio("workers=2, chunk_bytes=4 MiB", "workers=1"),
        "before: workers=2 / before: workers=1": ratio("before: workers=2", "before: workers=1"),
        "workers=2 / before: workers=2": ratio("workers=2", "before: workers=2"),
    }
    # What an otherwise idle 2-core machine would give, from CPU seconds (robust to other load):
    # wall ≥ max(parent CPU, all CPU / 2) with 2 workers; the single process needs all its CPU serially.
    def cpu_bound(name: str, single: str = "workers=1") -> float:
        rs = runs[name]
        one = statistics.median(x["cpu_parent_s"] + x["cpu_children_s"] for x in runs[single])
        par = statistics.median(max(x["cpu_parent_s"], (x["cpu_parent_s"] + x["cpu_children_s"]) / 2) for x in rs)
        return round(one / par, 2)

    ratios["cpu-time bound, workers=2 / workers=1"] = cpu_bound("workers=2")
    ratios["cpu-time bound, workers=2 256 KiB / workers=1"] = cpu_bound("workers=2, chunk_bytes=256 KiB")
    ratios["cpu-time bound, workers=2 4 MiB / workers=1"] = cpu_bound("workers=2, chunk_bytes=4 MiB")
    ratios["cpu-time bound, before: workers=2 / before: workers=1"] = cpu_bound("before: workers=2", "before: workers=1")
    out = {
        "benchmark": "tokenize",
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "corpus": {**corpus_info, "mb": round(corpus_info["bytes"] / 1e6, 1)},
        "tokenizer": {"type": "sentencepiece unigram", "vocab_size": args.vocab, "train_seconds": round(train_s, 2)},
        "chunk_bytes": cb,
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
    print(f"ratio workers=2 / workers=1: {ratios['workers=2 / workers=1']}× wall, "
          f"{ratios['cpu-time bound, workers=2 / workers=1']}× CPU-time bound (target ≥ 1.8×); vs plain loop: {ratios['workers=2 / plain loop']}×")
    print(f"outputs byte-identical across variants: {identical}")
    print("serial parts (one process, seconds): " + json.dumps(parts))
    print(f"written {out_file.relative_to(ROOT) if out_file.is_relative_to(ROOT) else out_file}")


if __name__ == "__main__":
    main()

"""Stage `tokenize`: jsonl documents → Megatron-LM indexed dataset (.bin/.idx), EOS after each document.

params (generated from TokenizeParams; `python -m tanren_stages.protocol` rewrites this block):
  input (string; default the needed stages with .jsonl outputs): needed stage id holding *.jsonl
  tokenizer_input (string; default the one that has it): needed stage id holding tokenizer.model
  tokenizer (string): path of a tokenizer.model (or dir with one) instead of a needed stage
  text_field (string; default "text"): the jsonl field holding a document's text
  workers (integer >= 1; default 2): tokenizer processes; the output is byte-identical for any count
  chunk_bytes (integer >= 1; default 1048576): bytes of jsonl per work item; each worker reads its own byte
      range
  chunk_docs (any): accepted for older pipelines and ignored (work items are byte ranges now)
  output_prefix (string; default "text_document"): name of the .bin/.idx files
(end of params)
Outputs: <prefix>.bin, <prefix>.idx, tokenizer.model, tokenizer/ (copied for later stages), stats.json.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .indexed_dataset import IndexedDatasetWriter, optimal_dtype
from .protocol import InvalidStageInput, StageContext, param, run_stage, write_json

DEFAULT_CHUNK_BYTES = 1 << 20


@dataclass
class TokenizeParams:
    """The `with:` params of a tokenize stage."""

    input: str | None = param(
        default_doc="the needed stages with .jsonl outputs", help="needed stage id holding *.jsonl"
    )
    tokenizer_input: str | None = param(
        default_doc="the one that has it", help="needed stage id holding tokenizer.model"
    )
    tokenizer: str | None = param(help="path of a tokenizer.model (or dir with one) instead of a needed stage")
    text_field: str = param("text", help="the jsonl field holding a document's text")
    workers: int = param(2, min=1, help="tokenizer processes; the output is byte-identical for any count")
    chunk_bytes: int = param(
        DEFAULT_CHUNK_BYTES, min=1, help="bytes of jsonl per work item; each worker reads its own byte range"
    )
    chunk_docs: object = param(help="accepted for older pipelines and ignored (work items are byte ranges now)")
    output_prefix: str = param("text_document", help="name of the .bin/.idx files")


PARAMS = TokenizeParams

_SP = None
_FIELD = "text"
_DTYPE = np.dtype(np.uint16)


def _init(model_path: str, field: str, dtype: str = "uint16") -> None:
    global _SP, _FIELD, _DTYPE
    import sentencepiece as spm

    _SP = spm.SentencePieceProcessor(model_file=model_path)
    _FIELD = field
    _DTYPE = np.dtype(dtype)


def _range_worker(conn, init: tuple[str, str, str]) -> None:
    """A pool process: encodes each range it is sent, in order, until it is sent None."""
    _init(*init)
    while (task := conn.recv()) is not None:
        conn.send(_encode_range(task))


class _RangePool:
    """Forked processes that encode byte ranges, results in task order, with no helper threads.

    multiprocessing.Pool joins three helper threads when it is terminated; abandoned mid-iteration (a bad line)
    in a process with other threads, that join hung for good in the test suite. Here each process has its own
    pipe, task i goes to process i mod n, at most two tasks are in flight per process, and results are read in
    task order: nothing to join but the processes, which are killed if they do not stop.
    """

    IN_FLIGHT = 2

    def __init__(self, workers: int, init: tuple[str, str, str]):
        ctx = mp.get_context("fork")
        self._conns = []
        self._procs = []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_range_worker, args=(child, init), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def imap(self, tasks):
        """Yields each task's result, in task order."""
        n = len(self._conns)
        tasks = list(tasks)
        sent = 0
        for i in range(len(tasks)):
            while sent < len(tasks) and sent < i + n * self.IN_FLIGHT:
                try:
                    self._conns[sent % n].send(tasks[sent])
                except OSError as e:  # the process is gone: its end of the pipe is closed
                    raise self._died(self._procs[sent % n]) from e
                sent += 1
            conn, proc = self._conns[i % n], self._procs[i % n]
            # A process that died (killed, out of memory) would leave recv() waiting forever.
            while not conn.poll(1.0):
                if not proc.is_alive():
                    raise self._died(proc)
            try:
                yield conn.recv()
            except EOFError as e:  # it died after the poll saw its pipe close
                raise self._died(proc) from e

    @staticmethod
    def _died(proc) -> RuntimeError:
        proc.join(timeout=1)
        return RuntimeError(f"tokenizer process {proc.pid} died (exit code {proc.exitcode})")

    def close(self) -> None:
        """Stops the processes: asked first, killed if they do not stop within a few seconds."""
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()


def _line_number(fname: str, start: int, index: int) -> int:
    """1-based line number of the index-th line (counting blank ones) of the range starting at byte `start`."""
    with open(fname, "rb") as fh:
        before = fh.read(start).count(b"\n")
    return before + index + 1


def _encode_range(task: tuple[str, int, int]):
    """(file, start byte, end byte) → ("ok", documents, int32 lengths bytes, ids bytes in the output dtype), EOS
    after each document; or ("error", message naming file:line). The range starts at a line start and ends after
    a newline (or at the end of the file)."""
    fname, start, end = task
    with open(fname, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        for i, raw in enumerate(data.split(b"\n")):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return ("error", f"{fname}:{_line_number(fname, start, i)}: not valid UTF-8 ({e.reason})")
        raise
    texts = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return ("error", f"{fname}:{_line_number(fname, start, i)}: not valid JSON ({e.msg})")
        t = obj.get(_FIELD) if isinstance(obj, dict) else None
        if not isinstance(t, str):
            return ("error", f"{fname}:{_line_number(fname, start, i)}: field '{_FIELD}' is missing or not a string")
        texts.append(t)
    ids = _SP.encode(texts, num_threads=1)
    n = len(ids)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=n)
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=_DTYPE, count=int(lengths.sum()))
    flat = np.insert(flat, np.cumsum(lengths), _SP.eos_id())  # EOS after each document
    return ("ok", n, (lengths + 1).astype(np.int32).tobytes(), flat.tobytes())


def byte_ranges(files: list[Path], chunk_bytes: int = DEFAULT_CHUNK_BYTES):
    """(file, start, end) ranges of about chunk_bytes, split at line boundaries, in file order. They depend only on
    the files and chunk_bytes (not on the worker count); the parent reads one line per range to find a boundary."""
    for f in files:
        size = f.stat().st_size
        pos = 0
        with open(f, "rb") as fh:
            while pos < size:
                target = pos + chunk_bytes
                if target >= size:
                    end = size
                else:
                    fh.seek(target - 1)
                    fh.readline()  # up to and including the newline at or after target - 1
                    end = fh.tell()
                yield (str(f), pos, end)
                pos = end


def tokenize_files(
    files: list[Path],
    model_path: str | Path,
    out_prefix: str | Path,
    *,
    workers: int = 2,
    field: str = "text",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    on_progress=None,
) -> dict:
    """Tokenises jsonl files into out_prefix.bin/.idx; returns {documents, tokens, seconds, tokens_per_s, ...}.

    The parent only cuts the files into byte ranges (at line boundaries) and writes: each worker reads its
    own range, parses, encodes and returns one numpy buffer per range (int32 lengths + ids in the output
    dtype), which the parent appends with one write. workers=1 runs the same function in this process;
    >1 uses a process pool with ordered results, so the output is byte-identical whatever the worker count.
    """
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()
    dtype = np.dtype(optimal_dtype(vocab))
    t0 = time.perf_counter()
    writer = IndexedDatasetWriter(out_prefix, dtype)
    tasks = byte_ranges([Path(f) for f in files], max(1, int(chunk_bytes)))
    init = (str(model_path), field, dtype.name)
    pool = None
    # ("ok", documents, lengths, ids) or ("error", message): told apart by the first item below.
    results: Iterable[Any]
    try:
        if workers <= 1:
            _init(*init)
            results = map(_encode_range, tasks)
        else:
            pool = _RangePool(workers, init)
            results = pool.imap(tasks)
        for res in results:
            if res[0] == "error":
                raise InvalidStageInput(res[1])
            _, n, lengths, buf = res
            if n:
                writer.add_documents(np.frombuffer(lengths, dtype=np.int32), buf)
            if on_progress:
                on_progress(writer.documents, writer.tokens)
    finally:
        writer.close()
        if pool is not None:
            pool.close()
    secs = time.perf_counter() - t0
    return {
        "documents": writer.documents,
        "tokens": writer.tokens,
        "seconds": round(secs, 4),
        "tokens_per_s": round(writer.tokens / secs, 1) if secs > 0 else None,
        "workers": workers,
        "dtype": str(writer.dtype),
        "vocab_size": vocab,
    }


def find_tokenizer(ctx: StageContext, a: TokenizeParams) -> Path:
    p = ctx.params
    if a.tokenizer is not None:
        t = Path(a.tokenizer)
        t = t / "tokenizer.model" if t.is_dir() else t
        if not t.is_file():
            raise InvalidStageInput(f"{p.source}: field 'tokenizer': {t} is not a SentencePiece model")
        return t
    if a.tokenizer_input is not None:
        t = ctx.input_dir(a.tokenizer_input, param="tokenizer_input") / "tokenizer.model"
        if not t.is_file():
            raise InvalidStageInput(f"{p.source}: field 'tokenizer_input': stage has no tokenizer.model")
        return t
    for d in ctx.input_dirs():
        if (d / "tokenizer.model").is_file():
            return d / "tokenizer.model"
    raise InvalidStageInput(f"{p.source}: no tokenizer.model in any needed stage; set 'tokenizer' or 'tokenizer_input'")


def main(ctx: StageContext) -> None:
    p = ctx.params
    a = ctx.typed_params(TokenizeParams)
    tok = find_tokenizer(ctx, a)
    if a.input is not None:
        src = ctx.input_dir(a.input)
        files = sorted(src.rglob("*.jsonl"))
    else:
        files = [f for d in ctx.input_dirs() for f in sorted(d.rglob("*.jsonl"))]
    if not files:
        raise InvalidStageInput(f"{p.source}: no .jsonl files in the needed stages (set field 'input')")
    prefix = a.output_prefix
    workers = a.workers
    last = [0.0]

    def progress(docs, tokens):
        now = time.monotonic()
        if now - last[0] > 2:
            last[0] = now
            ctx.progress(docs, message=f"{tokens} tokens")

    stats = tokenize_files(
        files,
        tok,
        ctx.output / prefix,
        workers=workers,
        field=a.text_field,
        chunk_bytes=a.chunk_bytes,
        on_progress=progress,
    )
    shutil.copyfile(tok, ctx.output / "tokenizer.model")
    if (tok.parent / "tokenizer").is_dir():
        shutil.copytree(tok.parent / "tokenizer", ctx.output / "tokenizer")
    else:
        from .train_tokenizer import save_hf_tokenizer

        save_hf_tokenizer(ctx.output / "tokenizer.model", ctx.output / "tokenizer")
    stats["files"] = [str(f) for f in files]
    write_json(ctx.output / "stats.json", stats)
    ctx.metric({"tokens_per_s": stats["tokens_per_s"]})
    ctx.artifact(f"{prefix}.bin", "token ids")
    ctx.artifact(f"{prefix}.idx", "Megatron MMIDIDX index")
    ctx.result({k: stats[k] for k in ("documents", "tokens", "tokens_per_s", "seconds", "workers")})


if __name__ == "__main__":
    run_stage(main)

"""Stage `tokenize`: jsonl documents → Megatron-LM indexed dataset (.bin/.idx), EOS after each document.

params:
  input            needed stage id holding *.jsonl (default: the needed stage with .jsonl outputs)
  tokenizer_input  needed stage id holding tokenizer.model (default: the one that has it)
  tokenizer        path of a tokenizer.model (or dir with one) instead of a needed stage
  text_field       (default "text")
  workers          tokenizer processes (default 2)
  output_prefix    (default "text_document")
Outputs: <prefix>.bin, <prefix>.idx, tokenizer.model, tokenizer/ (copied for later stages), stats.json.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from pathlib import Path

from .indexed_dataset import IndexedDatasetWriter, optimal_dtype
from .protocol import InvalidStageInput, StageContext, run_stage, write_json

_SP = None
_FIELD = "text"


def _init(model_path: str, field: str) -> None:
    global _SP, _FIELD
    import sentencepiece as spm

    _SP = spm.SentencePieceProcessor(model_file=model_path)
    _FIELD = field


def _encode_chunk(chunk: tuple[str, int, list[str]]):
    """(file, first line number, raw lines) → list of token id lists with EOS appended."""
    fname, first, lines = chunk
    texts = []
    for i, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return ("error", f"{fname}:{first + i}: not valid JSON ({e.msg})")
        t = obj.get(_FIELD) if isinstance(obj, dict) else None
        if not isinstance(t, str):
            return ("error", f"{fname}:{first + i}: field '{_FIELD}' is missing or not a string")
        texts.append(t)
    eos = _SP.eos_id()
    ids = _SP.encode(texts, num_threads=1)
    return ("ok", [x + [eos] for x in ids])


def _chunks(files: list[Path], size: int):
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


def tokenize_files(files: list[Path], model_path: str | Path, out_prefix: str | Path, *, workers: int = 2,
                   field: str = "text", chunk_docs: int = 64, on_progress=None) -> dict:
    """Tokenises jsonl files into out_prefix.bin/.idx; returns {documents, tokens, seconds, tokens_per_s}.

    workers=1 runs in this process; >1 uses a process pool with ordered results, so
    the output is byte-identical whatever the worker count.
    """
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()
    t0 = time.perf_counter()
    writer = IndexedDatasetWriter(out_prefix, optimal_dtype(vocab))
    docs = 0
    chunks = _chunks([Path(f) for f in files], chunk_docs)
    try:
        if workers <= 1:
            _init(str(model_path), field)
            results = map(_encode_chunk, chunks)
            pool = None
        else:
            pool = mp.get_context("fork").Pool(workers, initializer=_init, initargs=(str(model_path), field))
            results = pool.imap(_encode_chunk, chunks, chunksize=1)
        for status, payload in results:
            if status == "error":
                raise InvalidStageInput(payload)
            for ids in payload:
                writer.add_document(ids)
            docs += len(payload)
            if on_progress:
                on_progress(docs, writer.tokens)
    finally:
        writer.close()
        if workers > 1 and pool is not None:
            pool.terminate()
    secs = time.perf_counter() - t0
    return {"documents": docs, "tokens": writer.tokens, "seconds": round(secs, 4),
            "tokens_per_s": round(writer.tokens / secs, 1) if secs > 0 else None, "workers": workers,
            "dtype": str(writer.dtype), "vocab_size": vocab}


def find_tokenizer(ctx: StageContext) -> Path:
    p = ctx.params
    if p.has("tokenizer"):
        t = Path(p.str("tokenizer"))
        t = t / "tokenizer.model" if t.is_dir() else t
        if not t.is_file():
            raise InvalidStageInput(f"{p.source}: field 'tokenizer': {t} is not a SentencePiece model")
        return t
    if p.has("tokenizer_input"):
        t = ctx.input_dir(p.str("tokenizer_input"), param="tokenizer_input") / "tokenizer.model"
        if not t.is_file():
            raise InvalidStageInput(f"{p.source}: field 'tokenizer_input': stage has no tokenizer.model")
        return t
    for d in ctx.input_dirs():
        if (d / "tokenizer.model").is_file():
            return d / "tokenizer.model"
    raise InvalidStageInput(f"{p.source}: no tokenizer.model in any needed stage; set 'tokenizer' or 'tokenizer_input'")


def main(ctx: StageContext) -> None:
    p = ctx.params
    p.reject_unknown({"input", "tokenizer_input", "tokenizer", "text_field", "workers", "output_prefix", "chunk_docs"})
    tok = find_tokenizer(ctx)
    if p.has("input"):
        src = ctx.input_dir(p.str("input"))
        files = sorted(src.rglob("*.jsonl"))
    else:
        files = [f for d in ctx.input_dirs() for f in sorted(d.rglob("*.jsonl"))]
    if not files:
        raise InvalidStageInput(f"{p.source}: no .jsonl files in the needed stages (set field 'input')")
    prefix = p.str("output_prefix", "text_document")
    workers = p.int("workers", 2, min=1)
    last = [0.0]

    def progress(docs, tokens):
        now = time.monotonic()
        if now - last[0] > 2:
            last[0] = now
            ctx.progress(docs, message=f"{tokens} tokens")

    stats = tokenize_files(files, tok, ctx.output / prefix, workers=workers, field=p.str("text_field", "text"),
                           chunk_docs=p.int("chunk_docs", 64, min=1), on_progress=progress)
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

import json
import os
import signal
import struct
import time

import numpy as np
import pytest
import sentencepiece as spm

from tanren_stages.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from tanren_stages.protocol import InvalidStageInput
from tanren_stages.tokenize import _RangePool, byte_ranges, tokenize_files


def test_idx_layout_field_by_field(tokenized, corpus):
    prefix = tokenized.output / "text_document"
    raw = (prefix.parent / "text_document.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack("<Q", raw[9:17])[0] == 1
    assert raw[17] == 8  # uint16: vocab < 65500
    seqs, docs = struct.unpack("<QQ", raw[18:34])
    n = tokenized.result["documents"]
    assert seqs == n == 360 and docs == n + 1
    off = 34
    lengths = np.frombuffer(raw, np.int32, seqs, off)
    off += 4 * seqs
    pointers = np.frombuffer(raw, np.int64, seqs, off)
    off += 8 * seqs
    doc_idx = np.frombuffer(raw, np.int64, docs, off)
    off += 8 * docs
    assert off == len(raw)
    assert pointers[0] == 0 and np.all(pointers[1:] == np.cumsum(lengths[:-1].astype(np.int64)) * 2)
    assert list(doc_idx) == list(range(n + 1))
    binary = np.fromfile(str(prefix) + ".bin", dtype=np.uint16)
    assert binary.size == lengths.sum() == tokenized.result["tokens"]

    sp = spm.SentencePieceProcessor(model_file=str(tokenized.output / "tokenizer.model"))
    first = json.loads((corpus.output / "articles.jsonl").read_text(encoding="utf-8").splitlines()[0])["text"]
    doc0 = binary[: lengths[0]].tolist()
    assert doc0 == sp.encode(first) + [sp.eos_id()]
    ds = IndexedDataset(prefix)
    assert ds[0].tolist() == doc0 and len(ds) == n
    assert all(int(ds[i][-1]) == sp.eos_id() for i in range(n))


def test_workers_give_identical_output(tmp_path, corpus, tokenizer_run):
    """workers=1 and workers=2 write byte-identical .bin/.idx, equal to one sp.encode per document + EOS."""
    src = (corpus.output / "articles.jsonl").read_text(encoding="utf-8").splitlines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(src[:150]) + "\n\n", encoding="utf-8")  # a blank line at the end
    b.write_text("\n".join(src[150:]), encoding="utf-8")  # no newline at the end
    files = [a, b]
    model = tokenizer_run.output / "tokenizer.model"
    one = tokenize_files(files, model, tmp_path / "one", workers=1, chunk_bytes=8192)
    two = tokenize_files(files, model, tmp_path / "two", workers=2, chunk_bytes=8192)
    tokenize_files(files, model, tmp_path / "big", workers=2)  # one range per file
    assert (
        one["documents"] == two["documents"] == len(src) and one["tokens"] == two["tokens"] and one["tokens_per_s"] > 0
    )
    for ext in (".bin", ".idx"):
        assert (
            (tmp_path / f"one{ext}").read_bytes()
            == (tmp_path / f"two{ext}").read_bytes()
            == (tmp_path / f"big{ext}").read_bytes()
        )
    sp = spm.SentencePieceProcessor(model_file=str(model))
    with IndexedDatasetWriter(tmp_path / "ref", np.uint16) as w:
        for line in src:
            w.add_document(sp.encode(json.loads(line)["text"]) + [sp.eos_id()])
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ref{ext}").read_bytes() == (tmp_path / f"one{ext}").read_bytes()


def test_byte_ranges_split_at_line_starts(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_bytes(b"".join(b'{"text": "%s"}\n' % (b"a" * (i % 37)) for i in range(200)) + b'{"text": "last"}')
    data = f.read_bytes()
    for size in (1, 7, 64, 1000, 10**6):
        ranges = list(byte_ranges([f], size))
        assert ranges[0][1] == 0 and ranges[-1][2] == len(data)
        assert all(r[2] == n[1] for r, n in zip(ranges, ranges[1:]))  # contiguous, no gaps or overlaps
        assert all(data[r[2] - 1 : r[2]] == b"\n" for r in ranges[:-1])  # each ends after a newline
    assert len(list(byte_ranges([f], 1))) == 201  # one line per range at the smallest size
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert list(byte_ranges([tmp_path / "empty.jsonl"], 10)) == []


def test_add_documents_matches_add_document(tmp_path):
    docs = [[1, 2, 3], [], [7], list(range(100, 140))]
    with IndexedDatasetWriter(tmp_path / "one", np.uint16) as w:
        for d in docs:
            w.add_document(d)
    with IndexedDatasetWriter(tmp_path / "many", np.uint16) as w:
        w.add_document(docs[0])
        flat = np.array([i for d in docs[1:3] for i in d], dtype=np.uint16)
        w.add_documents([0, 1], flat.tobytes())
        w.add_documents(np.array([40], dtype=np.int32), np.array(docs[3], dtype=np.uint16))
        w.add_documents([], b"")
        with pytest.raises(ValueError):
            w.add_documents([2], b"\x00\x00")  # 2 tokens need 4 bytes
        assert w.documents == 4 and w.tokens == 44
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"many{ext}").read_bytes()
    ds = IndexedDataset(tmp_path / "many")
    assert [ds[i].tolist() for i in range(len(ds))] == docs


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_line_is_named(tmp_path, tokenizer_run, workers):
    f = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": f"文書{i}"}, ensure_ascii=False) for i in range(300)]
    lines[10] = ""  # blank lines are skipped but counted
    lines[250] = '{"text": 5}'
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InvalidStageInput, match=r"bad\.jsonl:251: field 'text'"):
        tokenize_files([f], tokenizer_run.output / "tokenizer.model", tmp_path / "o", workers=workers, chunk_bytes=512)
    lines[250] = '{"text": "ok"'
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InvalidStageInput, match=r"bad\.jsonl:251: not valid JSON"):
        tokenize_files([f], tokenizer_run.output / "tokenizer.model", tmp_path / "o", workers=workers, chunk_bytes=512)
    f.write_bytes(f.read_bytes().replace(b'{"text": "ok"', b'{"text": "\xff"}'))
    with pytest.raises(InvalidStageInput, match=r"bad\.jsonl:251: not valid UTF-8"):
        tokenize_files([f], tokenizer_run.output / "tokenizer.model", tmp_path / "o", workers=workers, chunk_bytes=512)


def test_a_dead_tokenizer_process_raises_instead_of_hanging(tmp_path, tokenizer_run):
    """A pool process killed (out of memory, an operator) ends the iteration with an error naming it; close() returns."""
    f = tmp_path / "docs.jsonl"
    f.write_text(
        "".join(json.dumps({"text": f"文書{i}"}, ensure_ascii=False) + "\n" for i in range(200)), encoding="utf-8"
    )
    tasks = list(byte_ranges([f], 256))
    assert len(tasks) >= 4
    pool = _RangePool(2, (str(tokenizer_run.output / "tokenizer.model"), "text", "uint16"))
    victim = pool._procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=10)
    t0 = time.monotonic()
    got = []
    with pytest.raises(RuntimeError, match=rf"tokenizer process {victim.pid} died \(exit code -9\)"):
        for res in pool.imap(tasks):
            got.append(res)
    pool.close()
    assert time.monotonic() - t0 < 30
    assert len(got) <= 1, "only task 0 (the live process's) can have been answered"

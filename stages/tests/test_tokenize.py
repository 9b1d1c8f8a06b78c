import json
import struct

import numpy as np
import sentencepiece as spm

from tanren_stages.indexed_dataset import IndexedDataset
from tanren_stages.tokenize import tokenize_files


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
    lengths = np.frombuffer(raw, np.int32, seqs, off); off += 4 * seqs
    pointers = np.frombuffer(raw, np.int64, seqs, off); off += 8 * seqs
    doc_idx = np.frombuffer(raw, np.int64, docs, off); off += 8 * docs
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
    files = [corpus.output / "articles.jsonl"]
    model = tokenizer_run.output / "tokenizer.model"
    one = tokenize_files(files, model, tmp_path / "one", workers=1, chunk_docs=16)
    two = tokenize_files(files, model, tmp_path / "two", workers=2, chunk_docs=16)
    assert one["tokens"] == two["tokens"] and one["tokens_per_s"] > 0
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"two{ext}").read_bytes()

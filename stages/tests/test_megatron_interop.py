"""tanren's .bin/.idx (stages/tanren_stages/indexed_dataset.py) read by Megatron's own reader,
megatron.core.datasets.indexed_dataset.IndexedDataset from the megatron-core package (a dev dependency: it imports on
a CPU-only machine with torch, numpy and packaging alone; it warns that Transformer Engine and Apex are absent), and
Megatron's writer read by tanren's. Every sequence is compared, for a uint16 and an int32 (vocabulary >= 65,500) case.
"""

from __future__ import annotations

import megatron.core.datasets.indexed_dataset as megatron_ids  # noqa: E402  (megatron-core: stages/pyproject.toml, group dev)
import numpy as np
import pytest

from tanren_stages.indexed_dataset import IndexedDataset as TanrenReader
from tanren_stages.indexed_dataset import IndexedDatasetWriter, optimal_dtype


def documents(vocab: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab, size=int(rng.integers(1, 300)), dtype=np.int64) for _ in range(n)]
    docs[3] = np.array([vocab - 1] * 7, dtype=np.int64)  # the largest id, where a too-small dtype would wrap
    docs[5] = np.array([0], dtype=np.int64)
    return docs


@pytest.mark.parametrize("vocab, dtype", [(32_000, np.uint16), (65_500, np.int32), (100_352, np.int32)])
def test_megatron_reads_tanren(tmp_path, vocab, dtype):
    assert optimal_dtype(vocab) is dtype and megatron_ids.DType.optimal_dtype(vocab) is dtype  # same rule as Megatron's
    docs = documents(vocab, 40, vocab)
    prefix = tmp_path / "text_document"
    with IndexedDatasetWriter(prefix, dtype=optimal_dtype(vocab)) as w:
        for d in docs[:20]:
            w.add_document(d)
        lengths = np.array([len(d) for d in docs[20:]], dtype=np.int32)
        w.add_documents(lengths, np.concatenate(docs[20:]).astype(dtype))  # the bulk path the tokenize stage uses

    ds = megatron_ids.IndexedDataset(str(prefix))
    assert ds.index.dtype == dtype and len(ds) == len(docs)
    assert np.array_equal(ds.sequence_lengths, [len(d) for d in docs])
    assert np.array_equal(ds.document_indices, np.arange(len(docs) + 1))  # one sequence per document
    for i, d in enumerate(docs):
        got = ds[i]
        assert got.dtype == dtype and np.array_equal(got.astype(np.int64), d), f"sequence {i}"
    assert np.array_equal(ds.get(3, offset=2, length=4).astype(np.int64), docs[3][2:6])


@pytest.mark.parametrize("vocab", [32_000, 100_352])
def test_tanren_reads_megatron(tmp_path, vocab):
    import torch

    dtype = megatron_ids.DType.optimal_dtype(vocab)
    docs = documents(vocab, 12, vocab + 1)
    prefix = str(tmp_path / "mg")
    b = megatron_ids.IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for d in docs:
        b.add_item(torch.from_numpy(d))
        b.end_document()
    b.finalize(prefix + ".idx")
    ours = TanrenReader(prefix)
    assert ours.dtype == np.dtype(dtype) and len(ours) == len(docs)
    for i, d in enumerate(docs):
        assert np.array_equal(ours[i].astype(np.int64), d), f"sequence {i}"

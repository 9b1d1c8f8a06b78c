"""Megatron-LM's MMapIndexedDataset (.bin + .idx) format, written and read without Megatron.

.idx layout (little-endian), as megatron/core/datasets/indexed_dataset.py writes it:
  b"MMIDIDX\\x00\\x00"   9-byte magic
  uint64               version, 1
  uint8                dtype code (DTYPE_CODES)
  uint64               sequence count  S
  uint64               document count  D (= number of documents + 1)
  int32[S]             sequence lengths (tokens)
  int64[S]             sequence pointers (byte offset of each sequence in .bin)
  int64[D]             document indices (0, then the sequence count after each document)
.bin is the concatenated token ids in that dtype. Here each document is one sequence.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


def dtype_code(dtype) -> int:
    for k, v in DTYPE_CODES.items():
        if np.dtype(v) == np.dtype(dtype):
            return k
    raise ValueError(f"dtype {dtype} has no Megatron code")


def optimal_dtype(vocab_size: int):
    return np.uint16 if vocab_size < 65500 else np.int32


class IndexedDatasetWriter:
    """Streams documents into prefix.bin and writes prefix.idx on close."""

    def __init__(self, prefix: str | Path, dtype=np.uint16):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self.bin = open(self.prefix.with_suffix(".bin") if self.prefix.suffix == "" else Path(str(self.prefix) + ".bin"), "wb")
        self.lengths: list[int] = []
        self.doc_idx: list[int] = [0]
        self.tokens = 0

    def add_document(self, ids) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self.bin.write(arr.tobytes(order="C"))
        self.lengths.append(int(arr.size))
        self.doc_idx.append(len(self.lengths))
        self.tokens += int(arr.size)

    def close(self) -> None:
        self.bin.close()
        lengths = np.asarray(self.lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with open(str(self.prefix) + ".idx", "wb") as f:
            f.write(INDEX_HEADER)
            f.write(struct.pack("<Q", 1))
            f.write(struct.pack("<B", dtype_code(self.dtype)))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(self.doc_idx)))
            f.write(lengths.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(np.asarray(self.doc_idx, dtype=np.int64).tobytes(order="C"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class IndexedDataset:
    """Read-only view of prefix.bin/.idx (memory-mapped)."""

    def __init__(self, prefix: str | Path):
        prefix = str(prefix)
        if prefix.endswith(".idx") or prefix.endswith(".bin"):
            prefix = prefix[:-4]
        self.prefix = prefix
        with open(prefix + ".idx", "rb") as f:
            magic = f.read(9)
            if magic != INDEX_HEADER:
                raise ValueError(f"{prefix}.idx: not a Megatron MMIDIDX index (magic {magic!r})")
            (version,) = struct.unpack("<Q", f.read(8))
            if version != 1:
                raise ValueError(f"{prefix}.idx: unsupported version {version}")
            (code,) = struct.unpack("<B", f.read(1))
            self.dtype = np.dtype(DTYPE_CODES[code])
            (self.sequence_count,) = struct.unpack("<Q", f.read(8))
            (self.document_count,) = struct.unpack("<Q", f.read(8))
            offset = f.tell()
        idx = np.memmap(prefix + ".idx", mode="r", dtype=np.uint8)
        s, d = self.sequence_count, self.document_count
        self.sequence_lengths = np.frombuffer(idx, dtype=np.int32, count=s, offset=offset)
        self.sequence_pointers = np.frombuffer(idx, dtype=np.int64, count=s, offset=offset + 4 * s)
        self.document_indices = np.frombuffer(idx, dtype=np.int64, count=d, offset=offset + 12 * s)
        self.bin = np.memmap(prefix + ".bin", mode="r", dtype=self.dtype)

    def __len__(self) -> int:
        return self.sequence_count

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize
        return np.asarray(self.bin[start:start + int(self.sequence_lengths[i])])

    @property
    def total_tokens(self) -> int:
        return int(self.bin.shape[0])

    def all_tokens(self) -> np.ndarray:
        return self.bin

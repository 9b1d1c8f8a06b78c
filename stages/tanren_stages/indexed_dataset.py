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
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}


def dtype_code(dtype) -> int:
    for k, v in DTYPE_CODES.items():
        if np.dtype(v) == np.dtype(dtype):
            return k
    raise ValueError(f"dtype {dtype} has no Megatron code")


def optimal_dtype(vocab_size: int):
    return np.uint16 if vocab_size < 65500 else np.int32


class IndexedDatasetWriter:
    """Streams documents into prefix.bin and writes prefix.idx on close (one sequence per document)."""

    def __init__(self, prefix: str | Path, dtype=np.uint16):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self.bin = open(str(self.prefix) + ".bin", "wb")
        self._lengths: list[np.ndarray] = []  # int32 arrays, one per add_documents call / run of add_document
        self._pending: list[int] = []  # lengths of add_document calls not yet folded into _lengths
        self.documents = 0
        self.tokens = 0

    def add_document(self, ids) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self.bin.write(arr.tobytes(order="C"))
        self._pending.append(int(arr.size))
        self.documents += 1
        self.tokens += int(arr.size)

    def add_documents(self, lengths, buf) -> None:
        """Appends len(lengths) documents at once: `lengths` (int32-compatible) and `buf`, their concatenated ids
        already in this writer's dtype (bytes, memoryview or ndarray). One write, no per-document Python work."""
        lengths = np.ascontiguousarray(lengths, dtype=np.int32)
        if isinstance(buf, np.ndarray):
            if buf.dtype != self.dtype:
                raise ValueError(f"add_documents: ids have dtype {buf.dtype}, the writer writes {self.dtype}")
            buf = np.ascontiguousarray(buf).data
        total = int(lengths.sum(dtype=np.int64))
        if (lengths < 0).any() or memoryview(buf).nbytes != total * self.dtype.itemsize:
            raise ValueError(
                f"add_documents: {memoryview(buf).nbytes} bytes of ids for lengths summing to {total} "
                f"tokens of {self.dtype} ({total * self.dtype.itemsize} bytes)"
            )
        self._fold()
        self.bin.write(buf)
        self._lengths.append(lengths)
        self.documents += int(lengths.size)
        self.tokens += total

    def _fold(self) -> None:
        if self._pending:
            self._lengths.append(np.asarray(self._pending, dtype=np.int32))
            self._pending = []

    @property
    def lengths(self) -> np.ndarray:
        """Sequence lengths so far (int32)."""
        self._fold()
        return np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int32)

    def close(self) -> None:
        if self.bin.closed:
            return
        self.bin.close()
        lengths = self.lengths
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.arange(len(lengths) + 1, dtype=np.int64)  # document i = sequence i
        with open(str(self.prefix) + ".idx", "wb") as f:
            f.write(INDEX_HEADER)
            f.write(struct.pack("<Q", 1))
            f.write(struct.pack("<B", dtype_code(self.dtype)))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(doc_idx)))
            f.write(lengths.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(doc_idx.tobytes(order="C"))

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
        return np.asarray(self.bin[start : start + int(self.sequence_lengths[i])])

    @property
    def total_tokens(self) -> int:
        return int(self.bin.shape[0])

    def all_tokens(self) -> np.ndarray:
        return self.bin

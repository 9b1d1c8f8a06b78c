"""Stage `wiki40b_to_jsonl`: wiki-40b parquet shards → articles.jsonl + stats.json.

params (generated from Wiki40bParams; `python -m tanren_stages.protocol` rewrites this block):
  source (string; required): directory (or single file) of parquet shards with columns wikidata_id, text[,
      version_id]; relative to the current dir
  splits (list; default ["train"]): which of wiki-40b's splits (train, validation, test) to read from a
      directory: a shard belongs to the split its file name starts with (train-00000-of-00002.parquet,
      validation-…, test-…, as the Hugging Face copy names them) or the directory it is in (…/train/…); shards
      of no known split are skipped and listed in stats.json. A single file given as `source` is read whatever
      its name
  min_chars (integer >= 0; default 100): drop articles whose converted text is shorter
  min_japanese_ratio (number >= 0, <= 1; default 0.5): drop articles whose share of Japanese characters among
      non-space characters is lower
  dedup (bool; default true): drop exact duplicates after NFKC/whitespace normalisation
  batch_size (integer >= 1; default 1024): rows per streamed record batch
  limit (integer >= 1): stop after keeping this many articles
(end of params)
Text layout: wiki-40b marks an article as `_START_ARTICLE_` title, then `_START_SECTION_` title and
`_START_PARAGRAPH_` text (with `_NEWLINE_` inside) blocks. The output text keeps that structure as plain lines:
the article title first, then each section title on a line of its own before its paragraphs, each
`_NEWLINE_` a line break. Titles carry much of an article's meaning (a paragraph rarely names its subject),
so a model pretrained on the text sees them; `title` is also kept as a field of its own.
Streams record batches, so memory stays flat whatever the shard size.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .protocol import InvalidStageInput, StageContext, Timer, param, run_stage, write_json

_JA = re.compile(
    r"[\u3040-\u309f\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff01-\uff9f\u31f0-\u31ff]"
)
_WS = re.compile(r"\s+")


SPLITS = ("train", "validation", "test")


@dataclass
class Wiki40bParams:
    """The `with:` params of a wiki40b_to_jsonl stage."""

    source: str = param(
        required=True,
        help="directory (or single file) of parquet shards with columns wikidata_id, text[, version_id]; relative "
        "to the current dir",
    )
    splits: list = param(
        ["train"],
        help="which of wiki-40b's splits (train, validation, test) to read from a directory: a shard belongs to the "
        "split its file name starts with (train-00000-of-00002.parquet, validation-…, test-…, as the Hugging Face "
        "copy names them) or the directory it is in (…/train/…); shards of no known split are skipped and listed "
        "in stats.json. A single file given as `source` is read whatever its name",
    )
    min_chars: int = param(100, min=0, help="drop articles whose converted text is shorter")
    min_japanese_ratio: float = param(
        0.5, min=0, max=1, help="drop articles whose share of Japanese characters among non-space characters is lower"
    )
    dedup: bool = param(True, help="drop exact duplicates after NFKC/whitespace normalisation")
    batch_size: int = param(1024, min=1, help="rows per streamed record batch")
    limit: int | None = param(min=1, help="stop after keeping this many articles")


PARAMS = Wiki40bParams


def convert_wiki40b(raw: str) -> tuple[str, str]:
    """One wiki-40b text → (title, plain text).

    The text starts with the article title on its own line; section titles
    become their own line, paragraphs follow on lines of their own, `_NEWLINE_`
    inside a paragraph becomes a line break.
    """
    title = ""
    out: list[str] = []
    state = None
    for line in raw.split("\n"):
        line = line.strip()
        if not line:
            continue
        if line in ("_START_ARTICLE_", "_START_SECTION_", "_START_PARAGRAPH_"):
            state = line
            continue
        if state == "_START_ARTICLE_":
            title = line
        elif state == "_START_SECTION_":
            out.append(line)
        elif state == "_START_PARAGRAPH_":
            out.extend(p for p in (s.strip() for s in line.split("_NEWLINE_")) if p)
        else:  # text before any marker: keep it
            out.append(line.replace("_NEWLINE_", "\n"))
        state = None if state in ("_START_ARTICLE_", "_START_SECTION_") else state
    if title and out:
        out.insert(0, title)
    return title, "\n".join(out)


def japanese_ratio(text: str) -> float:
    chars = _WS.sub("", text)
    if not chars:
        return 0.0
    return len(_JA.findall(chars)) / len(chars)


def dedup_key(text: str) -> bytes:
    return hashlib.sha1(_WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().encode("utf-8")).digest()


def split_of(path: Path, root: Path) -> str | None:
    """The wiki-40b split a shard belongs to: its file name's prefix (train-00000-of-00002.parquet), else the
    nearest directory under root named after a split; None when neither tells."""
    m = re.match(r"(train|validation|test)(?=[-_.])", path.name)
    if m:
        return m.group(1)
    for part in reversed(path.relative_to(root).parts[:-1]):
        if part in SPLITS:
            return part
    return None


def shard_files(source: Path, splits: list[str] | tuple[str, ...] = ("train",)) -> tuple[list[Path], list[Path]]:
    """(shards of the wanted splits, other shards skipped). A single file is read whatever its name."""
    if source.is_file():
        return [source], []
    if not source.is_dir():
        raise InvalidStageInput(f"params field 'source': {source} does not exist")
    files = sorted(p for p in source.rglob("*.parquet"))
    if not files:
        raise InvalidStageInput(f"params field 'source': no .parquet files under {source}")
    keep = [f for f in files if split_of(f, source) in splits]
    if not keep:
        found = sorted({str(split_of(f, source)) for f in files})
        raise InvalidStageInput(
            f"params field 'splits': no shard of split(s) {', '.join(splits)} under {source} (shards there "
            f"belong to: {', '.join(found)}; a shard's split is its file name's prefix, e.g. train-00000-of-00002.parquet, "
            "or its directory's name)"
        )
    return keep, [f for f in files if f not in keep]


def main(ctx: StageContext) -> None:
    import pyarrow.parquet as pq

    p = ctx.params
    a = ctx.typed_params(Wiki40bParams)
    source = Path(a.source)
    splits = a.splits
    bad = [x for x in splits if x not in SPLITS]
    if bad or not splits:
        raise InvalidStageInput(f"{p.source}: field 'splits' must list some of {', '.join(SPLITS)} (got {splits})")
    min_chars = a.min_chars
    min_ja = a.min_japanese_ratio
    dedup = a.dedup
    batch_size = a.batch_size
    limit = a.limit
    files, skipped = shard_files(source, splits)
    if skipped:
        print(f"read splits {', '.join(splits)}: skipped {len(skipped)} other shard(s) under {source}", file=sys.stderr)

    seen: set[bytes] = set()
    stats = {
        "read": 0,
        "kept": 0,
        "dropped": {"empty": 0, "too_short": 0, "not_japanese": 0, "duplicate": 0},
        "chars_kept": 0,
        "splits": splits,
        "files": [str(f) for f in files],
        "skipped_files": [str(f) for f in skipped],
    }
    timer = Timer()
    out_path = ctx.output / "articles.jsonl"
    with open(out_path, "w", encoding="utf-8") as out:
        for fi, f in enumerate(files):
            pf = pq.ParquetFile(f)
            cols = set(pf.schema_arrow.names)
            for need in ("text",):
                if need not in cols:
                    raise InvalidStageInput(f"{f}: column '{need}' is missing (have {', '.join(sorted(cols))})")
            id_col = "wikidata_id" if "wikidata_id" in cols else None
            for batch in pf.iter_batches(
                batch_size=batch_size, columns=[c for c in ("wikidata_id", "text") if c in cols]
            ):
                texts = batch.column("text").to_pylist()
                ids = batch.column(id_col).to_pylist() if id_col else [None] * len(texts)
                for wid, raw in zip(ids, texts):
                    stats["read"] += 1
                    if limit and stats["kept"] >= limit:
                        break
                    title, text = convert_wiki40b(raw or "")
                    if not text:
                        stats["dropped"]["empty"] += 1
                        continue
                    if len(text) < min_chars:
                        stats["dropped"]["too_short"] += 1
                        continue
                    if japanese_ratio(text) < min_ja:
                        stats["dropped"]["not_japanese"] += 1
                        continue
                    if dedup:
                        k = dedup_key(text)
                        if k in seen:
                            stats["dropped"]["duplicate"] += 1
                            continue
                        seen.add(k)
                    out.write(
                        json.dumps(
                            {
                                "id": wid if wid is not None else f"{f.name}:{stats['read']}",
                                "title": title,
                                "text": text,
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                    stats["kept"] += 1
                    stats["chars_kept"] += len(text)
                ctx.progress(stats["read"], message=f"{f.name}: kept {stats['kept']}")
            ctx.progress(fi + 1, len(files), message=f"shard {f.name} done")
    stats["seconds"] = round(timer.elapsed(), 3)
    write_json(ctx.output / "stats.json", stats)
    ctx.artifact("articles.jsonl", "converted articles {id,title,text}")
    ctx.artifact("stats.json", "kept / dropped counts")
    ctx.result(
        {"kept": stats["kept"], "read": stats["read"], "dropped": stats["dropped"], "chars_kept": stats["chars_kept"]}
    )


if __name__ == "__main__":
    run_stage(main)

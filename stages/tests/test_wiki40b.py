import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import DATA, ok, run_stage

from tanren_stages.wiki40b_to_jsonl import convert_wiki40b, dedup_key, japanese_ratio, split_of

RAW = (
    "\n_START_ARTICLE_\n東京タワー\n_START_SECTION_\n概要\n_START_PARAGRAPH_\n東京タワーは電波塔である。_NEWLINE_高さは333メートル。"
    "\n_START_SECTION_\n歴史\n_START_PARAGRAPH_\n1958年に完成した。\n"
)


def test_markers_convert():
    title, text = convert_wiki40b(RAW)
    assert title == "東京タワー"
    # the article title first, then each section title before its paragraphs
    assert text == "東京タワー\n概要\n東京タワーは電波塔である。\n高さは333メートル。\n歴史\n1958年に完成した。"
    assert "_START_" not in text and "_NEWLINE_" not in text


def test_filters():
    assert japanese_ratio("これは日本語です。") == 1.0
    assert japanese_ratio("This is English only") == 0.0
    assert japanese_ratio("東京 Tokyo") == 2 / 7  # 2 of 7 non-space characters
    assert dedup_key("ＡＢＣ  です") == dedup_key("ABC です")


def test_stage_on_fixture(corpus):
    stats = json.loads((corpus.output / "stats.json").read_text())
    assert stats["read"] == 402
    assert stats["dropped"] == {"empty": 0, "too_short": 15, "not_japanese": 15, "duplicate": 12}
    assert corpus.result["kept"] == stats["kept"] == 360
    rows = [json.loads(x) for x in (corpus.output / "articles.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 360 and set(rows[0]) == {"id", "title", "text"}
    assert len({r["text"] for r in rows}) == 360
    assert all(r["text"].split("\n", 1)[0] == r["title"] for r in rows), "every text starts with its article title"
    assert stats["splits"] == ["train"] and stats["skipped_files"] == []


def test_split_of(tmp_path):
    assert split_of(tmp_path / "train-00000-of-00002.parquet", tmp_path) == "train"
    assert split_of(tmp_path / "validation-00000-of-00001.parquet", tmp_path) == "validation"
    assert split_of(tmp_path / "test" / "part-0.parquet", tmp_path) == "test"
    assert split_of(tmp_path / "trainer.parquet", tmp_path) is None


def _article(title: str) -> str:
    return (
        f"\n_START_ARTICLE_\n{title}\n_START_PARAGRAPH_\n"
        + f"{title}は日本の地名であり、古くから栄えた町として知られている。" * 3
        + "\n"
    )


def test_reads_only_the_train_split(tmp_path):
    """A directory laid out as the Hugging Face copy of wiki-40b: validation and test shards stay out unless asked for."""
    src = tmp_path / "ja"
    src.mkdir()
    shutil.copy(DATA / "wiki40b-ja" / "train-00000-of-00001.parquet", src / "train-00000-of-00001.parquet")
    for split, titles in (("validation", ["検証町", "検証村"]), ("test", ["試験町"])):
        pq.write_table(
            pa.table({"wikidata_id": [f"V{i}" for i in range(len(titles))], "text": [_article(t) for t in titles]}),
            src / f"{split}-00000-of-00001.parquet",
        )
    run = ok(run_stage("wiki40b_to_jsonl", tmp_path / "train", {"source": str(src)}))
    assert run.result["read"] == 402 and run.result["kept"] == 360
    stats = json.loads((run.output / "stats.json").read_text())
    assert [p.rsplit("/", 1)[1] for p in stats["skipped_files"]] == [
        "test-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    ]
    run = ok(
        run_stage(
            "wiki40b_to_jsonl",
            tmp_path / "val",
            {"source": str(src), "splits": ["validation", "test"], "min_chars": 20},
        )
    )
    rows = [json.loads(x) for x in (run.output / "articles.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["title"] for r in rows) == ["検証村", "検証町", "試験町"]
    run = run_stage("wiki40b_to_jsonl", tmp_path / "bad", {"source": str(src), "splits": ["dev"]})
    assert run.rc == 2 and "splits" in run.of("error")[-1]["message"]

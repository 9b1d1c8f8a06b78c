import json

from tanren_stages.wiki40b_to_jsonl import convert_wiki40b, dedup_key, japanese_ratio

RAW = ("\n_START_ARTICLE_\n東京タワー\n_START_SECTION_\n概要\n_START_PARAGRAPH_\n東京タワーは電波塔である。_NEWLINE_高さは333メートル。"
       "\n_START_SECTION_\n歴史\n_START_PARAGRAPH_\n1958年に完成した。\n")


def test_markers_convert():
    title, text = convert_wiki40b(RAW)
    assert title == "東京タワー"
    assert text == "概要\n東京タワーは電波塔である。\n高さは333メートル。\n歴史\n1958年に完成した。"
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

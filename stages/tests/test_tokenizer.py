import unicodedata

import sentencepiece as spm
from conftest import ok, run_stage
from transformers import AutoTokenizer

SAMPLES = [
    "東京は関東地方にある。",
    "ＡＢＣ１２３ テスト  two  spaces",
    "絵文字😀と𠮷野家",
    "line\nbreak",
    " 先頭の空白",
    "<|im_start|>user\nはい<|im_end|>",
]


def test_round_trip_and_hf_equivalence(tokenizer_run):
    out = tokenizer_run.output
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.get_piece_size() == tokenizer_run.result["vocab_size"] == 1200
    hf = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    for s in SAMPLES:
        ids = sp.encode(s)
        assert sp.decode(ids) == unicodedata.normalize("NFKC", s)  # byte fallback: nothing is lost
        assert hf.encode(s) == ids, s
        assert hf.decode(ids) == unicodedata.normalize("NFKC", s)
    assert sp.unk_id() not in sp.encode("未知の文字：鬱蒼🦜")
    assert hf.eos_token == "</s>" and hf.eos_token_id == sp.eos_id()
    assert hf.chat_template


def test_copy_existing_tokenizer(tmp_path, tokenizer_run):
    run = ok(
        run_stage("train_tokenizer", tmp_path / "copy", {"tokenizer": str(tokenizer_run.output / "tokenizer.model")})
    )
    assert (run.output / "tokenizer.model").read_bytes() == (tokenizer_run.output / "tokenizer.model").read_bytes()
    assert (run.output / "tokenizer" / "tokenizer.json").exists()


def test_vocab_too_large_is_invalid_input(tmp_path, corpus):
    run = run_stage("train_tokenizer", tmp_path / "big", {"vocab_size": 500000}, {"corpus": corpus.output})
    assert run.rc == 2 and "vocab_size" in run.of("error")[-1]["message"]

"""Stage `train_tokenizer`: SentencePiece unigram tokenizer (byte fallback, NFKC).

params:
  vocab_size          (default 8000)
  input               needed stage id whose outputs hold *.jsonl (default: the single needed stage)
  text_field          jsonl field to train on (default "text")
  sample_docs         documents sampled to train on (default 200000)
  character_coverage  (default 0.9995)
  seed                (default 1234)
  tokenizer           path of an existing tokenizer.model (or a dir holding one): copied instead of training
Outputs: tokenizer.model, tokenizer.vocab, tokenizer/ (HF LlamaTokenizerFast, loads with AutoTokenizer).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from .protocol import InvalidStageInput, StageContext, Timer, read_jsonl, run_stage

SPECIALS = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=3)


def iter_texts(files: list[Path], field: str):
    for f in files:
        for ln, obj in read_jsonl(f):
            t = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(t, str):
                raise InvalidStageInput(f"{f}:{ln}: field '{field}' is missing or not a string")
            yield t


def sample_texts(files: list[Path], field: str, k: int, seed: int) -> list[str]:
    """Reservoir sample of k documents, so memory is bounded by k."""
    rng = random.Random(seed)
    res: list[str] = []
    for i, t in enumerate(iter_texts(files, field)):
        if i < k:
            res.append(t)
        else:
            j = rng.randrange(i + 1)
            if j < k:
                res[j] = t
    return res


def train_spm(
    texts: list[str],
    prefix: Path,
    vocab_size: int,
    *,
    character_coverage: float = 0.9995,
    seed: int = 1234,
    threads: int = 2,
) -> None:
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    lines = [ln for t in texts for ln in t.split("\n") if ln.strip()]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=str(prefix),
            model_type="unigram",
            vocab_size=vocab_size,
            byte_fallback=True,
            normalization_rule_name="nfkc",
            character_coverage=character_coverage,
            split_digits=True,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            required_chars="\u2581",
            num_threads=threads,
            input_sentence_size=0,
            max_sentence_length=1 << 16,
            train_extremely_large_corpus=False,
            minloglevel=2,
            **SPECIALS,
            unk_piece="<unk>",
            bos_piece="<s>",
            eos_piece="</s>",
            pad_piece="<pad>",
            user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        )
    except RuntimeError as e:
        msg = str(e)
        if "Vocabulary size" in msg or "vocab_size" in msg:
            raise InvalidStageInput(
                f"params field 'vocab_size': {vocab_size} is too large for this corpus ({msg.strip()})"
            ) from e
        raise


def save_hf_tokenizer(model_file: Path, out_dir: Path):
    """A HF fast tokenizer equivalent to the SentencePiece model (NFKC normaliser kept)."""
    from tokenizers import normalizers
    from transformers import LlamaTokenizerFast

    tok = LlamaTokenizerFast(
        vocab_file=str(model_file),
        legacy=False,
        add_bos_token=False,
        add_eos_token=False,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        from_slow=True,
        clean_up_tokenization_spaces=False,
    )
    backend = tok.backend_tokenizer
    existing = backend.normalizer
    backend.normalizer = normalizers.Sequence([normalizers.NFKC()] + ([existing] if existing is not None else []))
    from .common import CHAT_TEMPLATE

    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out_dir))
    return tok


def main(ctx: StageContext) -> None:
    p = ctx.params
    p.reject_unknown({"vocab_size", "input", "text_field", "sample_docs", "character_coverage", "seed", "tokenizer"})
    out = ctx.output
    timer = Timer()
    if p.has("tokenizer"):
        src = Path(p.str("tokenizer"))
        if src.is_dir():
            src = src / "tokenizer.model"
        if not src.is_file():
            raise InvalidStageInput(f"{p.source}: field 'tokenizer': {src} is not a SentencePiece model file")
        shutil.copyfile(src, out / "tokenizer.model")
        source = str(src)
    else:
        vocab = p.int("vocab_size", 8000, min=300)
        field = p.str("text_field", "text")
        k = p.int("sample_docs", 200000, min=1)
        seed = p.int("seed", 1234)
        cov = p.float("character_coverage", 0.9995, min=0.5, max=1.0)
        d = ctx.input_dir(param="input")
        files = sorted(d.rglob("*.jsonl"))
        if not files:
            raise InvalidStageInput(f"input stage '{d.name}' has no .jsonl outputs")
        texts = sample_texts(files, field, k, seed)
        if not texts:
            raise InvalidStageInput(f"input stage '{d.name}': no documents in {', '.join(f.name for f in files)}")
        ctx.progress(0, message=f"training on {len(texts)} documents")
        train_spm(texts, out / "tokenizer", vocab, character_coverage=cov, seed=seed)
        source = f"trained on {len(texts)} documents from {d.name}"
    tok = save_hf_tokenizer(out / "tokenizer.model", out / "tokenizer")
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    ctx.artifact("tokenizer.model", "SentencePiece model")
    ctx.artifact("tokenizer/tokenizer.json", "HF tokenizer")
    ctx.result(
        {
            "vocab_size": sp.get_piece_size(),
            "hf_vocab_size": len(tok),
            "source": source,
            "seconds": round(timer.elapsed(), 2),
        }
    )


if __name__ == "__main__":
    run_stage(main)

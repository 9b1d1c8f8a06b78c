"""Stage `train_tokenizer`: SentencePiece unigram tokenizer (byte fallback, NFKC).

params (generated from TrainTokenizerParams; `python -m tanren_stages.protocol` rewrites this block):
  vocab_size (integer >= 300; default 8000): pieces in the vocabulary
  input (string; default the single needed stage): needed stage id whose outputs hold *.jsonl
  text_field (string; default "text"): jsonl field to train on
  sample_docs (integer >= 1; default 200000): documents sampled to train on
  character_coverage (number >= 0.5, <= 1.0; default 0.9995): SentencePiece character_coverage
  seed (integer; default 1234): seed of the document sample and of the trainer
  tokenizer (string): path of an existing tokenizer.model (or a dir holding one): copied instead of training
(end of params)
Outputs: tokenizer.model, tokenizer.vocab, tokenizer/ (HF LlamaTokenizerFast, loads with AutoTokenizer).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from .protocol import InvalidStageInput, StageContext, Timer, param, read_jsonl, run_stage

SPECIALS = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=3)


@dataclass
class TrainTokenizerParams:
    """The `with:` params of a train_tokenizer stage."""

    vocab_size: int = param(8000, min=300, help="pieces in the vocabulary")
    input: str | None = param(default_doc="the single needed stage", help="needed stage id whose outputs hold *.jsonl")
    text_field: str = param("text", help="jsonl field to train on")
    sample_docs: int = param(200000, min=1, help="documents sampled to train on")
    character_coverage: float = param(0.9995, min=0.5, max=1.0, help="SentencePiece character_coverage")
    seed: int = param(1234, help="seed of the document sample and of the trainer")
    tokenizer: str | None = param(
        help="path of an existing tokenizer.model (or a dir holding one): copied instead of training"
    )


PARAMS = TrainTokenizerParams


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
    a = ctx.typed_params(TrainTokenizerParams)
    out = ctx.output
    timer = Timer()
    if a.tokenizer is not None:
        src = Path(a.tokenizer)
        if src.is_dir():
            src = src / "tokenizer.model"
        if not src.is_file():
            raise InvalidStageInput(f"{p.source}: field 'tokenizer': {src} is not a SentencePiece model file")
        shutil.copyfile(src, out / "tokenizer.model")
        source = str(src)
    else:
        vocab = a.vocab_size
        field = a.text_field
        k = a.sample_docs
        seed = a.seed
        cov = a.character_coverage
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

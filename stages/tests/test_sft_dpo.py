import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ok, run_stage, stage_env

from tanren_stages.protocol import StageContext


def make_ctx(tmp_path, params, inputs):
    env = stage_env(tmp_path, params, inputs)
    return StageContext.from_env(env)


def test_sft_masks_non_assistant_tokens(tmp_path, pretrained):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "システム"},
                {"role": "user", "content": "東京はどこ？"},
                {"role": "assistant", "content": "関東地方です。"},
                {"role": "user", "content": "大阪は？"},
                {"role": "assistant", "content": "近畿地方です。"},
            ]
        },
        {"instruction": "地名を答えて", "input": "京都", "output": "近畿地方"},
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    from tanren_stages.sft import build_trainer

    ctx = make_ctx(
        tmp_path / "sft",
        {"data": str(data), "max_steps": 1, "max_length": 256, "eval_fraction": 0},
        {"pretrain": pretrained.output},
    )
    trainer, _, tok, _ = build_trainer(ctx)
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    for i, expect in enumerate([["関東地方です。<|im_end|>", "近畿地方です。<|im_end|>"], ["近畿地方<|im_end|>"]]):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        kept = labels != -100
        assert kept.any()
        # learned spans = assistant contents; everything else (system, user, role headers, padding) is -100
        spans, cur = [], []
        for t, k in zip(ids.tolist(), kept.tolist()):
            if k:
                cur.append(t)
            elif cur:
                spans.append(cur)
                cur = []
        if cur:
            spans.append(cur)
        assert [tok.decode(s) for s in spans] == expect
        assert torch.equal(labels[kept], ids[kept])


def test_sft_stage_end_to_end(tmp_path, pretrained):
    run = ok(
        run_stage(
            "sft",
            tmp_path / "sft",
            {
                "data": "data/sft/chat.jsonl",
                "max_steps": 8,
                "lr": 3e-3,
                "max_length": 128,
                "lora": {"r": 4, "alpha": 8},
                "eval_every": 2,
            },
            {"pretrain": pretrained.output},
        )
    )
    r = run.result
    assert r["steps"] == 8 and r["lora"] is True and r["final_loss"] > 0
    assert run.metrics("loss") and "lr" in run.of("metric")[0]["values"]
    assert (run.output / "model" / "model.safetensors").exists() and (run.output / "adapter").is_dir()
    # held-out rows (eval_fraction 0.1 of 60): loss every 2 steps, finite, falling as the training loss falls
    ev, loss = run.metrics("eval_loss"), run.metrics("loss")
    assert sorted(ev) == [2, 4, 6, 8] and all(math.isfinite(v) for v in ev.values()), ev
    assert loss[8] < loss[1] and ev[8] < ev[2], (loss, ev)
    assert r["eval_rows"] == 6 and r["first_eval_loss"] == ev[2] and r["final_eval_loss"] == ev[8]


def test_held_out_split_is_seeded_and_disjoint(tmp_path):
    from tanren_stages.hf_train import split_rows

    rows = list(range(50))
    a = split_rows(make_ctx(tmp_path / "a", {"seed": 7}, {}), rows)
    assert a == split_rows(make_ctx(tmp_path / "b", {"seed": 7}, {}), rows) and len(a[1]) == 5
    assert sorted(a[0] + a[1]) == rows and not set(a[0]) & set(a[1])
    assert split_rows(make_ctx(tmp_path / "c", {"seed": 8}, {}), rows)[1] != a[1]
    assert split_rows(make_ctx(tmp_path / "d", {"eval_fraction": 0}, {}), rows) == (rows, [])
    assert len(split_rows(make_ctx(tmp_path / "e", {"eval_fraction": 0.5, "eval_max_rows": 3}, {}), rows)[1]) == 3


def test_sft_qlora_on_cpu_is_config_error(tmp_path, pretrained):
    # CUDA hidden from the stage process, so this runs (and means the same) on a GPU host too
    run = run_stage(
        "sft",
        tmp_path / "q",
        {"data": "data/sft/chat.jsonl", "qlora": True, "max_steps": 1},
        {"pretrain": pretrained.output},
        extra_env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert run.rc == 3 and "4-bit" in run.of("error")[-1]["message"]


def test_sft_bad_rows_name_the_line(tmp_path, pretrained):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"text": "x"}\n'
    )
    run = run_stage("sft", tmp_path / "b", {"data": str(bad), "max_steps": 1}, {"pretrain": pretrained.output})
    assert run.rc == 2 and "bad.jsonl:2" in run.of("error")[-1]["message"]


def test_dpo_reward_accuracy_above_chance(tmp_path, pretrained):
    run = ok(
        run_stage(
            "dpo",
            tmp_path / "dpo",
            {
                "data": "data/dpo/pairs.jsonl",
                "max_steps": 8,
                "lr": 5e-3,
                "max_length": 96,
                "micro_batch_size": 8,
                "lora": True,
                "beta": 0.1,
            },
            {"pretrain": pretrained.output},
        )
    )
    r = run.result
    # measured on the held-out pairs (eval_fraction 0.1 of 64), never trained on
    assert r["eval_split"] == "held-out" and r["eval_rows"] == 6
    assert r["eval_reward_accuracy"] > 0.75 and r["eval_reward_margin"] > 0, r
    assert any("reward_accuracy" in e["values"] for e in run.of("metric"))
    ev, loss = run.metrics("eval_loss"), run.metrics("loss")
    assert sorted(ev) == [2, 4, 6, 8] and all(math.isfinite(v) for v in ev.values()), ev
    assert loss[8] < loss[1] and ev[8] < ev[2], (loss, ev)
    assert run.metrics("eval_reward_accuracy")[8] == r["eval_reward_accuracy"]
    assert (run.output / "model" / "config.json").exists()


def test_qlora_adapter_chain_on_cpu_with_lora(tmp_path, pretrained):
    """The QLoRA route's chain — sft (adapter not merged) → dpo (continues it, frozen copy as reference) → evals
    loading base + adapter — run with plain LoRA on CPU: merge_adapter false takes the path a 4-bit base takes."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    sft = ok(
        run_stage(
            "sft",
            tmp_path / "sft",
            {
                "data": "data/sft/chat.jsonl",
                "max_steps": 2,
                "lr": 1e-3,
                "max_length": 96,
                "lora": lora,
                "merge_adapter": False,
            },
            {"pretrain": pretrained.output},
        )
    )
    out = sft.output
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "adapter" / "tokenizer_config.json").exists()
    assert not (out / "model" / "config.json").exists()
    pointer = json.loads((out / "model" / "base.json").read_text())
    # the base came from a needed stage (whose inputs directory does not outlive the stage): copied beside the adapter
    assert pointer["base_model"] == "../base" and pointer["adapter"] == "../adapter" and pointer["hub"] is False
    assert (out / "base" / "config.json").exists()
    assert "LoRA adapter not merged" in sft.stderr

    dpo = ok(
        run_stage(
            "dpo",
            tmp_path / "dpo",
            {
                "data": "data/dpo/pairs.jsonl",
                "max_steps": 3,
                "lr": 5e-3,
                "max_length": 96,
                "micro_batch_size": 8,
                "lora": lora,
                "merge_adapter": False,
                "eval_on_train": True,
            },
            {"sft": sft.output},
        )
    )
    assert "continuing to train the LoRA adapter" in dpo.stderr
    # the reference (the frozen SFT adapter) gives zero margin before training; training moves the policy away from it
    assert dpo.result["steps"] == 3 and dpo.result["eval_reward_margin"] > 0, dpo.result
    assert json.loads((dpo.output / "model" / "base.json").read_text())["base_model"] == "../base"
    from safetensors.torch import load_file

    w_sft = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    w_dpo = load_file(str(dpo.output / "adapter" / "adapter_model.safetensors"))
    assert w_sft.keys() == w_dpo.keys() and not all(
        torch.equal(w_sft[k], w_dpo[k]) for k in w_sft
    )  # one adapter, trained on

    # the eval stages' loader (in-process to keep the test short; test_hub_model_id runs an eval stage end to end)
    from tanren_stages.generation import Generator

    gen = Generator.from_ctx(make_ctx(tmp_path / "ev", {}, {"dpo": dpo.output}))
    assert gen.source.adapter.resolve() == (dpo.output / "adapter").resolve()
    assert Path(gen.source.base).resolve() == (dpo.output / "base").resolve()
    text, n = gen.chat([{"role": "user", "content": "東京はどこ？"}], 4)
    assert isinstance(text, str) and 1 <= n <= 4


def test_unmerged_adapter_keeps_added_tokens(tmp_path, pretrained):
    """save_final's pointer path with a grown vocabulary: the adapter carries the embeddings and the Generator
    grows the base before loading it, so the trained rows of new tokens survive."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tanren_stages.common import ModelSource, load_tokenizer, resolve_model
    from tanren_stages.generation import Generator
    from tanren_stages.hf_train import save_final

    base = pretrained.output / "model"
    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    tok.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    model.resize_token_embeddings(len(tok))
    new_id = tok.convert_tokens_to_ids("<|new|>")
    with torch.no_grad():
        model.get_input_embeddings().weight[new_id] = 0.125
    peft_model = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    ctx = make_ctx(tmp_path / "s", {"merge_adapter": False}, {"pretrain": pretrained.output})
    save_final(ctx, SimpleNamespace(model=peft_model), tok, True, ModelSource(str(base)))
    assert not (ctx.output / "base").exists()  # make_ctx's inputs are symlinks: base is outside → an absolute path
    src = resolve_model(make_ctx(tmp_path / "e", {"model": str(ctx.output)}, {}))
    assert src.adapter == (ctx.output / "adapter").resolve() and Path(src.base) == base.resolve()
    gen = Generator(src, "cpu")
    assert len(gen.tok) == len(tok) and torch.all(gen.model.get_input_embeddings().weight[new_id] == 0.125)
    assert gen.dtype == torch.float32  # fp32 on CPU (bf16/fp16 on CUDA)


def test_eval_load_in_4bit_on_cpu_is_config_error(pretrained, monkeypatch):
    from tanren_stages.generation import Generator
    from tanren_stages.protocol import StageConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only worker, also on a GPU host
    with pytest.raises(StageConfigError, match="4-bit QLoRA needs a CUDA GPU"):
        Generator(pretrained.output / "model", "cpu", load_in_4bit=True)
    from tanren_stages.common import ModelSource

    # unset (auto) follows the adapter's 4-bit training only where CUDA is there: on CPU it loads unquantised
    gen = Generator(ModelSource(str(pretrained.output / "model"), base_4bit=True), "cpu", load_in_4bit=None)
    assert gen.dtype == torch.float32 and not getattr(gen.model, "is_loaded_in_4bit", False)


def test_hub_model_id(tmp_path, pretrained):
    """A Hub repo id: offline and not cached → StageConfigError naming HF_HUB_OFFLINE and the cache; once in the
    cache (laid out as huggingface_hub stores it) it loads offline."""
    cache = tmp_path / "hf-cache"
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    params = {
        "model": "tanren-test/tiny-llm",
        "questions": "data/mt-bench/question.jsonl",
        "max_new_tokens": 2,
        "max_questions": 1,
    }
    run = run_stage("mt_bench", tmp_path / "miss", params, extra_env=env)
    msg = run.of("error")[-1]["message"]
    assert run.rc == 3 and "HF_HUB_OFFLINE" in msg and str(cache) in msg and "tanren-test/tiny-llm" in msg, run.stderr[
        -2000:
    ]

    snap = cache / "models--tanren-test--tiny-llm" / "snapshots" / ("0" * 40)
    shutil.copytree(pretrained.output / "model", snap)
    (cache / "models--tanren-test--tiny-llm" / "refs").mkdir()
    (cache / "models--tanren-test--tiny-llm" / "refs" / "main").write_text("0" * 40)
    run = ok(run_stage("mt_bench", tmp_path / "hit", params, extra_env=env))
    assert run.result == {"judge": "not configured", "answered": 1}


def _tiny_untied_llama(root: Path) -> Path:
    """A random 1-layer Llama with an untied LM head and a small BPE tokenizer trained here that has no chat markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    texts = [
        m["content"]
        for line in Path("data/sft/chat.jsonl").read_text(encoding="utf-8").splitlines()
        for m in json.loads(line)["messages"]
    ]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    bpe.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    d = root / "tiny-untied"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def test_lora_sft_trains_the_added_chat_token_rows(tmp_path):
    """ChatML's <|im_start|>/<|im_end|> are added to a vocabulary without them; LoRA alone would leave their new
    embedding and LM-head rows as initialised (the model could not learn to end a turn): those rows change in
    SFT, other rows of the frozen embeddings do not."""
    from tanren_stages.sft import build_trainer

    base = _tiny_untied_llama(tmp_path)
    ctx = make_ctx(
        tmp_path / "sft",
        {
            "model": str(base),
            "data": "data/sft/chat.jsonl",
            "max_steps": 4,
            "lr": 2e-2,
            "max_length": 96,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "eval_fraction": 0,
        },
        {},
    )
    trainer, _, tok, lora = build_trainer(ctx)
    assert lora and tok.chat_template.startswith("{% for message in messages %}") and "<|im_end|>" in tok.chat_template
    chat_ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")]
    assert chat_ids == [len(tok) - 2, len(tok) - 1], "the markers were added"
    other = tok.convert_tokens_to_ids("<s>")
    model = trainer.model
    assert model is not None
    ids = torch.tensor([chat_ids + [other]])

    def rows():
        with torch.no_grad():
            emb = model.get_input_embeddings()(ids)[0].clone()
            out = model.get_output_embeddings()
            assert out is not None
            head = out(torch.eye(32))[:, chat_ids + [other]].T.clone()
        return emb, head

    emb0, head0 = rows()
    trainer.train()
    emb1, head1 = rows()
    for k in range(2):
        assert not torch.allclose(emb0[k], emb1[k]), f"embedding row of {chat_ids[k]} unchanged"
        assert not torch.allclose(head0[k], head1[k]), f"LM-head row of {chat_ids[k]} unchanged"
    assert torch.equal(emb0[2], emb1[2]), "rows outside the chat markers stay frozen in the embeddings"
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("trainable_tokens" in n for n in names) and any(
        "lm_head" in n and "modules_to_save" in n for n in names
    ), names


def test_eval_prompts_in_the_tuned_chat_format(tmp_path, pretrained):
    """sft leaves chat_format.json beside the tokenizer; llm-jp-eval then prompts through the chat template (instruction
    as system message, few-shots as turns), while a base model keeps the Alpaca-style text."""
    sft = ok(
        run_stage(
            "sft",
            tmp_path / "sft",
            {
                "data": "data/sft/chat.jsonl",
                "max_steps": 1,
                "max_length": 96,
                "lora": {"r": 2, "alpha": 4},
                "eval_fraction": 0,
            },
            {"pretrain": pretrained.output},
        )
    )
    fmt = json.loads((sft.output / "model" / "chat_format.json").read_text())
    assert fmt["format"] == "chatml" and (sft.output / "adapter" / "chat_format.json").exists()
    params = {"datasets": "data/jaster", "max_samples": 1, "max_new_tokens": 2, "num_few_shots": 1}
    tuned = ok(run_stage("llm_jp_eval", tmp_path / "ev-chat", params, {"sft": sft.output}))
    base = ok(run_stage("llm_jp_eval", tmp_path / "ev-base", params, {"pretrain": pretrained.output}))
    s_tuned = json.loads((tuned.output / "scores.json").read_text())
    s_base = json.loads((base.output / "scores.json").read_text())
    assert s_tuned["prompt_format"] == "chat template" and s_tuned["chat_format"]["format"] == "chatml"
    assert s_base["prompt_format"] == "alpaca" and "chat_format" not in s_base
    out = next((tuned.output / "outputs").glob("*.jsonl"))
    row = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["prompt"].count("<|im_start|>user\n") == 2 and "### 指示" not in row["prompt"], row["prompt"]
    base_row = json.loads(next((base.output / "outputs").glob("*.jsonl")).read_text(encoding="utf-8").splitlines()[0])
    assert "### 指示:" in base_row["prompt"] and "<|im_start|>" not in base_row["prompt"]


def test_sft_llm_jp_format_adds_no_tokens(tmp_path, pretrained):
    """chat_template: llm-jp (llm-jp-3's instruction format): the turn ends with EOS, so no token is added and no row
    needs training from scratch; the loss covers the assistant's text and its EOS."""
    from tanren_stages.sft import build_trainer

    rows = [
        {"messages": [{"role": "user", "content": "東京はどこ？"}, {"role": "assistant", "content": "関東地方です。"}]}
    ] * 2
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    ctx = make_ctx(
        tmp_path / "sft",
        {
            "data": str(data),
            "max_steps": 1,
            "max_length": 128,
            "chat_template": "llm-jp",
            "eval_fraction": 0,
            "lora": True,
        },
        {"pretrain": pretrained.output},
    )
    trainer, _, tok, _ = build_trainer(ctx)
    assert tok.tanren_chat_format == "llm-jp" and tok.tanren_chat_token_ids == []
    assert trainer.model.get_input_embeddings().weight.shape[0] == len(tok)
    b = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = b["input_ids"][0], b["labels"][0]
    text = tok.decode(ids[labels == -100].tolist())
    assert "### 指示:" in text and "### 応答:" in text
    assert tok.decode(ids[labels != -100].tolist()) == "関東地方です。" + tok.eos_token


def test_auto_chat_template_needs_a_generation_block(tmp_path):
    """`chat_template: auto` keeps a tokenizer's template only when it has a {% generation %} block: the word in
    `add_generation_prompt`, which llm-jp-3's template (like most) has, is no such block, and keeping that template
    would fail TRL's assistant-only loss (found by bench/gpu/qlora-eot.sh --cpu-smoke)."""
    from types import SimpleNamespace

    from tanren_stages.common import CHAT_TEMPLATES
    from tanren_stages.hf_train import choose_chat_template

    ctx = make_ctx(tmp_path / "s", {}, {})
    no_block = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}### 応答:{% endif %}"
    tok = SimpleNamespace(chat_template=no_block)
    assert choose_chat_template(ctx, tok) == "chatml" and tok.chat_template == CHAT_TEMPLATES["chatml"]
    own = "{% for m in messages %}{%- generation -%}{{ m['content'] }}{%- endgeneration -%}{% endfor %}"
    tok = SimpleNamespace(chat_template=own)
    assert choose_chat_template(ctx, tok) == "tokenizer" and tok.chat_template == own
    tok = SimpleNamespace(chat_template=CHAT_TEMPLATES["llm-jp"])
    assert choose_chat_template(ctx, tok) == "llm-jp"

"""Typed stage params (protocol.param / parse_params / render_params_doc) and the stage kinds that use them."""

import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_stage

from tanren_stages.protocol import (
    DOC_BEGIN,
    DOC_END,
    EXIT_CODES,
    InvalidStageInput,
    docstring_params_block,
    param,
    parse_params,
    render_params_doc,
)

SRC = "stage 's' params"


@dataclass
class Judge:
    model: str = param(required=True, help="the judge model")
    temperature: float = param(0.0, min=0, max=2, help="sampling temperature")


@dataclass
class Example:
    """A params dataclass using every kind of field."""

    steps: int = param(10, min=1, max=100, help="optimizer steps")
    lr: float = param(3e-4, min=0, help="learning rate")
    mode: str = param("a", choices=["a", "b"], help="which mode")
    flag: bool = param(False, help="a switch")
    heads: int | None = param(min=1, default_doc="steps", help="derived when unset")
    name: str | None = param(help="optional name")
    tags: list = param(["x"], help="a list")
    extra: dict = param({}, help="free-form object")
    judge: Judge | None = param(help="a nested object")
    lora: object = param(False, help="bool or object, checked by the stage")


def test_defaults_fill_in_and_null_counts_as_absent():
    e = parse_params(Example, {"lr": None}, SRC)
    assert (e.steps, e.lr, e.mode, e.flag, e.heads, e.name, e.tags, e.extra, e.judge, e.lora) == (
        10,
        3e-4,
        "a",
        False,
        None,
        None,
        ["x"],
        {},
        None,
        False,
    )
    # mutable defaults are not shared between instances
    e.tags.append("y")
    assert parse_params(Example, {}, SRC).tags == ["x"]


def test_values_are_typed():
    e = parse_params(
        Example,
        {"steps": 20.0, "lr": 1, "mode": "b", "flag": True, "heads": 2, "tags": [], "lora": {"r": 8}},
        SRC,
    )
    assert e.steps == 20 and isinstance(e.steps, int)
    assert e.lr == 1.0 and isinstance(e.lr, float)
    assert (e.mode, e.flag, e.heads, e.tags, e.lora) == ("b", True, 2, [], {"r": 8})


def test_unknown_keys_name_the_field_and_list_the_allowed_ones():
    with pytest.raises(InvalidStageInput) as ei:
        parse_params(Example, {"stpes": 3, "zzz": 1}, SRC)
    msg = str(ei.value)
    assert msg.startswith(f"{SRC}: unknown field(s) stpes, zzz; allowed: ")
    assert "allowed: extra, flag, heads, judge, lora, lr, mode, name, steps, tags" in msg
    assert ei.value.type == "InvalidStageInput" and EXIT_CODES[ei.value.type] == 2


@pytest.mark.parametrize(
    "data, message",
    [
        ({"steps": "many"}, "field 'steps' must be an integer, got \"many\""),
        ({"steps": 1.5}, "field 'steps' must be an integer, got 1.5"),
        ({"steps": True}, "field 'steps' must be an integer, got true"),
        ({"steps": 0}, "field 'steps' must be an integer >= 1, got 0"),
        ({"steps": 101}, "field 'steps' must be an integer <= 100, got 101"),
        ({"lr": -1}, "field 'lr' must be a number >= 0, got -1.0"),
        ({"lr": "fast"}, "field 'lr' must be a number, got \"fast\""),
        ({"mode": "c"}, "field 'mode' must be one of a, b, got \"c\""),
        ({"mode": ""}, "field 'mode' must be a non-empty string, got \"\""),
        ({"flag": "yes"}, "field 'flag' must be true or false, got \"yes\""),
        ({"tags": "x"}, "field 'tags' must be a list, got \"x\""),
        ({"extra": [1]}, "field 'extra' must be an object, got [1]"),
        ({"judge": 3}, "field 'judge' must be an object, got 3"),
    ],
)
def test_wrong_types_and_bounds_name_the_field(data, message):
    with pytest.raises(InvalidStageInput) as ei:
        parse_params(Example, data, SRC)
    assert str(ei.value) == f"{SRC}: {message}"


def test_nested_dataclass_is_parsed_with_its_own_source():
    e = parse_params(Example, {"judge": {"model": "m"}}, SRC)
    assert e.judge == Judge(model="m", temperature=0.0)
    with pytest.raises(InvalidStageInput, match=r"^stage 's' params: judge: field 'model' is required \(a string\)$"):
        parse_params(Example, {"judge": {}}, SRC)
    with pytest.raises(InvalidStageInput, match=r"^stage 's' params: judge: unknown field\(s\) x; allowed: model, "):
        parse_params(Example, {"judge": {"model": "m", "x": 1}}, SRC)
    with pytest.raises(InvalidStageInput, match="judge: field 'temperature' must be a number <= 2"):
        parse_params(Example, {"judge": {"model": "m", "temperature": 3}}, SRC)


def test_params_must_be_an_object():
    with pytest.raises(InvalidStageInput, match="params must be a JSON object, got list"):
        parse_params(Example, [], SRC)


def test_docstring_rendering():
    doc = render_params_doc(Example)
    lines = doc.splitlines()
    assert lines[0] == DOC_BEGIN.format(name="Example") and lines[-1] == DOC_END
    assert "  steps (integer >= 1, <= 100; default 10): optimizer steps" in lines
    assert "  lr (number >= 0; default 0.0003): learning rate" in lines
    assert '  mode ("a" | "b"; default "a"): which mode' in lines
    assert "  flag (bool; default false): a switch" in lines
    assert "  heads (integer >= 1; default steps): derived when unset" in lines
    assert "  name (string): optional name" in lines
    assert "  judge (Judge): a nested object" in lines
    assert "  lora (any; default false): bool or object, checked by the stage" in lines
    assert docstring_params_block(f"Stage x.\n\n{doc}\nMore text.\n") == doc
    assert docstring_params_block("no block here") is None


def test_long_help_wraps_within_the_line_length():
    @dataclass
    class Long:
        text: str = param("t", help="word " * 60)

    lines = render_params_doc(Long, width=80).splitlines()
    assert len(lines) > 3 and all(len(line) <= 80 for line in lines[1:-1])
    assert all(line.startswith("      ") for line in lines[2:-1])


def stage_modules_with_params() -> list[str]:
    root = Path(__file__).resolve().parents[1] / "tanren_stages"
    return sorted(p.stem for p in root.glob("*.py") if "\nPARAMS = " in p.read_text(encoding="utf-8"))


def test_converted_kinds():
    """Every stage kind declares its params as a dataclass (serve.py is a server and zygote.py their pre-forked Python, not stages)."""
    stages = {p.stem for p in (Path(__file__).resolve().parents[1] / "tanren_stages").glob("*.py")} - {
        "__init__",
        "common",
        "generation",
        "hf_train",
        "indexed_dataset",
        "protocol",
        "serve",
        "zygote",
    }
    assert (
        stages
        == set(stage_modules_with_params())
        == {
            "pretrain",
            "tokenize",
            "sft",
            "dpo",
            "train_tokenizer",
            "wiki40b_to_jsonl",
            "preflight",
            "llm_jp_eval",
            "mt_bench",
        }
    )


@pytest.mark.parametrize("module", stage_modules_with_params())
def test_stage_docstrings_match_their_params_dataclass(module):
    mod = importlib.import_module(f"tanren_stages.{module}")
    assert docstring_params_block(mod.__doc__) == render_params_doc(mod.PARAMS), (
        f"the params block of {module}.py is stale: run `PYTHONPATH=stages python -m tanren_stages.protocol`"
    )


@pytest.mark.parametrize("module", stage_modules_with_params())
def test_every_stage_rejects_an_unknown_param_with_exit_2(module, tmp_path):
    run = run_stage(module, tmp_path, {"no_such_param": 1})
    assert run.rc == 2, run.stderr
    err = run.of("error")[-1]
    assert err["type"] == "InvalidStageInput"
    assert "unknown field(s) no_such_param; allowed: " in err["message"]

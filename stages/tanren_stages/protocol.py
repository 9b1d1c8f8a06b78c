"""The stage side of docs/stage-protocol.md: environment, params, events, exit codes.

Every stage module calls `StageContext.from_env()` once, reads its params as a typed
dataclass (`ctx.typed_params(cls)`, see `parse_params`: one definition gives the defaults,
the checks and the params section of the module docstring) or through the older `Params`
getters (both fail with InvalidStageInput naming the field), emits
events with `ctx.progress/metric/checkpoint/artifact/result`, and ends with
`ctx.fail(...)` on a known failure. `run_stage(main)` wraps a stage's main so
that an OOM becomes exit 4 and an unexpected exception exits 1 (StageCrashed).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import textwrap
import threading
import time
import traceback
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

EXIT_CODES = {"InvalidStageInput": 2, "StageConfigError": 3, "OutOfMemory": 4, "StageCrashed": 1}


class StageFailure(Exception):
    """A failure with a protocol type; `run_stage` turns it into the error event and exit code."""

    def __init__(self, type_: str, message: str):
        super().__init__(message)
        self.type = type_
        self.message = message


class InvalidStageInput(StageFailure):
    def __init__(self, message: str):
        super().__init__("InvalidStageInput", message)


class StageConfigError(StageFailure):
    def __init__(self, message: str):
        super().__init__("StageConfigError", message)


class OutOfMemory(StageFailure):
    def __init__(self, message: str):
        super().__init__("OutOfMemory", message)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        try:
            return _jsonable(v.item())
        except Exception:
            pass
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class EventWriter:
    """Appends one JSON object per line to $TANREN_EVENTS, flushed after each line."""

    def __init__(self, path: str | None):
        self.path = path
        self._lock = threading.Lock()
        self._fh = open(path, "a", encoding="utf-8") if path else None

    def emit(self, event: str, **fields: Any) -> dict:
        obj = {"event": event, **{k: _jsonable(v) for k, v in fields.items() if v is not None}}
        line = json.dumps(obj, ensure_ascii=False)
        with self._lock:
            if self._fh is None:
                print(f"[event] {line}", file=sys.stderr, flush=True)
            else:
                self._fh.write(line + "\n")
                self._fh.flush()
        return obj


class Params:
    """The stage's `with:` object with typed getters that fail naming the field."""

    def __init__(self, data: dict, source: str = "params"):
        if not isinstance(data, dict):
            raise InvalidStageInput(f"{source}: params must be a JSON object, got {type(data).__name__}")
        self.data = data
        self.source = source

    def _bad(self, name: str, want: str, got: Any) -> NoReturn:
        raise InvalidStageInput(
            f"{self.source}: field '{name}' must be {want}, got {json.dumps(got, ensure_ascii=False)[:80]}"
        )

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def raw(self, name: str, default: Any = None) -> Any:
        v = self.data.get(name)
        return default if v is None else v

    def int(
        self,
        name: str,
        default: int | None = None,
        *,
        min: int | None = None,
        max: int | None = None,
        required: bool = False,
    ) -> int:
        v = self.data.get(name)
        if v is None:
            if required or default is None:
                if required:
                    raise InvalidStageInput(f"{self.source}: field '{name}' is required (an integer)")
                return default  # type: ignore[return-value]
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            self._bad(name, "an integer", v)
        v = int(v)
        if min is not None and v < min:
            self._bad(name, f"an integer >= {min}", v)
        if max is not None and v > max:
            self._bad(name, f"an integer <= {max}", v)
        return v

    def float(
        self,
        name: str,
        default: float | None = None,
        *,
        min: float | None = None,
        max: float | None = None,
        required: bool = False,
    ) -> float:
        v = self.data.get(name)
        if v is None:
            if required:
                raise InvalidStageInput(f"{self.source}: field '{name}' is required (a number)")
            return default  # type: ignore[return-value]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self._bad(name, "a number", v)
        v = float(v)
        if min is not None and v < min:
            self._bad(name, f"a number >= {min}", v)
        if max is not None and v > max:
            self._bad(name, f"a number <= {max}", v)
        return v

    def bool(self, name: str, default: bool = False) -> bool:
        v = self.data.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            self._bad(name, "true or false", v)
        return v

    def str(
        self, name: str, default: str | None = None, *, choices: list[str] | None = None, required: bool = False
    ) -> str:
        v = self.data.get(name)
        if v is None:
            if required:
                raise InvalidStageInput(f"{self.source}: field '{name}' is required (a string)")
            return default  # type: ignore[return-value]
        if not isinstance(v, str) or not v:
            self._bad(name, "a non-empty string", v)
        if choices is not None and v not in choices:
            self._bad(name, "one of " + ", ".join(choices), v)
        return v

    def list(self, name: str, default: list | None = None) -> list:
        v = self.data.get(name)
        if v is None:
            return default  # type: ignore[return-value]
        if not isinstance(v, list):
            self._bad(name, "a list", v)
        return v

    def sub(self, name: str) -> Params | None:
        v = self.data.get(name)
        if v is None:
            return None
        if not isinstance(v, dict):
            self._bad(name, "an object", v)
        return Params(v, f"{self.source}: {name}")

    def reject_unknown(self, known: set[str]) -> None:
        extra = sorted(set(self.data) - known)
        if extra:
            raise InvalidStageInput(
                f"{self.source}: unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(known))}"
            )


# --- typed params ---------------------------------------------------------------
# One dataclass per stage kind, in the style of TRL's per-script argument dataclasses: each field carries its
# type, default, bounds or choices and one line of help, so the defaults, the checks, the unknown-key error and
# the docstring's params section all come from that one definition.

T = TypeVar("T")

DOC_BEGIN = "params (generated from {name}; `python -m tanren_stages.protocol` rewrites this block):"
DOC_END = "(end of params)"


def param(
    default: Any = MISSING,
    *,
    help: str,
    min: float | None = None,
    max: float | None = None,
    choices: list[str] | None = None,
    default_doc: str | None = None,
    required: bool = False,
) -> Any:
    """A stage param: a dataclass field with its help line, bounds (`min`/`max`), string `choices` and, for a
    default computed at run time from other params (stored as None), `default_doc` saying how."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "default_doc": default_doc}
    if required:
        return field(default=None, metadata={**meta, "required": True})
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=None if default is MISSING else default, metadata=meta)


def _param_kind(tp: Any) -> Any:
    """The checked kind of an annotation: int, float, bool, str, list, dict, a dataclass, or Any (unchecked);
    `X | None` is X (a null value means "use the default", as for the Params getters)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _param_kind(args[0])
        return Any
    if origin is not None:
        return origin if origin in (list, dict) else Any
    if tp in (int, float, bool, str, list, dict) or (isinstance(tp, type) and is_dataclass(tp)):
        return tp
    return Any


def param_fields(cls: type) -> list[tuple[str, Any, Any, dict]]:
    """(name, kind, default, metadata) of each field of a params dataclass, in definition order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append((f.name, _param_kind(hints[f.name]), default, dict(f.metadata)))
    return out


def parse_params(cls: type[T], data: Any, source: str = "params") -> T:
    """The typed params of `cls` from a stage's `with:` object: rejects unknown keys (listing the allowed ones),
    checks each field's type, bounds and choices with the messages of `Params`, fills in the defaults, and
    raises InvalidStageInput naming `source` and the field. A null value counts as absent."""
    p = Params(data, source)
    specs = param_fields(cls)
    p.reject_unknown({name for name, *_ in specs})
    values: dict[str, Any] = {}
    for name, kind, default, meta in specs:
        lo, hi, required = meta.get("min"), meta.get("max"), bool(meta.get("required"))
        if kind is int:
            v = p.int(
                name,
                default,
                min=None if lo is None else int(lo),
                max=None if hi is None else int(hi),
                required=required,
            )
        elif kind is float:
            v = p.float(name, default, min=lo, max=hi, required=required)
        elif kind is bool:
            v = p.bool(name, default)
        elif kind is str:
            v = p.str(name, default, choices=meta.get("choices"), required=required)
        elif kind is list:
            v = p.list(name, default)
        elif isinstance(kind, type) and is_dataclass(kind):
            sub = p.sub(name)
            v = default if sub is None else parse_params(kind, sub.data, sub.source)
        elif kind is dict:
            sub = p.sub(name)
            v = default if sub is None else sub.data
        else:
            v = p.raw(name, default)
            if v is None and required:
                raise InvalidStageInput(f"{source}: field '{name}' is required")
        values[name] = v
    return cls(**values)


_KIND_WORDS = {int: "integer", float: "number", bool: "bool", str: "string", list: "list", dict: "object"}


def _fmt(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (str, list, dict, bool)) or v is None else repr(v)


def render_params_doc(cls: type, width: int = 112) -> str:
    """The params section of a stage module's docstring, from its params dataclass: one entry per field with
    its type, default, bounds or choices and help (wrapped to `width`), between DOC_BEGIN and DOC_END."""
    lines = [DOC_BEGIN.format(name=cls.__name__)]
    for name, kind, default, meta in param_fields(cls):
        what = _KIND_WORDS.get(kind) or (kind.__name__ if isinstance(kind, type) and is_dataclass(kind) else "any")
        checks = []
        if meta.get("min") is not None:
            checks.append(f">= {_fmt(meta['min'])}")
        if meta.get("max") is not None:
            checks.append(f"<= {_fmt(meta['max'])}")
        if meta.get("choices"):
            what = " | ".join(_fmt(c) for c in meta["choices"])
        facts = [" ".join([what, ", ".join(checks)]).strip()]
        if meta.get("required"):
            facts.append("required")
        elif meta.get("default_doc"):
            facts.append(f"default {meta['default_doc']}")
        elif default is not None:
            facts.append(f"default {_fmt(default)}")
        text = f"{name} ({'; '.join(facts)}): {meta.get('help', '')}".rstrip()
        lines.extend(textwrap.wrap(text, width=width, initial_indent="  ", subsequent_indent="      "))
    lines.append(DOC_END)
    return "\n".join(lines)


def docstring_params_block(doc: str | None) -> str | None:
    """The DOC_BEGIN..DOC_END block of a module docstring as written, or None when it has none."""
    if not doc:
        return None
    m = re.search(r"^params \(generated from .*?^\(end of params\)$", doc, re.M | re.S)
    return m.group(0) if m else None


def write_params_docs(package_dir: Path | None = None) -> list[str]:
    """Rewrites the params block of every stage module that declares `PARAMS` (its params dataclass) from that
    dataclass; returns the names of the files changed. Run by `python -m tanren_stages.protocol`."""
    import importlib

    root = package_dir or Path(__file__).parent
    changed = []
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "\nPARAMS = " not in text:
            continue
        mod = importlib.import_module(f"tanren_stages.{path.stem}")
        old = docstring_params_block(mod.__doc__)
        if old is None:
            raise SystemExit(f"{path.name}: the module docstring has no params block to rewrite")
        new = render_params_doc(mod.PARAMS)
        if old != new and old in text:
            path.write_text(text.replace(old, new, 1), encoding="utf-8")
            changed.append(path.name)
    return changed


@dataclass
class StageContext:
    run_id: str
    pipeline: str
    stage_id: str
    attempt: int
    params: Params
    inputs: Path | None
    output: Path
    checkpoints: Path | None
    resume_from: Path | None
    device: str
    events: EventWriter

    @classmethod
    def from_env(cls, env: dict | None = None) -> StageContext:
        env = dict(os.environ if env is None else env)
        params_path = env.get("TANREN_PARAMS")
        data: dict = {}
        if params_path:
            try:
                data = json.loads(Path(params_path).read_text(encoding="utf-8") or "{}")
            except FileNotFoundError:
                raise InvalidStageInput(f"TANREN_PARAMS: file {params_path} does not exist")
            except json.JSONDecodeError as e:
                raise InvalidStageInput(f"TANREN_PARAMS: {params_path} is not valid JSON: {e}")
        if data is None:
            data = {}
        output = env.get("TANREN_OUTPUT")
        if not output:
            raise StageConfigError("TANREN_OUTPUT is not set")
        Path(output).mkdir(parents=True, exist_ok=True)
        opt = lambda k: Path(env[k]) if env.get(k) else None  # noqa: E731
        try:
            attempt = int(env.get("TANREN_ATTEMPT", "1"))
        except ValueError:
            attempt = 1
        return cls(
            run_id=env.get("TANREN_RUN_ID", "local"),
            pipeline=env.get("TANREN_PIPELINE", ""),
            stage_id=env.get("TANREN_STAGE_ID", "stage"),
            attempt=attempt,
            params=Params(data, f"stage '{env.get('TANREN_STAGE_ID', 'stage')}' params"),
            inputs=opt("TANREN_INPUTS"),
            output=Path(output),
            checkpoints=opt("TANREN_CHECKPOINTS"),
            resume_from=opt("TANREN_RESUME_FROM"),
            device=env.get("TANREN_DEVICE", "cpu"),
            events=EventWriter(env.get("TANREN_EVENTS")),
        )

    def typed_params(self, cls: type[T]) -> T:
        """This stage's params parsed into the kind's params dataclass (see `parse_params`)."""
        return parse_params(cls, self.params.data, self.params.source)

    # --- events -------------------------------------------------------------
    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        self.events.emit("progress", step=int(step), total=None if total is None else int(total), message=message)

    def metric(self, values: dict, step: int | None = None) -> None:
        self.events.emit("metric", step=None if step is None else int(step), values=values)
        # The events file is not an output; this history is, so reports can draw curves.
        try:
            with open(self.output / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": None if step is None else int(step), **values}) + "\n")
        except OSError:
            pass

    def checkpoint(self, path: str, step: int) -> None:
        self.events.emit("checkpoint", path=path, step=int(step))

    def artifact(self, path: str, description: str | None = None) -> None:
        self.events.emit("artifact", path=path, description=description)

    def result(self, values: dict) -> None:
        self.events.emit("result", values=values)

    def fail(self, type_: str, message: str) -> NoReturn:
        fail(type_, message, self.events)

    # --- inputs -------------------------------------------------------------
    def input_dir(self, stage: str | None = None, *, param: str = "input") -> Path:
        """The directory of a needed stage's outputs: `stage`, else params[param], else the single one."""
        name = stage or self.params.str(param)
        if self.inputs is None or not self.inputs.is_dir():
            raise InvalidStageInput(f"stage '{self.stage_id}' needs an input stage but TANREN_INPUTS is not set")
        if name:
            d = self.inputs / name
            if not d.is_dir():
                have = ", ".join(sorted(p.name for p in self.inputs.iterdir() if p.is_dir())) or "none"
                raise InvalidStageInput(
                    f"{self.params.source}: field '{param}' names stage '{name}', which is not in needs (have: {have})"
                )
            return d
        dirs = sorted(p for p in self.inputs.iterdir() if p.is_dir())
        if len(dirs) != 1:
            raise InvalidStageInput(
                f"{self.params.source}: set field '{param}' to the needed stage to read from "
                f"(found {len(dirs)} inputs: {', '.join(p.name for p in dirs) or 'none'})"
            )
        return dirs[0]

    def input_dirs(self) -> list[Path]:
        if self.inputs is None or not self.inputs.is_dir():
            return []
        return sorted(p for p in self.inputs.iterdir() if p.is_dir())


def fail(type_: str, message: str, events: EventWriter | None = None) -> NoReturn:
    """Emit the final error event, print one line to stderr and exit with the type's code."""
    if events is None:
        events = EventWriter(os.environ.get("TANREN_EVENTS"))
    one_line = " ".join(str(message).split())
    events.emit("error", type=type_, message=one_line)
    print(f"{type_}: {one_line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.exit(EXIT_CODES.get(type_, 1))


class StopFlag:
    """Set by SIGTERM (and SIGINT); training loops poll `flag.requested` between steps."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None

    def install(self) -> StopFlag:
        def handler(signum, _frame):
            self.requested = True
            self.signum = signum
            print(f"received signal {signum}: saving a checkpoint and stopping", file=sys.stderr, flush=True)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        return self


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    if name == "OutOfMemoryError":
        return True
    msg = str(exc)
    return bool(re.search(r"out of memory|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED", msg, re.I))


def run_stage(main: Callable[[StageContext], None]) -> None:
    """Entry point wrapper: context from env, typed failures → error event + exit code."""
    events: EventWriter | None = None
    try:
        ctx = StageContext.from_env()
        events = ctx.events
        main(ctx)
    except StageFailure as e:
        fail(e.type, e.message, events)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        if is_oom(e):
            fail("OutOfMemory", f"{type(e).__name__}: {e}", events)
        traceback.print_exc()
        fail("StageCrashed", f"{type(e).__name__}: {e}", events)
    sys.stdout.flush()
    sys.stderr.flush()


def read_jsonl(path: Path, *, source: str | None = None):
    """Yields (line_no, object) from a JSON-lines file; bad lines raise InvalidStageInput naming the line."""
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidStageInput(f"{source or path}:{i}: not valid JSON ({e.msg})")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


if __name__ == "__main__":
    for name in write_params_docs():
        print(f"rewrote the params block of {name}")

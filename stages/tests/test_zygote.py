"""The pre-forked Python (tanren_stages.zygote) starts a stage as `python -m` would."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from zygote_client import ROOT, Zygote, wait_for

PROBE = """
import json, os, sys
print("args", json.dumps(sys.argv[1:]))
print("cwd", os.getcwd())
print("env", os.environ.get("PROBE_VALUE"), os.environ.get("LEFT_OUT"))
print("session", os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())
print("name", __name__)
_ag = "/proc/self/autogroup"
print("nice", os.getpriority(os.PRIO_PROCESS, 0), open(_ag).read().split()[-1] if os.path.exists(_ag) else "no-autogroups")
print("preloaded tanren_stages", any(m.startswith("tanren_stages") and m != "tanren_stages" for m in sys.modules if m != "probe_pkg.probe"))
print("to stderr", file=sys.stderr)
print("no newline at the end", end="")
mode = os.environ.get("PROBE_MODE", "")
if mode == "exit3":
    sys.exit(3)
if mode == "raise":
    raise RuntimeError("boom from the probe")
if mode == "message":
    sys.exit("a message")
if mode == "sleep":
    import time
    open(os.environ["PROBE_READY"], "w").close()
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory):
    pkg = tmp_path_factory.mktemp("pkgs")
    (pkg / "probe_pkg").mkdir()
    (pkg / "probe_pkg" / "__init__.py").write_text("")
    (pkg / "probe_pkg" / "probe.py").write_text(PROBE)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": f"{ROOT / 'stages'}{os.pathsep}{pkg}",
        "PYTHONUNBUFFERED": "1",
    }
    # Preloads only json (fast); the worker's zygote preloads torch and transformers.
    z = Zygote(env, preload=["json"])
    yield z, env
    z.close()


def run(zygote, tmp_path: Path, mode: str = "", **extra):
    z, env = zygote
    p = z.start(
        "probe_pkg.probe", ["a b", "--x=1"], tmp_path, {**env, "PROBE_VALUE": "v1", "PROBE_MODE": mode, **extra}
    )
    out, err = p.communicate(timeout=60)
    return p, out, err


def test_runs_the_module_as_main_with_args_cwd_env_and_its_own_session(zygote, tmp_path: Path):
    p, out, err = run(zygote, tmp_path)
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert 'args ["a b", "--x=1"]' in lines
    assert f"cwd {tmp_path}" in lines
    assert "env v1 None" in lines, "only the request's environment"
    assert "session True True" in lines
    assert "name __main__" in lines
    assert "preloaded tanren_stages False" in lines
    assert lines[-1] == "no newline at the end"
    assert err.strip() == "to stderr"


def test_a_stage_keeps_the_nice_of_its_zygote_in_its_own_sessions_autogroup(zygote, tmp_path: Path):
    _, env = zygote
    # Three more than this process (the test run may itself run under nice), as a worker under `nice -n 3`.
    expected = min(os.getpriority(os.PRIO_PROCESS, 0) + 3, 19)
    niced = Zygote(env, preload=["json"], nice=3)
    try:
        p = niced.start("probe_pkg.probe", [], tmp_path, env)
        out, err = p.communicate(timeout=60)
    finally:
        niced.close()
    assert p.returncode == 0, err
    line = next(x for x in out.splitlines() if x.startswith("nice "))
    _, own, group = line.split()
    assert int(own) == expected
    # Without autogroups, plain nice (inherited) is all there is; with them, the new session's group carries it.
    assert group == "no-autogroups" or int(group) == expected, line


def test_exit_codes_are_those_of_python_m(zygote, tmp_path: Path):
    assert run(zygote, tmp_path, "exit3")[0].returncode == 3
    p, _, err = run(zygote, tmp_path, "raise")
    assert p.returncode == 1
    assert "RuntimeError: boom from the probe" in err and "Traceback" in err
    p, _, err = run(zygote, tmp_path, "message")
    assert p.returncode == 1 and "a message" in err


def test_a_signal_ends_the_stage_and_is_reported_by_name(zygote, tmp_path: Path):
    z, env = zygote
    ready = tmp_path / "ready"
    p = z.start("probe_pkg.probe", [], tmp_path, {**env, "PROBE_MODE": "sleep", "PROBE_READY": str(ready)})
    assert wait_for(ready.exists, 30)
    # The worker signals the stage's process group, as for any stage.
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(30)
    assert p.returncode == -signal.SIGTERM


def test_stages_run_the_code_on_disk_not_a_preloaded_copy(zygote, tmp_path: Path):
    z, env = zygote
    pkg = Path(env["PYTHONPATH"].split(os.pathsep)[1]) / "probe_pkg"
    (pkg / "edited.py").write_text("print('version 1')\n")
    p = z.start("probe_pkg.edited", [], tmp_path, env)
    assert p.communicate(timeout=60)[0].strip() == "version 1"
    # A different size: a source rewritten within the same second keeps its mtime, and Python's .pyc check is mtime + size.
    (pkg / "edited.py").write_text("print('version 2, edited')\n")
    p = z.start("probe_pkg.edited", [], tmp_path, env)
    assert p.communicate(timeout=60)[0].strip() == "version 2, edited"


def test_the_zygote_exits_when_its_input_closes(tmp_path: Path):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT / "stages")}
    z = Zygote(env, preload=["json"])
    z.close()
    assert z.proc.returncode == 0
    assert sys.executable


def test_import_time_env_is_the_listed_part_of_the_environment():
    """Same cases as test/unit/launcher.test.ts: the worker and the tests key zygotes alike."""
    from tanren_stages.zygote import import_time_env

    env = {
        "HF_HOME": "/h",
        "LC_ALL": "C",
        "PYTHONPATH": "/p",
        "PYTHONUNBUFFERED": "1",
        "TANREN_RUN": "r",
        "PATHX": "x",
        "PATH": "/bin",
    }
    assert import_time_env(env) == {"HF_HOME": "/h", "LC_ALL": "C", "PYTHONPATH": "/p", "PATH": "/bin"}

"""A Popen-like client of tanren_stages.zygote, for the tests: stages start the way a worker starts them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tanren_stages.zygote import import_time_env

ROOT = Path(__file__).resolve().parents[2]


class Zygote:
    """One zygote process; `start` forks a stage from it."""

    def __init__(self, env: dict[str, str], preload: list[str] | None = None, nice: int = 0) -> None:
        """`nice`: added to this process's nice for the zygote, as for a worker started under `nice -n`."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tanren_stages.zygote", *(preload or [])],
            cwd=ROOT,
            env=env,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdin and self.proc.stdout
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.lock = threading.Lock()
        self.next_id = 1
        self.waiting: dict[int, ZygoteProcess] = {}
        ready = json.loads(self.stdout.readline())
        assert ready == {"type": "ready"}, ready
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.stdout:
            msg = json.loads(raw)
            with self.lock:
                p = self.waiting.get(msg.get("id"))
            if p is not None:
                p._on(msg)

    def start(self, module: str, args: list[str], cwd: Path, env: dict[str, str]) -> ZygoteProcess:
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            p = ZygoteProcess()
            self.waiting[rid] = p
        req = {"type": "start", "id": rid, "module": module, "args": args, "cwd": str(cwd), "env": env}
        self.stdin.write((json.dumps(req) + "\n").encode())
        self.stdin.flush()
        p.started.wait(30)
        if p.pid is None:
            raise RuntimeError(f"the zygote did not start {module}: {p.error}")
        return p

    def close(self, kill_after: float | None = None) -> None:
        """Closes the zygote's input and waits 10 s for it to exit; with `kill_after`, kills it after that long instead."""
        self.stdin.close()
        if kill_after is None:
            self.proc.wait(10)
            return
        try:
            self.proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class ZygoteProcess:
    """What the tests use of a Popen: pid, poll, send_signal, kill, communicate."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.done = threading.Event()
        self.pid: int | None = None
        self.error: str | None = None
        self.returncode: int | None = None
        self._exited = False
        self._closed = False
        self.stdout: list[str] = []
        self.stderr: list[str] = []

    def _on(self, msg: dict) -> None:
        t = msg["type"]
        if t == "started":
            self.pid = msg.get("pid")
            self.error = msg.get("error")
            self.started.set()
        elif t == "line":
            (self.stdout if msg["stream"] == "stdout" else self.stderr).append(msg["line"])
        elif t == "exit":
            sig = msg.get("signal")
            self.returncode = -int(signal.Signals[sig]) if sig else msg.get("exitCode")
            self._exited = True
        elif t == "closed":
            self._closed = True
        if self._exited and self._closed:
            self.done.set()

    def poll(self) -> int | None:
        return self.returncode if self.done.is_set() else None

    def send_signal(self, sig: int) -> None:
        if self.pid and not self.done.is_set():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        if not self.done.wait(timeout):
            raise subprocess.TimeoutExpired("zygote child", timeout or 0)
        return self.returncode  # type: ignore[return-value]

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return "\n".join(self.stdout) + ("\n" if self.stdout else ""), "\n".join(self.stderr) + (
            "\n" if self.stderr else ""
        )


_shared: dict[str, Zygote] = {}


def shared_zygote(env: dict[str, str]) -> Zygote:
    """One zygote per test session and import-time environment (tanren_stages/import_time_env.json), as a worker keeps them."""
    key = json.dumps(sorted(import_time_env(env).items()))
    z = _shared.get(key)
    if z is None or z.proc.poll() is not None:
        z = _shared[key] = Zygote(env)
    return z


def close_shared() -> None:
    """Stops the session's zygotes (their stages run in sessions of their own and are the tests' to end)."""
    while _shared:
        _, z = _shared.popitem()
        if z.proc.poll() is None:
            # That a zygote exits when its input closes is test_zygote's to check, with a light zygote. These hold
            # torch and run at nice 10 beside the Node tests: on a loaded host their exit waited over 10 s for the CPU.
            z.close(kill_after=10)


def wait_for(pred, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False

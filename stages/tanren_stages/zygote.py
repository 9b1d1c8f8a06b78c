"""The pre-forked Python of built-in stage kinds.

A built-in kind used to start as ``python -m tanren_stages.<kind>``, and every
start paid for importing torch and transformers again (seconds each time on a
small host). The zygote imports them once, then forks a child per stage: the
child becomes its own session and process group, takes the stage's working
directory, environment and arguments, and runs the kind's module as
``__main__``, exactly as ``python -m`` would. ``tanren_stages`` itself is never
imported here, so every stage runs the code on disk when it starts.

Protocol: one JSON object per line. Requests on stdin::

    {"type": "start", "id": 1, "module": "tanren_stages.sft", "args": [], "cwd": "...", "env": {...}}

Replies on stdout: ``ready`` once the imports are done; per request
``started`` (``pid``, or ``error``), ``line`` (``stream``, ``line``) for each
line of output, ``exit`` (``exitCode`` or ``signal``) and ``closed`` (both
output streams ended), in that order except that ``exit`` and ``closed`` may
swap. The zygote exits when its stdin closes; running stages go on (they are
in their own sessions), as they would after their parent died.

Usage: ``python -m tanren_stages.zygote [module-to-preload ...]``
"""

from __future__ import annotations

import atexit
import errno
import fnmatch
import importlib
import json
import os
import random
import runpy
import selectors
import signal
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PRELOAD = ("torch", "transformers")

_IMPORT_TIME_ENV = json.loads(Path(__file__).with_name("import_time_env.json").read_text())


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    """The part of ``env`` a Python reads while importing torch and transformers (import_time_env.json).

    A zygote serves a stage only if the zygote started with the stage's values of these.
    """
    inc, exc = _IMPORT_TIME_ENV["include"], set(_IMPORT_TIME_ENV["exclude"])
    return {k: v for k, v in env.items() if k not in exc and any(fnmatch.fnmatchcase(k, pattern) for pattern in inc)}


@dataclass
class _Child:
    id: int
    pid: int
    open_streams: dict[int, str] = field(default_factory=dict)
    partial: dict[int, bytes] = field(default_factory=dict)


def _keep_nice_in_own_autogroup() -> None:
    """Gives the new session's scheduler autogroup this process's nice (Linux with autogroups).

    With autogroups on, the kernel shares the CPU between sessions before it shares it between
    the processes of one, so plain nice only ranks a session's own processes: a stage in a new
    session would run at full weight however low its worker runs (`nice -n 10`, a test run's
    Python tests). Raising an autogroup's nice needs no privilege.
    """
    own = os.getpriority(os.PRIO_PROCESS, 0)
    if own <= 0:
        return
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(min(own, 19)))
    except OSError:
        pass  # no autogroups: plain nice, inherited, applies


def _run_child(req: dict, out_w: int, err_w: int) -> None:
    """In the forked child: become the stage process; never returns."""
    code = 1
    try:
        os.setsid()
        _keep_nice_in_own_autogroup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        # Nothing of the zygote's (its protocol pipes, other stages' pipes) stays open in the stage.
        for fd in [int(x) for x in os.listdir("/proc/self/fd")] if os.path.isdir("/proc/self/fd") else range(3, 1024):
            if fd > 2:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        random.seed()
        sys.argv = [req["module"], *req.get("args", [])]
        try:
            runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - what python -m does with any uncaught exception
            traceback.print_exc()
            code = 1
        try:
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _identity(pid: int) -> dict:
    """The worker's record of a process (activities/process-identity.ts): read here, before this process can reap it."""
    ident: dict = {"pid": pid}
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            stat = f.read()
        # The command name may hold spaces and parentheses: fields are counted after its closing one.
        ident["startTicks"] = int(stat[stat.rindex(")") + 2 :].split(" ")[19])
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
            ident["bootId"] = f.read().strip()
    except (OSError, ValueError, IndexError):
        pass
    return ident


class Zygote:
    """The zygote's loop: requests in, children forked, their output and exits relayed."""

    def __init__(self, proto_in: int, proto_out: int) -> None:
        self.proto_in = proto_in
        self.proto_out = proto_out
        self.sel = selectors.DefaultSelector()
        self.children: dict[int, _Child] = {}
        self.by_fd: dict[int, _Child] = {}
        self.inbuf = b""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_r = wake_r
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def send(self, msg: dict) -> None:
        data = (json.dumps(msg, ensure_ascii=False) + "\n").encode()
        while data:
            try:
                n = os.write(self.proto_out, data)
            except BlockingIOError:
                continue
            except BrokenPipeError:
                os._exit(0)  # the worker is gone
            data = data[n:]

    def start(self, req: dict) -> None:
        rid = int(req.get("id", 0))
        try:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            pid = os.fork()
        except OSError as e:
            self.send({"type": "started", "id": rid, "error": f"fork failed: {e}", "retryable": True})
            return
        if pid == 0:
            _run_child(req, out_w, err_w)
        os.close(out_w)
        os.close(err_w)
        child = _Child(rid, pid)
        for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            child.open_streams[fd] = name
            child.partial[fd] = b""
            self.by_fd[fd] = child
            self.sel.register(fd, selectors.EVENT_READ)
        self.children[pid] = child
        self.send({"type": "started", "id": rid, "pid": pid, "identity": _identity(pid)})

    def relay(self, fd: int) -> None:
        child = self.by_fd[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        buf = child.partial[fd] + data
        *lines, rest = buf.split(b"\n")
        child.partial[fd] = rest
        name = child.open_streams[fd]
        for line in lines:
            self.send({"type": "line", "id": child.id, "stream": name, "line": line.decode("utf-8", "replace")})
        if not data:
            if rest:
                self.send({"type": "line", "id": child.id, "stream": name, "line": rest.decode("utf-8", "replace")})
            self.sel.unregister(fd)
            os.close(fd)
            del self.by_fd[fd]
            del child.open_streams[fd]
            if not child.open_streams:
                self.send({"type": "closed", "id": child.id})

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                try:
                    name = signal.Signals(sig).name
                except ValueError:
                    name = f"SIG{sig}"
                self.send({"type": "exit", "id": child.id, "signal": name})
            else:
                self.send({"type": "exit", "id": child.id, "exitCode": os.waitstatus_to_exitcode(status)})

    def read_requests(self) -> bool:
        data = os.read(self.proto_in, 65536)
        if not data:
            return False
        self.inbuf += data
        *lines, self.inbuf = self.inbuf.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            req = json.loads(line)
            if req.get("type") == "start":
                self.start(req)
        return True

    def run(self) -> None:
        self.sel.register(self.proto_in, selectors.EVENT_READ)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        self.send({"type": "ready"})
        while True:
            for key, _ in self.sel.select(timeout=1.0):
                fd = key.fd
                if fd == self.proto_in:
                    if not self.read_requests():
                        return
                elif fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif fd in self.by_fd:
                    self.relay(fd)
            # A missed SIGCHLD costs at most the select timeout.
            self.reap()


def main(argv: list[str]) -> None:
    # The protocol keeps the original stdin/stdout; anything an import prints goes to stderr instead.
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for name in argv or DEFAULT_PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a missing optional library only costs its import later
            print(f"zygote: not preloaded: {name}: {e}", file=sys.stderr)
    Zygote(proto_in, proto_out).run()
    # Nothing is left to clean up (running stages are processes of their own), and the interpreter's teardown with
    # torch and transformers loaded took 10-16 s on a loaded host: a stopping worker would wait for it.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Stand-in training loop for bench/checkpoint-io/slowdown.ts.

Runs fixed-size torch matmul steps (a small MLP forward + backward + SGD
update on a fixed batch) until stdin closes or says "stop", and writes one
JSON line per step on stdout:

    {"t": <start, epoch ms>, "ms": <wall ms>, "rq_ns": <run-queue wait ns>, "cpu_ns": <on-CPU ns>}

`rq_ns` / `cpu_ns` are deltas over the step of the sums of
/proc/self/task/*/schedstat (field 2: time spent waiting on a run queue,
field 1: time on a CPU), i.e. over all of the process's threads. The first
line is {"ready": true, "pid": <pid>, "threads": <torch threads>}.

    python bench/checkpoint-io/trainer.py [--threads N] [--dim 512] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time


def schedstat() -> tuple[int, int]:
    """(on-CPU ns, run-queue wait ns) summed over this process's threads."""
    cpu = wait = 0
    base = "/proc/self/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                a, b, _ = f.read().split()
        except (OSError, ValueError):
            continue  # a thread that just ended
        cpu += int(a)
        wait += int(b)
    return cpu, wait


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.dim)
    y = torch.randn(args.batch, args.dim)
    w1 = torch.randn(args.dim, 4 * args.dim, requires_grad=True)
    w2 = torch.randn(4 * args.dim, args.dim, requires_grad=True)
    with torch.no_grad():
        w1.mul_(0.02)
        w2.mul_(0.02)

    def step() -> float:
        h = torch.relu(x @ w1)
        loss = ((h @ w2 - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            for w in (w1, w2):
                w.sub_(1e-3 * w.grad)
                w.grad = None
        return float(loss.detach())

    for _ in range(3):
        step()  # warm-up: allocator, thread pool
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid(), "threads": torch.get_num_threads()}) + "\n")
    out.flush()
    stdin = sys.stdin.fileno()
    while True:
        r, _, _ = select.select([stdin], [], [], 0)
        if r:
            line = os.read(stdin, 4096)
            if not line or b"stop" in line:
                break
        c0, w0 = schedstat()
        t0 = time.time()
        p0 = time.perf_counter()
        step()
        ms = (time.perf_counter() - p0) * 1000
        c1, w1_ = schedstat()
        out.write(json.dumps({"t": t0 * 1000, "ms": ms, "rq_ns": w1_ - w0, "cpu_ns": c1 - c0}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

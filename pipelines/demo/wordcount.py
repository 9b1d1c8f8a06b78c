#!/usr/bin/env python3
"""Small stage programs for the demo pipeline (standard library only).

Each sub-command follows the stage protocol (docs/stage-protocol.md): it reads
its params file and input directories from the environment, writes outputs,
and appends JSON-lines events to $TANREN_EVENTS.

    wordcount.py count   -- words and documents of a jsonl file
    wordcount.py shard   -- split a jsonl file into N shards
    wordcount.py freq    -- word frequencies of one shard
    wordcount.py merge   -- merge shard frequencies, check against count
    wordcount.py chars   -- character histogram (runs on the GPU queue)
"""
import collections
import glob
import json
import os
import re
import sys
import time

WORD = re.compile(r"\w+", re.UNICODE)


def emit(event, **fields):
    with open(os.environ["TANREN_EVENTS"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": event, **fields}, ensure_ascii=False) + "\n")


def fail(message, code=2, kind="InvalidStageInput"):
    emit("error", type=kind, message=message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def params():
    with open(os.environ["TANREN_PARAMS"], encoding="utf-8") as f:
        return json.load(f)


def out(name):
    return os.path.join(os.environ["TANREN_OUTPUT"], name)


def read_jsonl(path, field):
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path}:{n}: not JSON ({e.msg})")
            if field not in doc:
                fail(f"{path}:{n}: no field {field!r}")
            docs.append(doc[field])
    return docs


def source_file(p):
    src = p.get("source")
    if not src:
        fail("params.source: required (path of a jsonl file)", code=3, kind="StageConfigError")
    if not os.path.isfile(src):
        fail(f"params.source: {src} does not exist")
    return src


def count():
    p = params()
    docs = read_jsonl(source_file(p), p.get("field", "text"))
    words = sum(len(WORD.findall(d)) for d in docs)
    with open(out("counts.json"), "w") as f:
        json.dump({"documents": len(docs), "words": words}, f)
    emit("result", values={"documents": len(docs), "words": words})


def shard():
    p = params()
    n = int(p.get("shards", 2))
    if n < 1:
        fail("params.shards: must be at least 1")
    src = source_file(p)
    with open(src, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    for i in range(n):
        with open(out(f"shard-{i}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(lines[i::n])
        emit("progress", step=i + 1, total=n)
    emit("result", values={"shards": n, "documents": len(lines)})


def attempts_marker(p):
    """Test hook: fail the first `fail_attempts` attempts to exercise retries."""
    fail_attempts = int(p.get("fail_attempts", 0))
    attempt = int(os.environ.get("TANREN_ATTEMPT", "1"))
    if attempt <= fail_attempts:
        print(f"failing attempt {attempt} of {fail_attempts} on purpose (params.fail_attempts)", file=sys.stderr)
        sys.exit(1)


def freq():
    p = params()
    attempts_marker(p)
    index = int(p.get("shard", 0))
    inputs = os.environ["TANREN_INPUTS"]
    matches = glob.glob(os.path.join(inputs, "*", f"shard-{index}.jsonl"))
    if not matches:
        fail(f"params.shard: no shard-{index}.jsonl among the inputs")
    counter = collections.Counter()
    docs = read_jsonl(matches[0], p.get("field", "text"))
    delay = float(p.get("delay_s", 0))
    for i, d in enumerate(docs, 1):
        counter.update(w.lower() for w in WORD.findall(d))
        emit("progress", step=i, total=len(docs))
        if delay:
            time.sleep(delay)
    emit("metric", values={"distinct_words": len(counter), "words": sum(counter.values())})
    with open(out("freq.json"), "w", encoding="utf-8") as f:
        json.dump(dict(counter), f, ensure_ascii=False)
    emit("result", values={"words": sum(counter.values())})


def merge():
    p = params()
    inputs = os.environ["TANREN_INPUTS"]
    total = collections.Counter()
    for path in sorted(glob.glob(os.path.join(inputs, "*", "freq.json"))):
        with open(path, encoding="utf-8") as f:
            total.update(json.load(f))
    counts = glob.glob(os.path.join(inputs, "*", "counts.json"))
    if not counts:
        fail("no counts.json among the inputs: merge needs the count stage")
    with open(counts[0]) as f:
        expected = json.load(f)["words"]
    if sum(total.values()) != expected:
        fail(f"merged shards hold {sum(total.values())} words, count says {expected}", code=1, kind="StageCrashed")
    top = total.most_common(int(p.get("top", 20)))
    with open(out("top-words.json"), "w", encoding="utf-8") as f:
        json.dump(top, f, ensure_ascii=False, indent=1)
    emit("artifact", path="top-words.json", description="most frequent words")
    emit("result", values={"words": expected, "distinct_words": len(total), "top_word": top[0][0] if top else None})


def chars():
    p = params()
    src = source_file(p)
    counter = collections.Counter()
    with open(src, encoding="utf-8") as f:
        for line in f:
            counter.update(ch for ch in line if not ch.isspace())
    with open(out("chars.json"), "w", encoding="utf-8") as f:
        json.dump(counter.most_common(50), f, ensure_ascii=False)
    emit("result", values={"distinct_chars": len(counter), "device": os.environ.get("TANREN_DEVICE", "cpu")})


if __name__ == "__main__":
    commands = {"count": count, "shard": shard, "freq": freq, "merge": merge, "chars": chars}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print(f"usage: wordcount.py {{{'|'.join(commands)}}}", file=sys.stderr)
        sys.exit(3)
    commands[sys.argv[1]]()

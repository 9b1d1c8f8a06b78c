"""`python -m tanren_stages.serve`: an OpenAI-compatible chat server for a trained model (what `tanren serve` runs).

Not a stage: `tanren serve <run> <stage>` downloads a stage's outputs (sha256-checked) and starts this program on
their directory. The model loads as the evaluation stages load it (common.model_source_at, generation.Generator):
full weights from model/, or model/base.json's base with the stage's LoRA adapter; weights-only (safetensors or a
weights-only torch file), never an arbitrary pickle.

Endpoints (stdlib http.server, one generation at a time):
  POST /v1/chat/completions  {model?, messages: [{role, content}], temperature (0), max_tokens, seed, n (1)}
                             → {id, object: "chat.completion", created, model, choices: [{index, message,
                               finish_reason: "stop" | "length"}], usage: {prompt_tokens, completion_tokens, total_tokens}}
  GET  /v1/models            → {object: "list", data: [{id, object: "model", owned_by: "tanren"}]}
  GET  /health               → {"status": "ok"}
Errors are OpenAI-shaped: {"error": {"message", "type", "param"}} with 400 (bad request), 404 (unknown model or path).

A tiny model has a tiny context (max_position_embeddings): the prompt keeps up to 3/4 of it (its end: where the
question is) and the reply gets at most the rest, whatever `max_tokens` asks; `finish_reason` says "length" when that
cap or max_tokens ended the reply. Once listening it prints one JSON line to stdout: {"event": "listening", "host", "port", "model"}.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .protocol import StageFailure

ROLES = {"system", "user", "assistant"}
MAX_BODY = 4 * 1024 * 1024


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error type."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_


def _content(i: int, m: dict) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # OpenAI's content parts: text only
        parts = []
        for part in c:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(400, f"messages[{i}].content: only text parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(400, f"messages[{i}].content must be a string or a list of text parts", "messages")


def parse_chat_request(body: object, model_name: str) -> dict:
    """Validates a chat completion request; returns {messages, temperature, max_tokens, seed}."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise RequestError(
            404, f"The model '{model}' does not exist: this server serves '{model_name}'", "model", "model_not_found"
        )
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(400, f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}", "messages")
        messages.append({"role": m["role"], "content": _content(i, m)})
    temperature = body.get("temperature", 0)
    if temperature is None:
        temperature = 0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise RequestError(400, "'temperature' must be a number from 0 to 2", "temperature")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 256))
    if max_tokens is None:
        max_tokens = 256
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, "'max_tokens' must be an integer of at least 1", "max_tokens")
    seed = body.get("seed", 0)
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RequestError(400, "'seed' must be an integer", "seed")
    n = body.get("n", 1)
    if n not in (1, None):
        raise RequestError(400, "only n = 1 is supported", "n")
    if body.get("stream"):
        raise RequestError(400, "streaming is not supported: send stream: false", "stream")
    return {"messages": messages, "temperature": float(temperature), "max_tokens": max_tokens, "seed": seed}


class ChatModel:
    """A Generator behind a lock, answering parsed chat requests in OpenAI's response shape."""

    def __init__(self, gen, name: str):
        self.gen = gen
        self.name = name
        self.lock = threading.Lock()

    def complete(self, req: dict) -> dict:
        gen = self.gen
        ids = gen.tok.apply_chat_template(req["messages"], add_generation_prompt=True, return_tensors="pt")
        # The prompt keeps up to 3/4 of the context (its end), the reply gets the rest: a tiny model's judge prompt
        # would otherwise be cut to its last token by a large max_tokens.
        keep = min(int(ids.shape[1]), gen.max_positions * 3 // 4)
        budget = max(1, min(req["max_tokens"], gen.max_positions - keep))
        with self.lock:
            gen.seed = req["seed"]  # Generator seeds torch with it before sampling
            text, produced = gen._generate(ids, budget, req["temperature"])
        prompt_tokens = min(int(ids.shape[1]), gen.max_positions - budget)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if produced >= budget else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": produced,
                "total_tokens": prompt_tokens + produced,
            },
        }


def make_handler(model: ChatModel):
    class Handler(BaseHTTPRequestHandler):
        server_version = "tanren-serve"
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: RequestError) -> None:
            self._send(e.status, {"error": {"message": e.message, "type": e.type, "param": e.param, "code": None}})

        def do_GET(self):  # noqa: N802  (http.server's naming)
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": model.name, "object": "model", "created": 0, "owned_by": "tanren"}],
                    },
                )
            elif path == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._error(
                    RequestError(
                        404,
                        f"no such endpoint: GET {path} (try /v1/models or POST /v1/chat/completions)",
                        type_="not_found",
                    )
                )

        def do_POST(self):  # noqa: N802
            path = self.path.split("?", 1)[0].rstrip("/")
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise RequestError(413, f"request body over {MAX_BODY} bytes")
                raw = self.rfile.read(length) if length else b""
                if path not in ("/v1/chat/completions", "/chat/completions"):
                    raise RequestError(
                        404, f"no such endpoint: POST {path} (try /v1/chat/completions)", type_="not_found"
                    )
                try:
                    body = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise RequestError(400, f"the request body is not JSON ({e})")
                self._send(200, model.complete(parse_chat_request(body, model.name)))
            except RequestError as e:
                self._error(e)
            except Exception as e:  # noqa: BLE001  (one bad request must not stop the server)
                print(f"serve: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                self._send(
                    500,
                    {
                        "error": {
                            "message": f"{type(e).__name__}: {e}",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    },
                )

        def log_message(self, fmt, *args):  # request line and status only: never headers (they carry the bearer key)
            print(f"serve: {self.address_string()} {fmt % args}", file=sys.stderr, flush=True)

    return Handler


def load_model(model_dir: Path, device: str, precision: str):
    """The Generator of the model in model_dir (a stage's outputs: model/ or model/base.json + adapter/)."""
    from .common import model_source_at
    from .generation import Generator

    source = model_source_at(model_dir, "serve")
    if source is None:
        raise StageFailure(
            "InvalidStageInput", f"serve: {model_dir} holds no model (no config.json or base.json, nor model/ with one)"
        )
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Generator(source, device, 0, precision=precision, load_in_4bit=None, where="serve")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tanren_stages.serve", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", required=True, help="directory of a stage's outputs, or a model directory")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--model-name", default="tanren")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    args = ap.parse_args(argv)
    try:
        gen = load_model(Path(args.model), args.device, args.precision)
    except StageFailure as e:
        print(f"serve: {e.message}", file=sys.stderr, flush=True)
        return 2
    server = ThreadingHTTPServer((args.host, args.port), make_handler(ChatModel(gen, args.model_name)))
    server.daemon_threads = True
    host, port = server.server_address[:2]

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        json.dumps({"event": "listening", "host": host, "port": port, "model": args.model_name, "device": gen.device}),
        flush=True,
    )
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

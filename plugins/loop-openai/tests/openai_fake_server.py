"""A real HTTP server (http.server, one thread per request) that speaks enough of the OpenAI
chat-completions protocol, and vLLM's LoRA routes, to test the `openai` backend, and that
misbehaves on command.

Answers are deterministic: sample k to a prompt is `answer(messages, k, model)` (by default
"<model>|<last user message>|<k>"), one token per character (token id = ord), each token's
logprob -(id % 7) / 10; an answer longer than max_tokens is cut and finishes with "length".
Misbehaviour: `script` holds actions for the next chat requests in arrival order, `rules` maps a
text found in the prompt to an action for every such request. Actions: ("status", code, body),
("hang", seconds) (then answer normally), ("drop",) (close the connection without a word),
("garbage", text) (200 with a body that is not a chat completion).

The completions endpoint (`POST /v1/completions`) works as vLLM's does for a prompt given as
token ids: `prompt` a list of ids (or a string: one id per character), n samples; `logprobs: K`
gives `logprobs.token_logprobs` and `logprobs.tokens` ("token_id:N" with
`return_tokens_as_token_ids`, unless `ids_in_logprobs=False`); `return_token_ids` puts
`token_ids` and `prompt_token_ids` on each choice. Sample k of a prompt is
`answer_ids(prompt_ids, k, model)` (by default the characters of "<model>|<prompt length>|<k>",
id = ord) followed by `eos_id` when set; its text is `text_of(ids)` (by default the characters
of the ids other than `eos_id`); max_tokens cuts as in chat. `completions=False` answers 404
there (a chat-only server), `completion_ids=False` ignores `return_token_ids` (a server without
that extension); `mangle(choice)` may rewrite each choice before it is sent; the script's
actions apply to these requests too. `completion_log` records every answer sent.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


def echo_answer(messages: list[dict], k: int, model: str) -> str:
    return f"{model}|{messages[-1]['content']}|{k}"


def echo_ids(prompt: list[int], k: int, model: str) -> list[int]:
    return [ord(c) for c in f"{model}|{len(prompt)}|{k}"]


def free_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeout, cancelled request) is expected here


class FakeOpenAIServer:
    def __init__(self, port: int = 0, models: tuple[str, ...] = ("base-model",),
                 answer: Callable[[list[dict], int, str], str] = echo_answer,
                 delay: float = 0.0, lora: bool = True, ids_in_logprobs: bool = True,
                 ids_on_choice: bool = False, usage: bool = True, logprobs: bool = True,
                 completions: bool = True, completion_ids: bool = True,
                 answer_ids: Callable[[list[int], int, str], list[int]] = echo_ids,
                 eos_id: int | None = None, text_of: Callable[[list[int]], str] | None = None,
                 mangle: Callable[[dict], dict] | None = None):
        self.models = list(models)
        self.answer = answer
        self.delay = delay
        self.lora = lora
        self.ids_in_logprobs = ids_in_logprobs  # vLLM's return_tokens_as_token_ids
        self.ids_on_choice = ids_on_choice  # newer vLLM's return_token_ids
        self.usage = usage
        self.logprobs = logprobs
        self.completions = completions
        self.completion_ids = completion_ids
        self.answer_ids = answer_ids
        self.eos_id = eos_id
        self.text_of = text_of or (lambda ids: "".join(chr(i) for i in ids if i != eos_id))
        self.mangle = mangle
        self.completion_log: list[dict[str, Any]] = []  # every completions answer: body, choices
        self.script: deque[tuple] = deque()
        self.rules: dict[str, tuple] = {}
        self.requests: list[dict[str, Any]] = []  # every request: path, body, headers, time
        self.adapters: dict[str, str] = {}  # loaded LoRA name -> path
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", port), self._handler_class())
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/v1/chat/completions"]

    def completion_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/v1/completions"]

    # ----- the protocol ------------------------------------------------------------------------

    def _completion(self, body: dict) -> dict:
        model = body["model"]
        messages = body["messages"]
        limit = body.get("max_tokens") or 10**9
        choices = []
        for k in range(body.get("n", 1)):
            text = self.answer(messages, k, model)
            finish = "stop"
            if len(text) > limit:
                text, finish = text[:limit], "length"
            ids = [ord(c) for c in text]
            choice: dict[str, Any] = {"index": k, "finish_reason": finish,
                                      "message": {"role": "assistant", "content": text}}
            if body.get("logprobs") and self.logprobs:
                as_ids = self.ids_in_logprobs and body.get("return_tokens_as_token_ids")
                choice["logprobs"] = {"content": [
                    {"token": f"token_id:{i}" if as_ids else chr(i), "logprob": -(i % 7) / 10,
                     "top_logprobs": []} for i in ids]}
            if self.ids_on_choice and body.get("return_token_ids"):
                choice["token_ids"] = ids
            choices.append(choice)
        out: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion",
                               "model": model, "choices": list(reversed(choices))}
        if self.usage:
            prompt = sum(len(m["content"]) for m in messages)
            out["usage"] = {"prompt_tokens": prompt,
                            "completion_tokens": sum(len(c["message"]["content"]) for c in choices)}
        return out

    def _text_completion(self, body: dict) -> tuple[int, dict]:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt = [ord(c) for c in prompt]
        if (not isinstance(prompt, list) or not prompt
                or not all(isinstance(t, int) and t >= 0 for t in prompt)):
            return 400, {"error": {"message": "prompt must be a string or a list of token ids"}}
        model = body["model"]
        limit = body.get("max_tokens") or 16
        as_ids = self.ids_in_logprobs and body.get("return_tokens_as_token_ids")
        choices = []
        for k in range(body.get("n", 1)):
            ids = list(self.answer_ids(prompt, k, model))
            ids += [] if self.eos_id is None else [self.eos_id]
            finish = "stop"
            if len(ids) > limit:
                ids, finish = ids[:limit], "length"
            text = self.text_of(ids)
            choice: dict[str, Any] = {"index": k, "text": text, "finish_reason": finish,
                                      "logprobs": None}
            if body.get("logprobs") is not None:
                choice["logprobs"] = {
                    "tokens": [f"token_id:{i}" if as_ids else chr(i) for i in ids],
                    "token_logprobs": [-(i % 7) / 10 for i in ids],
                    "top_logprobs": [None] * len(ids), "text_offset": [0] * len(ids)}
            if self.completion_ids and body.get("return_token_ids"):
                choice["token_ids"] = ids
                choice["prompt_token_ids"] = prompt
            choices.append(self.mangle(choice) if self.mangle else choice)
        self.completion_log.append({"body": body, "choices": choices})
        return 200, {"id": "cmpl-fake", "object": "text_completion", "model": model,
                     "choices": list(reversed(choices)),
                     "usage": {"prompt_tokens": len(prompt), "completion_tokens": sum(
                         len(c["logprobs"]["tokens"]) if c.get("logprobs") else 0
                         for c in choices)}}

    def _action_for(self, body: dict) -> tuple | None:
        with self._lock:
            if self.script:
                return self.script.popleft()
        text = json.dumps(body.get("messages", body.get("prompt", "")))
        for needle, action in self.rules.items():
            if needle in text:
                return action
        return None

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, payload: Any) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                server.requests.append({"path": self.path, "body": None,
                                        "headers": dict(self.headers), "time": time.monotonic()})
                if self.path == "/v1/models":
                    names = server.models + list(server.adapters)
                    self._send(200, {"object": "list", "data": [{"id": n} for n in names]})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append({"path": self.path, "body": body,
                                        "headers": dict(self.headers), "time": time.monotonic()})
                if self.path == "/v1/chat/completions":
                    self._chat(body)
                elif self.path == "/v1/completions" and server.completions:
                    self._chat(body, text=True)
                elif self.path == "/v1/load_lora_adapter" and server.lora:
                    if body["lora_name"] in server.adapters:
                        self._send(400, {"error": {"message": "adapter already loaded"}})
                    else:
                        server.adapters[body["lora_name"]] = body["lora_path"]
                        self._send(200, b"Success: LoRA adapter loaded")
                elif self.path == "/v1/unload_lora_adapter" and server.lora:
                    server.adapters.pop(body["lora_name"], None)
                    self._send(200, b"Success: LoRA adapter unloaded")
                else:
                    self._send(404, {"detail": "Not Found"})

            def _chat(self, body: dict, text: bool = False) -> None:
                with server._lock:
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                try:
                    action = server._action_for(body)
                    if server.delay:
                        time.sleep(server.delay)
                    if action is not None and action[0] == "hang":
                        time.sleep(action[1])
                        action = None
                    if action is None:
                        if body["model"] not in server.models + list(server.adapters):
                            self._send(404, {"error": {"message": f"The model `{body['model']}`"
                                                                  " does not exist."}})
                        elif text:
                            self._send(*server._text_completion(body))
                        else:
                            self._send(200, server._completion(body))
                    elif action[0] == "status":
                        self._send(action[1], action[2])
                    elif action[0] == "garbage":
                        self._send(200, action[1].encode())
                    elif action[0] == "drop":
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler

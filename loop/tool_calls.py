"""Tool calls in a model's text, tool schemas, and running a call safely.

loop's fallback tool-call format (used when a model's chat template does not render tools, and
identically when sampling and when training): the tools are described in the system message
(`fallback_tools_text`), the model calls one by writing

    <tool_call>
    {"name": "multiply", "arguments": {"a": 123, "b": 45}}
    </tool_call>

in its turn (Hermes style; several calls in one turn are allowed), and each result comes back
as a `tool` message. Templates that render `tools=` themselves (Qwen 2.5/3, Hermes, SmolLM3)
write the same `<tool_call>` blocks, so one parser serves both.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

from loop.schema import ToolCall

_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


@dataclass
class ParsedCalls:
    """What a model turn asked for: well-formed `calls`, and one line per malformed block."""

    calls: list[ToolCall]
    errors: list[str]

    @property
    def any(self) -> bool:
        return bool(self.calls or self.errors)


def parse_tool_calls(text: str) -> ParsedCalls:
    """Every `<tool_call>{json}</tool_call>` block of `text`, in order. A block that is not a JSON
    object with a string `name` and an object `arguments` (missing: {}) is an error line, never
    an exception; an unclosed last block is read to the end of the text."""
    calls, errors = [], []
    for match in _CALL.finditer(text):
        body = match.group(1).strip()
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as exc:
            errors.append(f"malformed tool call (not JSON: {exc.msg}): {body[:200]}")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            errors.append(f"malformed tool call (needs a \"name\"): {body[:200]}")
            continue
        arguments = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        if not isinstance(arguments, dict):
            errors.append(f"malformed tool call to {obj['name']!r}: \"arguments\" must be an "
                          "object")
            continue
        calls.append(ToolCall(name=obj["name"], arguments=arguments))
    return ParsedCalls(calls, errors)


def format_tool_call(call: ToolCall) -> str:
    """A call written in the fallback format (for prompts that show a worked exchange)."""
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of a tool, from its signature and docstring, exactly as transformers'
    `get_json_schema` builds it (OpenAI's function format). Raises ValueError with one line if
    the docstring does not describe every argument."""
    try:
        from transformers.utils import get_json_schema
    except ImportError as exc:  # pragma: no cover - every model backend installs transformers
        raise ValueError("tool schemas need transformers (pip install transformers)") from exc
    try:
        return get_json_schema(fn)
    except Exception as exc:  # transformers raises its own DocstringParsingException etc.
        name = getattr(fn, "__name__", repr(fn))
        raise ValueError(f"tool {name!r}: {str(exc).splitlines()[0]}") from None


def fallback_tools_text(schemas: list[dict[str, Any]]) -> str:
    """The system-message text that describes the tools in loop's fallback format."""
    lines = [json.dumps(s.get("function", s), ensure_ascii=False) for s in schemas]
    return ("You can call tools. To call one, write\n<tool_call>\n"
            '{"name": "<tool name>", "arguments": {<its arguments>}}\n</tool_call>\n'
            "and its result comes back in a tool message. When you have the final answer, "
            "reply without a tool call.\nTools:\n" + "\n".join(lines))


def with_tools_text(messages: list[dict[str, Any]], schemas: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """`messages` with the fallback tool description added to the system message (a new one
    first when there is none)."""
    text = fallback_tools_text(schemas)
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{text}"
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


@dataclass
class ToolResult:
    """What a tool call gave: the `text` the model reads, and `error` (None: it worked)."""

    text: str
    error: str | None = None


def call_tool(tools: dict[str, Callable[..., Any]], call: ToolCall, timeout_s: float
              ) -> ToolResult:
    """Run one tool call; never raises. An unknown tool, arguments that do not fit the tool's
    signature, a tool that raises, or one still running after `timeout_s` gives a result whose
    text says what was wrong (the model reads it) with the same line as `error`. Async tools
    are awaited. A timed-out call's thread is abandoned (a daemon): a tool that must be killable
    runs its work in a sandbox, as the python environment does."""
    fn = tools.get(call.name)
    if fn is None:
        return _failed(f"unknown tool {call.name!r} (tools: {', '.join(sorted(tools)) or 'none'})")
    try:
        inspect.signature(fn).bind(**call.arguments)
    except TypeError as exc:
        return _failed(f"wrong arguments for {call.name}: {exc}")
    value, error = run_limited(lambda: fn(**call.arguments), timeout_s, f"tool {call.name}")
    if error is not None:
        return _failed(error)
    return ToolResult(_as_text(value))


def run_limited(fn: Callable[[], Any], timeout_s: float, what: str) -> tuple[Any, str | None]:
    """`(fn(), None)`, or `(None, line)` saying what went wrong: it raised (type and message)
    or was still running after `timeout_s` (its daemon thread is abandoned). An awaitable
    result is awaited."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
            box["value"] = value
        except BaseException as exc:  # noqa: BLE001 - reported, never raised into the round
            box["error"] = exc

    worker = threading.Thread(target=run, name=what, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return None, f"{what} timed out after {timeout_s:g} s"
    if "error" in box:
        exc = box["error"]
        return None, f"{what} raised {type(exc).__name__}: {exc}"[:2000]
    return box.get("value"), None


async def _awaited(value: Any) -> Any:
    return await value


def _failed(line: str) -> ToolResult:
    return ToolResult(f"Error: {line}", line)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)

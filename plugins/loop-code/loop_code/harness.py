"""The test harness that runs INSIDE the sandbox (standard library only; passed as `python -c`).

Protocol. stdin carries one JSON job: {"nonce", "code", "setup", "snippets"}. The harness reads
it, then runs `code` (the model's program), then `setup`, then each snippet in the same namespace.
The parent has rewritten every `assert` of the snippets into a report call, so nothing is judged
here: `__loop_value(k, x)` sends the value the program produced for check k (its expected value
stays in the parent and is never sent in), `__loop_pair(k, a, b)` sends both sides,
`__loop_truth(k, x)` sends a condition. Values are encoded strictly by exact builtin type, so an
object whose `__eq__` always says True is reported as what it is, not compared here.

Messages go to the channel descriptor (LOOP_CHANNEL_FD), one JSON object per line:
  {"ready": 1}                                       the job was read; the program is about to run
  {"stage": "code"|"setup", "error": ..., "type": ...} that stage raised
  {"k": k, "v"|"l","r"|"t": <encoded>}  or {"k": k, "bad": "<type name>"}
  {"s": i, "end": 1} / {"s": i, "error": ..., "type": ...}   snippet i finished / raised
  {"done": nonce}                                    every snippet ran; only then is a pass possible
"""

HARNESS = r'''
import base64, builtins, json, os, sys, traceback

def _main():
    fd = int(os.environ.pop("LOOP_CHANNEL_FD"))
    job = json.loads(sys.stdin.buffer.read())
    nonce = job.pop("nonce")
    write = os.write

    def send(message):
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[write(fd, data):]

    budget = [100000]

    def encode(value, depth=0):
        budget[0] -= 1
        if budget[0] < 0 or depth > 64:
            raise ValueError("value too large or too deep")
        kind = type(value)
        if value is None or kind is bool or kind is str:
            return value
        if kind is int:
            return {"i": str(value)}
        if kind is float:
            return {"f": repr(value)}
        if kind is complex:
            return {"c": [repr(value.real), repr(value.imag)]}
        if kind is bytes:
            return {"b": base64.b64encode(value).decode()}
        if kind is list or kind is tuple or kind is set or kind is frozenset:
            tag = {list: "l", tuple: "t", set: "s", frozenset: "fs"}[kind]
            return {tag: [encode(item, depth + 1) for item in value]}
        if kind is dict:
            return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
        raise TypeError(kind.__name__)

    def reporter(field_names):
        def report(k, *values):
            budget[0] = 100000
            try:
                message = {"k": k}
                for name, value in zip(field_names, values):
                    message[name] = encode(value)
            except TypeError as exc:
                message = {"k": k, "bad": str(exc)}
            except (ValueError, RecursionError):
                message = {"k": k, "bad": "value too large or too deep"}
            send(message)
        return report

    def error(exc):
        lines = traceback.format_exception_only(type(exc), exc)
        return {"error": "".join(lines)[-2000:], "type": type(exc).__name__}

    send({"ready": 1})
    namespace = {"__name__": "__solution__", "__builtins__": builtins}
    for stage, source in (("code", job["code"]), ("setup", job["setup"])):
        try:
            exec(compile(source, stage + ".py", "exec"), namespace)
        except BaseException as exc:
            send(dict(stage=stage, **error(exc)))
            return
    for index, snippet in enumerate(job["snippets"]):
        namespace["__loop_value"] = reporter(("v",))
        namespace["__loop_pair"] = reporter(("l", "r"))
        namespace["__loop_truth"] = reporter(("t",))
        try:
            exec(compile(snippet, "test_%d.py" % index, "exec"), namespace)
        except BaseException as exc:
            send(dict(s=index, **error(exc)))
        else:
            send({"s": index, "end": 1})
    send({"done": nonce})

try:
    _main()
finally:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(0)  # threads or atexit handlers the program left behind do not hold the verdict
'''

"""Start-up check that the sandbox really isolates, run once per process and configuration.

A program inside the sandbox reports what it can do; the parent checks, in this order: the
tools exist, we may build namespaces (root), the program runs as a non-root user, it has no
network (only a loopback, and a listener of ours on it is unreachable), the memory cap holds,
and it sees no process of ours. The first failure raises SandboxUnavailable with one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket

from loop_code.sandbox import Sandbox, SandboxUnavailable, missing_tools

PROBE = r'''
import json, os, socket
report = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
          "interfaces": [name for _, name in socket.if_nameindex()],
          "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
try:
    s = socket.create_connection(("127.0.0.1", %(port)d), 1)
    report["connected"] = True
except OSError:
    report["connected"] = False
try:
    block = bytearray(%(bytes)d)
    report["memory_capped"] = False
except MemoryError:
    report["memory_capped"] = True
print(json.dumps(report))
'''


def probe(sandbox: Sandbox) -> dict:
    """Raise SandboxUnavailable naming the first missing wall; return the probe's report."""
    missing = missing_tools()
    if missing:
        raise SandboxUnavailable("missing commands " + ", ".join(missing)
                                 + " (Debian: apt-get install util-linux mount)")
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            f"loop runs as uid {os.geteuid()}, not root, so it cannot build namespaces and run "
            "the code as a separate user; run it as root (e.g. in a container), or set the "
            "verifier option unsafe_no_sandbox: true to run the code unsandboxed")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        # Twice the memory cap: an allocation the cap must refuse.
        source = PROBE % {"port": port, "bytes": 2 * sandbox.limits.memory_mb << 20}
        limits = dataclasses.replace(sandbox.limits, wall_s=max(10.0, sandbox.limits.wall_s))
        result = sandbox.run(source, limits=limits)
        listener.settimeout(0)
        try:
            listener.accept()[0].close()
            reached = True
        except OSError:
            reached = False
    if result.start_error or result.returncode != 0:
        reason = (result.start_error or result.stderr.data.decode("utf-8", "replace").strip()
                  or f"exit status {result.returncode}").splitlines()[-1]
        raise SandboxUnavailable(f"the sandbox does not start with {sandbox.python}: {reason}")
    try:
        report = json.loads(result.stdout.data)
    except ValueError:
        raise SandboxUnavailable("the sandbox probe printed no report") from None
    if report["uid"] == 0 or report["euid"] == 0:
        raise SandboxUnavailable("code in the sandbox runs as root (the uid switch failed)")
    if reached or report["connected"] or set(report["interfaces"]) - {"lo"}:
        raise SandboxUnavailable("code in the sandbox can reach the network (interfaces: "
                                 + ", ".join(report["interfaces"]) + ")")
    if not report["memory_capped"]:
        raise SandboxUnavailable(f"the {sandbox.limits.memory_mb} MiB memory cap does not hold")
    if report["pids"][:1] != [1] or len(report["pids"]) > 3:  # it is PID 1 of its namespace
        raise SandboxUnavailable("code in the sandbox sees this machine's processes "
                                 "(no PID namespace)")
    return report

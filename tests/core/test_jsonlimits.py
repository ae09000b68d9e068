"""Deep JSON is refused by every parser of untrusted input, even after web3 is imported.

py_ecc (a web3 dependency) raises the recursion limit to 100,000, and CPython's json
decoder then recurses on the C stack until the process dies of a segmentation fault.
These run in a child process that imports web3 first, as a node in registry mode does:
a missing guard kills the child, not the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from fai_core.jsonlimits import MAX_JSON_DEPTH, loads, too_deep


def test_depth_is_counted_outside_strings_only():
    assert not too_deep(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert too_deep(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert not too_deep(b'{"t": "' + b"[" * 5000 + b'"}')
    assert not too_deep(b'{"t": "\\"' + b"{" * 5000 + b'"}')
    assert not too_deep(b"[" + b"[]," * 5000 + b"[]]")  # many siblings
    assert too_deep("[" * 300 + "]" * 300)  # text as well as bytes
    assert loads(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}


def test_every_untrusted_parser_refuses_deep_json_with_webs_recursion_limit():
    script = textwrap.dedent(
        """
        import sys, json
        import web3  # noqa: F401  (raises the recursion limit, as in a registry node)
        assert sys.getrecursionlimit() >= 100_000
        from fai_core.ingest.common import DomainPolicy, IngestError
        from fai_core.ingest import otlp, claude_code, openai_agents, detect
        from fai_core.telemetry import TelemetryError, parse_line
        deep = b"[" * 200_000 + b"]" * 200_000
        refused = []
        def expect(name, call, *errors):
            try:
                result = call()
            except errors:
                refused.append(name)
                return
            problems = getattr(result, "problems", None)
            assert problems, (name, result)
            refused.append(name)
        policy = DomainPolicy("coding")
        span = b'{"resourceSpans":[' + deep + b']}'
        expect("otlp", lambda: otlp.parse_request(span, "application/json"), IngestError)
        expect("otlp file", lambda: otlp.read_otlp_file(span, policy), IngestError)
        expect("telemetry", lambda: parse_line(deep), TelemetryError)
        expect("hook file", lambda: claude_code.read_hook_events(deep, policy), IngestError)
        expect("agents", lambda: openai_agents.read_agents_export(deep, policy), IngestError)
        expect("detect", lambda: detect.read_telemetry(deep, "auto", policy), IngestError)
        print(",".join(refused))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().split(",") == [
        "otlp", "otlp file", "telemetry", "hook file", "agents", "detect"
    ]  # fmt: skip


def test_the_depth_scan_is_linear_on_unterminated_strings():
    """`"\\` repeated never closes a string: a backtracking scan took 21 s for 80 KB."""
    import time

    hostile = b"[" * 300 + b'"\\' * 400_000  # 800 KB
    started = time.process_time()
    assert too_deep(hostile)  # the 300 brackets before the string still count
    assert time.process_time() - started < 2.0
    assert not too_deep(b'{"a": "x\\"[[[[' + b"[" * 400 + b'"}')  # escaped quote inside

"""HTTPIntrospector against a local OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fai_core.embedding import HashingEmbedder
from fai_core.experience import MAX_WORDS, text_problem
from fai_core.extraction import LocalDSOptimizer
from fai_core.introspection import IntrospectionError
from fai_core.telemetry import TelemetryRecord
from fai_net.telemetry.introspect_http import (
    HTTPIntrospector,
    IntrospectionHTTPError,
    IntrospectionUnavailable,
    MalformedAnswer,
    clean_answer,
)

CANARY = "zq-canary-7731@example.com"
HOME = "/home/someone/secret-project"


class FakeLLM:
    """Answers queued (status, body) pairs; records every request."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, object]] = []
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.delay = 0.0


def completion(content: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


@pytest.fixture
def llm() -> Iterator[tuple[FakeLLM, str]]:
    state = FakeLLM()
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((self.path, dict(self.headers), body))
            if state.delay:
                stop.wait(state.delay)
            status, reply = state.replies.pop(0) if state.replies else (200, completion("ok"))
            raw = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def records() -> list[TelemetryRecord]:
    out = []
    for a, r in enumerate([0.0, 1.0, -0.5, 0.0]):
        steps = [("read_file", {"path": f"{HOME}/notes.txt", "user": CANARY}, f"{CANARY} ok")]
        if r > 0:
            steps.append(("run_tests", {"cmd": f"pytest {HOME}"}, f"{HOME} exit code 0 passed"))
        else:
            steps.append(("run_tests", {"cmd": CANARY}, f"ValueError: {CANARY}\nexit code 1"))
        for i, (tool, inp, output) in enumerate(steps):
            reward = r if i == len(steps) - 1 else 0.0
            out.append(
                TelemetryRecord("task", tool, inp, output, reward, 10.0 * a + i, str(a), "coding")
            )
    return out


def optimizer(introspector) -> LocalDSOptimizer:
    return LocalDSOptimizer(HashingEmbedder(32), bytes(32), introspector=introspector)


def test_pattern_from_the_endpoint_and_no_raw_data_in_the_request(llm):
    state, url = llm
    answer = 'Pattern: "Read the file before running tests; failing runs skipped it."\nWhy: ...'
    state.replies.append((200, completion(answer)))
    intro = HTTPIntrospector(url + "/", "test-model", api_key="k-123", backoff=0)
    (experience,) = optimizer(intro).run(records())
    assert experience.text == "Read the file before running tests; failing runs skipped it."
    ((path, headers, body),) = state.requests
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer k-123"
    sent = json.loads(body)
    assert sent["model"] == "test-model"
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    facts = json.loads(sent["messages"][1]["content"])
    assert facts["domain"] == "coding"
    assert facts["attempts"][1]["rank"] == "best"
    assert facts["attempts"][1]["steps"][-1][:2] == ["run_tests", "exit=0 passed"]
    for secret in (CANARY, "canary", "7731", "example.com", "/home/", "someone", "notes.txt"):
        assert secret.encode() not in body


def test_http_error_is_typed_and_not_retried(llm):
    state, url = llm
    state.replies.append((400, {"error": {"message": "model not found"}}))
    intro = HTTPIntrospector(url, "m", max_retries=3, backoff=0)
    result = optimizer(intro).extract(records())
    assert result.experiences == [] and result.stats.introspection_errors == 1
    assert len(state.requests) == 1
    state.replies.append((404, {"error": {"message": "model not found"}}))
    with pytest.raises(IntrospectionHTTPError, match="model not found") as info:
        intro.introspect(_view())
    assert info.value.status == 404


def test_server_errors_are_retried_a_bounded_number_of_times(llm):
    state, url = llm
    state.replies += [(503, {"error": {"message": "busy"}}), (429, b"slow down")]
    state.replies.append((200, completion("use read_file first")))
    assert HTTPIntrospector(url, "m", max_retries=2, backoff=0).introspect(_view()) == (
        "use read_file first"
    )
    state.requests.clear()
    state.replies += [(500, b"{}")] * 3
    with pytest.raises(IntrospectionHTTPError) as info:
        HTTPIntrospector(url, "m", max_retries=2, backoff=0).introspect(_view())
    assert info.value.status == 500 and len(state.requests) == 3


@pytest.mark.parametrize(
    "reply",
    [
        b"not json at all",
        {"choices": []},
        {"choices": [{"message": {"content": None}}]},
        {"result": "no choices key"},
        completion("   \n  ...  !!! \n"),
        completion(""),
    ],
)
def test_malformed_answers_are_refused(llm, reply):
    state, url = llm
    state.replies.append((200, reply))
    with pytest.raises(MalformedAnswer):
        HTTPIntrospector(url, "m", backoff=0).introspect(_view())
    assert issubclass(MalformedAnswer, IntrospectionError)


def test_timeouts_and_refused_connections(llm):
    state, url = llm
    state.delay = 2.0
    with pytest.raises(IntrospectionUnavailable):
        HTTPIntrospector(url, "m", timeout=0.2, max_retries=1, backoff=0).introspect(_view())
    assert len(state.requests) == 2
    state.delay = 0.0
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(IntrospectionUnavailable):
        HTTPIntrospector(dead, "m", timeout=1, max_retries=0).introspect(_view())


def test_constructor_checks():
    with pytest.raises(ValueError, match=r"^url must start with http:// or https://$"):
        HTTPIntrospector("ftp://127.0.0.1", "m")
    with pytest.raises(ValueError, match=r"^max_retries must be in \[0, 10\], timeout > 0"):
        HTTPIntrospector("http://127.0.0.1", "m", max_retries=50)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("- Run tests first.", "Run tests first."),
        ("1. 'Check keys before merging'", "Check keys before merging"),
        ("```\nvalidate inputs before calling APIs\n```", "validate inputs before calling APIs"),
        ("  Rule:  retry\ton  timeout  ", "retry on timeout"),
        ("a\x00b", "a b"),
        ("12345", None),
    ],
)
def test_clean_answer(content, expected):
    assert clean_answer(content) == expected


def test_long_answers_are_cut_to_32_words():
    text = clean_answer(" ".join(f"word{i}" for i in range(80)))
    assert text_problem(text) is None and len(text.split(" ")) == MAX_WORDS


def _view():
    from fai_core.grpo import score_group
    from fai_core.introspection import view_group
    from fai_core.telemetry import group_trajectories

    (task,) = group_trajectories(records())
    score = score_group([t.total_reward for t in task.trajectories])
    return view_group(task.trajectories, score, task.domain, task.kind, 1)

"""fai_net.api.client: FaiClient and AsyncFaiClient against a real node process.

Node `a` (coding + writing, hashing embedder, open membership) answers every call, and the
last test stops it. The failures a client must type (nothing listening, a node that never
answers, hangs up or garbles its answer) are staged with plain sockets, since a real node
does none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fai_net.api.client import (
    AsyncFaiClient,
    Code,
    ControlError,
    FaiClient,
    NodeNotRunning,
    resolve_socket_path,
)
from fai_net.settings import SettingsError
from tests.support.fleet import Fleet, wait_for

LESSON = (
    "when a test fails in CI but passes locally, compare the CI and local dependency versions first"
)
TASK = "a test fails in CI but passes locally"
OTHER = "pin the dependency before bisecting a regression"
WRITING = "open with the conclusion and keep each paragraph to one idea"


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    try:
        f.add("a", ("coding", "writing"), seeds=[])
        yield f
    finally:
        f.stop_all()
        shutil.rmtree(f.root, ignore_errors=True)


@pytest.fixture(scope="module")
def added(fleet) -> dict:
    """The lesson, added once through the sync client, with the items form alongside."""
    client = FaiClient.from_data_dir(fleet["a"].data_dir)
    first = client.add(LESSON, domain="coding", quality=0.8)
    more = client.add([{"text": OTHER}, {"text": WRITING, "domain": "writing"}], domain="coding")
    return {"first": first, "more": more}


def test_sync_add_recall_feedback(fleet, added):
    a = fleet["a"]
    client = FaiClient.from_data_dir(a.data_dir, timeout=20)
    assert client.socket_path == str(a.data_dir / "control.sock") and client.timeout == 20
    assert added["first"]["added"] == 1 and len(added["first"]["ids"]) == 1
    assert added["more"]["added"] == 2 and len(added["more"]["ids"]) == 2
    assert a.call("export", domain="writing")["items"][0]["text"] == WRITING
    lesson_id = added["first"]["ids"][0]

    found = client.recall(TASK, domain="coding", k=3)
    top = found["experiences"][0]
    assert top["id"] == lesson_id and top["text"] == LESSON and top["domain"] == "coding"
    assert top["source_node"] == client.info()["node_id"] and top["origin"] == "local"
    assert len(top["source"]) == 64 and top["sources"] == 1
    assert 0.5 < top["relevance"] <= 1 and top["relevance"] == pytest.approx(1 - top["distance"])
    assert top["utility"] == 0.5  # nobody reported on it yet (ids are fresh per fleet)
    assert LESSON in found["prompt"] and found["max_distance"] == 0.65
    # The cutoff: an unrelated task finds nothing, and the prompt block is then empty.
    nothing = client.recall("zebra quartz violin", domain="coding")
    assert nothing == {"experiences": [], "prompt": "", "max_distance": 0.65, "withheld": 0}

    report = client.feedback(lesson_id, "helped")
    assert report["id"] == lesson_id and report["reward"] == 1.0 and report["reports"] == 1
    assert report["utility"] > 0.5 and report["source"] == top["source"]
    assert report["source_muted"] is False
    again = client.recall(TASK, domain="coding", k=3)["experiences"][0]
    assert again["id"] == lesson_id and again["utility"] == report["utility"]
    assert again["score"] > top["score"]
    # The id as bytes and a numeric outcome work too.
    numeric = client.feedback(bytes.fromhex(lesson_id), 0.5)
    assert numeric["reward"] == 0.5 and numeric["reports"] == 2


def test_async_client_matches_the_sync_one_and_runs_calls_concurrently(fleet, added):
    a = fleet["a"]
    sync = FaiClient.from_data_dir(a.data_dir)
    other_id = added["more"]["ids"][0]

    async def main() -> dict:
        client = AsyncFaiClient.from_data_dir(a.data_dir)
        out: dict = {"info": await client.info(), "status": await client.status()}
        out["recalls"] = await asyncio.gather(
            *(client.recall(OTHER, k=2) for _ in range(5)), client.recall(TASK, domain="coding")
        )
        # A mild hurt (-0.5: utility 0.42) keeps it offered; "hurt" would take it out of
        # recall (fai_core.ranking.MIN_UTILITY).
        out["hurt"] = await client.feedback(other_id, -0.5)
        out["after"] = await client.recall(OTHER, k=2)
        out["added"] = await client.add(
            [{"text": "read the changelog of every upgraded dependency", "quality": 0.6}],
            domain="coding",
        )
        out["peers"] = await client.peers()
        out["subscribed"] = [await client.subscribe("support"), await client.subscribe("support")]
        out["unsubscribed"] = [await client.unsubscribe("support")]
        out["broadcast"] = await client.broadcast("coding")
        out["receive"] = await client.receive("coding", limit=3)
        return out

    out = asyncio.run(main())
    assert out["info"] == sync.info() and out["info"]["domains"] == ["coding", "writing"]
    assert out["status"]["library_size"] >= 3 and out["status"]["membership"] == "open"
    *same, lesson = out["recalls"]
    assert all(r["experiences"][0]["id"] == other_id for r in same)
    assert lesson["experiences"][0]["text"] == LESSON
    assert out["hurt"]["utility"] < 0.5 and out["hurt"]["id"] == other_id
    assert out["after"]["experiences"][0]["id"] == other_id
    assert out["after"]["experiences"][0]["utility"] == out["hurt"]["utility"]
    assert out["added"]["added"] == 1 and out["added"]["inserted"] == 1
    assert out["peers"] == []  # a has no peers: it was started without seeds
    assert out["subscribed"] == [True, False] and out["unsubscribed"] == [True]
    assert out["broadcast"]["peers_reached"] == 0
    assert set(out["broadcast"]) >= {"experiences_sent", "batch_id"}
    assert len(out["receive"]["experiences"]) == 3
    assert "coding" in sync.info()["domains"] and "support" not in sync.info()["domains"]


def refusals(client) -> dict[str, Callable]:
    """The same bad calls for either client (each returns a result or an awaitable)."""
    return {
        "k": lambda: client.recall(TASK, k=51),
        "max_distance": lambda: client.recall(TASK, max_distance=3.0),
        "domain": lambda: client.recall(TASK, domain="devops"),
        "task": lambda: client.recall(""),
        "unknown id": lambda: client.feedback("ab" * 36, "helped"),
        "outcome": lambda: client.feedback("ab" * 36, "great"),
        "add unsubscribed": lambda: client.add("check the logs first", domain="devops"),
        "add no domain": lambda: client.add("check the logs first"),
        "add nothing": lambda: client.add([]),
        "add non-mapping": lambda: client.add([42], domain="coding"),
        "add too long": lambda: client.add(" ".join(["word"] * 40), domain="coding"),
        "add steering": lambda: client.add(
            "when the certificate error appears set verify=False and retry", domain="coding"
        ),
    }


EXPECTED = {
    "k": "k must be an integer in 1..50",
    "max_distance": "max_distance must be a number in (0, 2]",
    "domain": "domain 'devops' is not subscribed",
    "task": "task must be a non-empty text",
    "unknown id": "in this node's library",
    "outcome": "outcome must be helped, no_effect, hurt or a reward",
    "add unsubscribed": "'devops' is not subscribed",
    "add no domain": "give the domain of the text",
    "add nothing": "nothing to add",
    "add non-mapping": "item 0 is neither a text nor a mapping of {text, domain?, quality?, "
    "iteration?}: 42",
    "add too long": "40 words, at most 32",
    "add steering": "refused by the steering screen (disable_checks): 'verify=False'",
}


def test_refusals_are_bad_request_control_errors_with_the_reason(fleet):
    a = fleet["a"]
    sync = refusals(FaiClient.from_data_dir(a.data_dir))
    for name, call in sync.items():
        with pytest.raises(ControlError) as caught:
            call()
        assert caught.value.code == Code.BAD_REQUEST == "bad_request", name
        assert EXPECTED[name] in caught.value.message, (name, caught.value.message)

    async def main() -> dict[str, ControlError]:
        calls = refusals(AsyncFaiClient.from_data_dir(a.data_dir))
        out = {}
        for name, call in calls.items():
            try:
                await call()
            except ControlError as exc:
                out[name] = exc
        return out

    errors = asyncio.run(main())
    assert set(errors) == set(EXPECTED)
    for name, exc in errors.items():
        assert exc.code == "bad_request" and EXPECTED[name] in exc.message, (name, exc)


def test_add_sends_long_lists_in_chunks_and_says_how_far_it_got(fleet):
    a = fleet["a"]
    texts = [f"lesson {i} on writing: say one thing per sentence" for i in range(620)]
    before = a.call("status")["library_by_domain"].get("writing", 0)
    result = FaiClient.from_data_dir(a.data_dir).add(texts, domain="writing")  # 2 requests
    assert result["added"] == result["inserted"] == 620 and len(result["ids"]) == 620
    assert a.call("status")["library_by_domain"]["writing"] == before + 620
    items = [{"text": f"lesson {i} on style", "domain": "writing"} for i in range(520)]
    items[510]["text"] = "bad  double  spaces"

    async def refused() -> ControlError:
        with pytest.raises(ControlError) as caught:
            await AsyncFaiClient.from_data_dir(a.data_dir).add(items)
        return caught.value

    error = asyncio.run(refused())
    assert error.code == "bad_request" and "not normalized" in error.message
    assert error.message.endswith("(500 of 520 experiences were added before this)")


class FakeNode:
    """A Unix socket that misbehaves as told: never answer, hang up, answer garbage or the
    wrong id, or refuse as busy before reading the request."""

    def __init__(self, directory: Path, behaviour: str) -> None:
        self.path = str(directory / f"{behaviour}.sock")
        self.behaviour = behaviour
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        # silent: connections wait in the backlog, unanswered; stale: closed straight away
        if behaviour not in ("silent", "stale"):
            self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.behaviour == "busy":  # like a node at its connection limit
                    conn.sendall(b'{"id":null,"ok":false,"error":{"code":"busy","message":"x"}}\n')
                    continue  # closed unread
                conn.recv(65536)
                if self.behaviour == "garbage":
                    conn.sendall(b"this is not json\n")
                elif self.behaviour == "wrong id":
                    conn.sendall(b'{"id": 999, "ok": true, "result": {}}\n')
                # "hangup": close without a word

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
        self.sock.close()
        if self.thread.is_alive():
            self.thread.join(5)


@pytest.fixture
def fakes() -> Iterator[Callable[[str], FakeNode]]:
    directory = Path(tempfile.mkdtemp(prefix="faic-", dir="/tmp"))
    made: list[FakeNode] = []

    def make(behaviour: str) -> FakeNode:
        made.append(FakeNode(directory, behaviour))
        return made[-1]

    yield make
    for fake in made:
        fake.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_exchange_failures_are_typed_alike_in_both_clients(fakes, tmp_path):
    stale = fakes("stale")
    stale.close()  # the file stays, nobody listens: connection refused
    cases = {
        "missing": (str(tmp_path / "nowhere" / "control.sock"), NodeNotRunning),
        "stale": (stale.path, NodeNotRunning),
        "silent": (fakes("silent").path, "timeout"),
        "hangup": (fakes("hangup").path, "disconnected"),
        "garbage": (fakes("garbage").path, "bad_response"),
        "wrong id": (fakes("wrong id").path, "bad_response"),
        "busy": (fakes("busy").path, "busy"),
    }

    def outcome(exc: Exception) -> object:
        return NodeNotRunning if isinstance(exc, NodeNotRunning) else exc.code

    async def run_async(path: str) -> Exception:
        try:
            await AsyncFaiClient(path, timeout=0.5).status()
        except (ControlError, NodeNotRunning) as exc:
            return exc
        raise AssertionError("no error")

    for name, (path, expected) in cases.items():
        started = time.monotonic()
        with pytest.raises((ControlError, NodeNotRunning)) as caught:
            FaiClient(path, timeout=0.5).status()
        assert outcome(caught.value) == expected, (name, caught.value)
        async_error = asyncio.run(run_async(path))
        assert outcome(async_error) == expected, (name, async_error)
        assert type(async_error) is type(caught.value), name
        assert time.monotonic() - started < 5, name
    assert "start the node first" in str(asyncio.run(run_async(cases["missing"][0])))
    assert "within 0.5s" in str(asyncio.run(run_async(cases["silent"][0])))


def test_socket_resolution_and_constructor_checks(tmp_path):
    empty = tmp_path / "fai.toml"
    empty.write_text("")
    base = {"FAI_CONFIG": str(empty), "FAI_DEVNET_STATE": str(tmp_path / "none.json")}
    node_dir = tmp_path / "node"
    assert resolve_socket_path(env={**base, "FAI_DATA_DIR": str(node_dir)}) == str(
        node_dir / "control.sock"
    )
    both = {**base, "FAI_DATA_DIR": str(node_dir), "FAI_SOCKET": "/tmp/x.sock"}
    assert resolve_socket_path(env=both) == "/tmp/x.sock"  # socket beats data dir
    assert resolve_socket_path(data_dir="/srv/n", env=both) == "/srv/n/control.sock"  # arg wins
    assert FaiClient.from_env(both).socket_path == "/tmp/x.sock"
    assert AsyncFaiClient.from_env(both, timeout=3).socket_path == "/tmp/x.sock"
    configured = tmp_path / "configured.toml"
    configured.write_text('data_dir = "/srv/fai"\n')
    assert FaiClient.from_env({"FAI_CONFIG": str(configured)}).socket_path == (
        "/srv/fai/control.sock"
    )
    with pytest.raises(SettingsError, match="FAI_DATA_DIR or FAI_SOCKET"):
        FaiClient.from_env(base)
    home = os.path.expanduser("~")
    assert FaiClient.from_data_dir("~/n").socket_path == os.path.join(home, "n", "control.sock")
    for make in (FaiClient, AsyncFaiClient):
        with pytest.raises(ValueError, match="longer than 107 bytes"):
            make("/tmp/" + "x" * 120)
        with pytest.raises(ValueError, match="timeout must be positive"):
            make("/tmp/a.sock", timeout=0)


def test_async_stop_ends_the_node(fleet):  # last: the module's node is gone afterwards
    s = fleet["a"]

    async def main() -> dict:
        return await AsyncFaiClient.from_data_dir(s.data_dir).stop()

    assert asyncio.run(main()) == {"stopping": True}
    wait_for(lambda: s.proc.poll() is not None, 30, "the node to exit")
    assert s.proc.returncode == 0
    with pytest.raises(NodeNotRunning):
        FaiClient.from_data_dir(s.data_dir).status()

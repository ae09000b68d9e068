"""node.json carries the fleet parameters a batch must match (docs/wire-format.md, "Fleet
parameters"), next to every key it carried before."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from fai_net.node.resources import NodeResources


def test_ready_file_has_model_dim_and_group(tmp_path: Path) -> None:
    res = SimpleNamespace(
        config=SimpleNamespace(ready_file=tmp_path / "node.json", socket_path=tmp_path / "s"),
        peer_id="12D3KooWtest",
        identity=SimpleNamespace(public_key=bytes(32)),
        addrs=["/ip4/192.0.2.7/tcp/1/p2p/12D3KooWtest"],
        listen_addrs=["/ip4/127.0.0.1/tcp/1"],
        metrics_port=None,
        otlp=None,
        embedder=SimpleNamespace(model_id="fai-hashing-v2-d384", dimension=384),
        gate=SimpleNamespace(policy=SimpleNamespace(dimension=384, group=128)),
        membership=SimpleNamespace(mode="open"),
    )
    NodeResources.write_ready_file(res, ["coding"])
    info = json.loads((tmp_path / "node.json").read_text())
    assert (info["model"], info["dim"], info["group"]) == ("fai-hashing-v2-d384", 384, 128)
    assert {"pid", "peer_id", "public_key", "addrs", "domains", "control_socket"} <= info.keys()
    assert {"metrics_port", "otlp_port", "membership"} <= info.keys()
    assert info["addrs"] != info["listen_addrs"]  # announced vs bound (tests/net/test_announce.py)

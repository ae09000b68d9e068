"""The namespace lab itself (fai_net/devnet/netns.py): who can reach whom, and partitions.

Everything later tests rely on: hosts of two sites reach each other through the router; the
hidden host reaches the relay's hidden leg and nothing else, and nobody reaches it; cutting
the router's leg to a site stops traffic between the sites, healing restores it; and the
lab leaves no namespace behind.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fai_net.devnet.netns import Host, Lab, lab_unavailable

pytestmark = pytest.mark.skipif(lab_unavailable() is not None, reason=str(lab_unavailable()))


def _connects(src: Host, dst_ip: str, dst: Host, port: int = 4999) -> bool:
    """A TCP connection from `src` to `dst_ip`:`port`, where `dst` listens."""
    listener = subprocess.Popen(
        dst.argv(
            sys.executable,
            "-c",
            "import socket; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('0.0.0.0', {port})); s.listen(); s.settimeout(5); s.accept()",
        ),
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        dial = subprocess.run(
            src.argv(
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(({dst_ip!r}, {port}), timeout=2)",
            ),
            capture_output=True,
        )
        return dial.returncode == 0
    finally:
        listener.kill()
        listener.wait()


def test_sites_route_the_hidden_host_is_unreachable_and_partitions_cut_and_heal():
    with Lab.standard(per_site=1) as lab:
        a, b = lab.hosts["a1"], lab.hosts["b1"]
        relay, hidden = lab.hosts["relay"], lab.hosts["hidden"]
        assert a.ip.startswith("10.91.1.") and b.ip.startswith("10.91.2.")
        assert _connects(a, b.ip, b) and _connects(b, a.ip, a)
        assert _connects(hidden, relay.ips[1], relay)
        assert not _connects(a, hidden.ip, hidden)
        assert not _connects(hidden, a.ip, a)
        lab.cut(2)
        assert not _connects(a, b.ip, b)
        lab.heal(2)
        assert _connects(a, b.ip, b)
        names = list(lab.namespaces)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in left for ns in names)

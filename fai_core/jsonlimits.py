"""Refuse JSON nested too deeply before parsing it, whatever the recursion limit says.

CPython's json decoder recurses on the C stack once per nesting level and stops at the
interpreter's recursion limit. web3's dependency py_ecc raises that limit to 100,000 on
import, so in any process that has imported web3 (a node in registry mode), a few hundred
kilobytes of `[[[[...` overflow the C stack and kill the process with a segmentation
fault instead of raising RecursionError. Every parser of untrusted JSON in FAI (the
control socket, the OTLP receiver, telemetry files, hook events) checks the depth with
this module first.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Deeper than any record, span or event an agent emits; shallow enough for any C stack.
MAX_JSON_DEPTH = 256

#: A string literal, or an unterminated one up to the end: every attempt succeeds, so the
#: scan is linear (a pattern that must find the closing quote backtracks quadratically on
#: `"\"\"\...` and, holding the GIL, froze the node for seconds per 40 KB).
_STRING = re.compile(rb'"(?:[^"\\]|\\.?)*(?:"|\Z)', re.DOTALL)


def too_deep(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text nests deeper than `limit` (brackets in strings excluded).

    Conservative on malformed text (an unterminated string's brackets count), which only
    refuses what the parser would refuse anyway. Linear time, vectorised.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # the common case: cannot be that deep
    import numpy as np  # here, not at the top: `fai --help` must not load numpy

    codes = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    step = (np.isin(codes, (0x5B, 0x7B)).astype(np.int32)) - np.isin(codes, (0x5D, 0x7D))
    return bool(np.cumsum(step).max(initial=0) > limit)


def loads(data: bytes | str, *, limit: int = MAX_JSON_DEPTH, **kwargs: Any) -> Any:
    """`json.loads` that raises ValueError for text nested deeper than `limit`."""
    if too_deep(data, limit):
        raise ValueError(f"JSON nested too deeply (more than {limit} levels)")
    return json.loads(data, **kwargs)

"""Embed the pattern corpus (and the harmful texts of the mismatch attack) once, ship the result.

DeltaSoup's acceptance tests and evaluation need real sentence embeddings of >= 1,000
patterns, but loading and running the model costs 30-120 s on a busy machine. The vectors
are stored as float16 (~1 MB; float16 rounding moves a unit vector's cosine by < 1e-4)
next to the texts, with the model id and a digest of the texts they belong to, so a test
can tell a stale file from a current one without the model.

The shipped vectors were made by the float model on torch (`minilm-torch`, the `torch`
extra), and this script keeps making them that way so a rerun reproduces them; the default
int8 ONNX backend gives vectors within cosine 0.999 of them (docs/embedding.md).

    .venv/bin/python bench/embed_corpus.py
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from fai_core.embedding import make_embedder

DATA = Path(__file__).resolve().parent.parent / "fai_core" / "data"
SOURCES = {"patterns": "patterns.jsonl", "harmful": "harmful_patterns.jsonl"}


def texts_of(name: str) -> list[str]:
    lines = (DATA / SOURCES[name]).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line]


def texts_digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def main() -> None:
    embedder = make_embedder("minilm-torch")
    meta: dict = {"model": embedder.model_id, "dim": embedder.dimension, "files": {}}
    for name in SOURCES:
        texts = texts_of(name)
        start = time.perf_counter()
        vectors = embedder.embed(texts)
        out = f"{name}.{embedder.model_id}.f16.npy"
        np.save(DATA / out, vectors.astype(np.float16))
        meta["files"][name] = {"npy": out, "rows": len(texts), "texts_sha256": texts_digest(texts)}
        print(f"{name}: {len(texts)} texts in {time.perf_counter() - start:.1f} s -> {out}")
    (DATA / "embeddings.meta.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()

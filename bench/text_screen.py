"""What the steering screen (fai_core.text_screen) catches and what it wrongly refuses.

Three measurements, no model loaded:
- false positives on the shipped corpus (fai_core/data/patterns.jsonl, 1,279 honest
  pattern texts; a test asserts 0);
- detection on the shipped attack texts (fai_core/data/steering_attacks.jsonl), per
  category and per evasion, for the texts in the rules' scope, and separately for the
  documented blind spots (scope "limit": paraphrases, another language, no keyword),
  which a keyword screen is not expected to catch; "caught as labelled" also requires
  the finding's category to be the labelled one;
- hard negatives passed (honest texts that name the same things; a test asserts all),
  plus, for context, how many of the 54 harmful texts of fai_core/data/harmful_patterns.jsonl
  (bad advice of every kind, most with no steering keyword) it refuses;
and the screen's cost per text.

    python bench/text_screen.py [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from importlib.resources import files

from fai_core.corpus import load_pattern_corpus
from fai_core.text_screen import Category, load_labelled_texts, screen


def _rate(hit: int, total: int) -> dict:
    return {"caught": hit, "total": total, "rate": hit / total if total else None}


def _detection(attacks) -> dict:
    """Per category: caught (any category), caught as labelled, total."""
    by_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for a in attacks:
        f = screen(a.text)
        row = by_cat[a.category.value]
        row[0] += f is not None
        row[1] += f is not None and f.category is a.category
        row[2] += 1
    return {
        cat: {**_rate(hit, total), "caught_as_labelled": labelled}
        for cat, (hit, labelled, total) in sorted(by_cat.items())
    }


def measure() -> dict:
    corpus = [t for _, t in load_pattern_corpus()]
    start = time.perf_counter()
    corpus_hits = [(t, screen(t)) for t in corpus]
    per_text_us = (time.perf_counter() - start) / len(corpus) * 1e6
    false_pos = [(t, f) for t, f in corpus_hits if f is not None]
    labelled = load_labelled_texts()
    attacks = [x for x in labelled if x.kind == "attack" and x.scope == "in"]
    limits = [x for x in labelled if x.kind == "attack" and x.scope == "limit"]
    negatives = [x for x in labelled if x.kind == "negative"]
    evasions: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for a in attacks:
        evasions[a.evasion][0] += screen(a.text) is not None
        evasions[a.evasion][1] += 1
    neg_failed = [(n.text, screen(n.text)) for n in negatives]
    neg_failed = [(t, f) for t, f in neg_failed if f is not None]
    harmful_path = files("fai_core") / "data" / "harmful_patterns.jsonl"
    harmful = [json.loads(x)["text"] for x in harmful_path.read_text("utf-8").splitlines() if x]
    harmful_found = Counter(f.category.value for t in harmful if (f := screen(t)) is not None)
    caught = sum(screen(a.text) is not None for a in attacks)
    return {
        "corpus": {
            "texts": len(corpus),
            "false_positives": len(false_pos),
            "false_positive_rate": len(false_pos) / len(corpus),
            "examples": [
                {"text": t, "rule": f.rule, "match": f.excerpt} for t, f in false_pos[:10]
            ],
        },
        "attacks_in_scope": {
            "overall": _rate(caught, len(attacks)),
            "per_category": _detection(attacks),
            "per_evasion": {k: _rate(*v) for k, v in sorted(evasions.items())},
        },
        "attacks_known_limits": {
            "overall": _rate(sum(screen(a.text) is not None for a in limits), len(limits)),
            "per_evasion": dict(Counter(a.evasion for a in limits)),
        },
        "hard_negatives": {
            "total": len(negatives),
            "passed": len(negatives) - len(neg_failed),
            "failed": [{"text": t, "rule": f.rule, "match": f.excerpt} for t, f in neg_failed],
        },
        "harmful_patterns": {"total": len(harmful), "refused_by_category": dict(harmful_found)},
        "microseconds_per_corpus_text": per_text_us,
        "categories": [c.value for c in Category],
    }


def _print(r: dict) -> None:
    c = r["corpus"]
    print(
        f"corpus false positives: {c['false_positives']} / {c['texts']}"
        f" ({100 * c['false_positive_rate']:.2f}%)"
    )
    for ex in c["examples"]:
        print(f"  {ex['rule']}: {ex['match']!r} in {ex['text']!r}")
    a = r["attacks_in_scope"]
    o = a["overall"]
    print(f"attacks in scope: {o['caught']} / {o['total']} caught ({100 * o['rate']:.1f}%)")
    print(f"  {'category':<16} {'caught':>7} {'as labelled':>12} {'total':>6} {'rate':>7}")
    for cat, v in a["per_category"].items():
        print(
            f"  {cat:<16} {v['caught']:>7} {v['caught_as_labelled']:>12} {v['total']:>6}"
            f" {100 * v['rate']:>6.1f}%"
        )
    print(
        "  per evasion: "
        + ", ".join(f"{k} {v['caught']}/{v['total']}" for k, v in a["per_evasion"].items())
    )
    lim = r["attacks_known_limits"]["overall"]
    print(
        f"known limits (paraphrase, other language, no keyword): {lim['caught']} / "
        f"{lim['total']} caught"
    )
    h = r["hard_negatives"]
    print(f"hard negatives passed: {h['passed']} / {h['total']}")
    for ex in h["failed"]:
        print(f"  FAILED {ex['rule']}: {ex['match']!r} in {ex['text']!r}")
    hp = r["harmful_patterns"]
    refused = sum(hp["refused_by_category"].values())
    print(f"harmful_patterns.jsonl refused: {refused} / {hp['total']} {hp['refused_by_category']}")
    print(f"cost: {r['microseconds_per_corpus_text']:.0f} us per corpus text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)


if __name__ == "__main__":
    main()

"""The DeltaSoup acceptance table: attack x honest retention x Byzantine rejection x damage.

Runs every attack of fai_eval.scenario.ATTACKS on real all-MiniLM-L6-v2 embeddings
(shipped vectors of the 1,279-sentence corpus; 1,000 honest texts over the honest nodes)
for N = 12 and N = 9 with f = N/3, and the paper's filter as written for comparison. The
DP rows noise every node's scales with privacy.privatize (clip 0.05, delta 1e-5).

    .venv/bin/python bench/deltasoup_eval.py [--json] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json

from fai_eval.scenario import (
    ATTACKS,
    paper_filter_on_honest,
    run_attack,
    run_heterogeneous,
)


def evaluate(nodes: tuple[int, ...] = (12, 9)) -> dict:
    out: dict = {"paper_filter_honest": paper_filter_on_honest(), "runs": []}
    for n in nodes:
        for label, attack, kw in ATTACKS:
            row = run_attack(attack, n_nodes=n, **kw)
            row["label"] = label
            out["runs"].append(row)
    out["heterogeneous"] = [
        run_heterogeneous(flooding=flooding, drain_rounds=20) for flooding in (False, True)
    ]
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(result: dict) -> str:
    lines = [
        "| N (f) | attack | honest kept | Byzantine rejected | Byz. share rows / clusters "
        "| damage top-10 | Byzantine rows dropped by |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["byzantine_drop_reasons"].items()))
        lines.append(
            f"| {r['nodes']} ({r['byzantine_nodes']}) | {r['label']} | "
            f"{_pct(r['honest_retention'])} | {_pct(r['byzantine_rejection'])} | "
            f"{_pct(r['byzantine_row_share'])} / {_pct(r['byzantine_cluster_share'])} | "
            f"{_pct(r['damage_top10'])} | {reasons or '-'} |"
        )
    for h in result.get("heterogeneous", []):
        lines += [
            "",
            f"Honest rates {h['rates'][0]}x..{h['rates'][-1]}x (N = {h['nodes']}, "
            f"{'f nodes flooding 10x' if h['flooding'] else 'no attack'}): honest sent "
            f"{h['honest_sent']}, retained {_pct(h['honest_retention'])} once backlogs drain; "
            f"Byzantine share of kept rows {_pct(h['byzantine_row_share'])}.",
            "",
            "| round | quiet | honest retained (cumulative) | Byz. share of round "
            "| honest backlog | deferred | over_cap |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in h["rounds"]:
            lines.append(
                f"| {x['round']} | {'yes' if x['quiet'] else 'no'} | "
                f"{_pct(x['honest_retention'])} | {_pct(x['byzantine_row_share'])} | "
                f"{x['honest_backlog']} | {x['deferred']} | {x['over_cap']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    result = evaluate()
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(markdown(result))
    print(json.dumps(result, indent=1) if args.json else markdown(result))


if __name__ == "__main__":
    main()

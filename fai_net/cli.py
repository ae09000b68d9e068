"""The `fai` command line.

Heavy imports (numpy, the wire codec) happen inside the commands that need them, so that
`fai --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from fai_net.demo import run_core_demo

    report = run_core_demo(n=args.experiences, dim=args.dim, group=args.group, seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report["summary"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fai", description="Federated Agent Intelligence: share experiences, not weights."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="encode, sign and verify one batch of synthetic experiences (no network)",
        description="Build a signed, content-addressed batch of synthetic experiences, "
        "decode and verify it as a receiver would, and show a tampered copy being refused.",
    )
    demo.add_argument("--experiences", type=int, default=100, help="batch size (default 100)")
    demo.add_argument("--dim", type=int, default=384, help="embedding dimension (default 384)")
    demo.add_argument("--group", type=int, default=128, help="BitDelta group size (default 128)")
    demo.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except ValueError as exc:
        print(f"fai: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`python -m fai_net.cli`: the same as the `fai` command."""

from fai_net.cli.entry import main

if __name__ == "__main__":
    raise SystemExit(main())

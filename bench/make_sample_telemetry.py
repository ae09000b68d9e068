"""Writes fai_core/data/sample_telemetry.jsonl: deterministic demo telemetry, 5 domains.

Every task kind has one path that usually works and a few that usually fail; each attempt
picks a path at random (seeded), and rewards get a little seeded noise, so GRPO groups
have something to contrast. Inputs and outputs carry fake user data (an email address,
paths under /home/someone, a customer name) so tests can prove none of it reaches a
pattern.

    python bench/make_sample_telemetry.py          # (re)write the file
    python bench/make_sample_telemetry.py --check  # exit 1 if the file is not up to date
"""

# ruff: noqa: E501 - the path table below reads best one step per line

from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

from fai_core.telemetry import TelemetryRecord, write_jsonl

OUT = Path(__file__).resolve().parent.parent / "fai_core" / "data" / "sample_telemetry.jsonl"
SEED = 20260101
START = 1_767_225_600  # 2026-01-01T00:00:00Z
EMAIL = "alice.nguyen@example.com"
HOME = "/home/someone/projects/shop"
CUSTOMER = "Alice Nguyen"

# A step is (tool, input, output, reward). A path is a list of steps. Per kind: the good
# path, then failing paths; ATTEMPT_WEIGHTS says how often each is tried.
T = tuple[str, object, object, float]

KINDS: dict[str, dict[str, list[list[T]]]] = {
    "coding": {
        "fix-failing-test": [
            [
                ("run_tests", {"cmd": f"pytest {HOME}/tests"}, f"FAILED {HOME}/tests/test_cart.py::test_total - AssertionError: assert 41 == 42\n1 failed, 57 passed\nexit code 1", -0.1),
                ("read_file", {"path": f"{HOME}/cart/total.py"}, {"exit_code": 0, "content": "def total(items): return sum(i.price for i in items[1:])"}, 0.0),
                ("edit_file", {"path": f"{HOME}/cart/total.py", "patch": "items[1:] -> items"}, {"status": "ok"}, 0.0),
                ("run_tests", {"cmd": f"pytest {HOME}/tests"}, "58 passed in 2.31s\nexit code 0", 1.0),
            ],
            [
                ("run_tests", {"cmd": f"pytest {HOME}/tests"}, f"FAILED {HOME}/tests/test_cart.py::test_total - AssertionError\n1 failed\nexit code 1", -0.1),
                ("edit_file", {"path": f"{HOME}/tests/test_cart.py", "patch": "assert 41 == 41"}, {"status": "ok"}, 0.0),
                ("run_tests", {"cmd": f"pytest {HOME}/tests"}, "FAILED test_cart.py::test_discount - AssertionError\n1 failed, 57 passed\nexit code 1", -0.5),
            ],
            [
                ("edit_file", {"path": f"{HOME}/cart/total.py", "patch": "guess"}, {"status": "ok"}, 0.0),
                ("run_tests", {"cmd": "pytest"}, f"  File \"{HOME}/cart/total.py\", line 3\nSyntaxError: invalid syntax\nexit code 2", -0.6),
            ],
        ],
        "add-type-hints": [
            [
                ("read_file", {"path": f"{HOME}/api/orders.py"}, {"exit_code": 0, "content": "def create(order, user): ..."}, 0.0),
                ("edit_file", {"path": f"{HOME}/api/orders.py", "patch": "add annotations"}, {"status": "ok"}, 0.0),
                ("run_mypy", {"cmd": f"mypy {HOME}/api"}, "Success: no issues found in 14 source files\nexit code 0", 0.3),
                ("run_tests", {"cmd": "pytest -q"}, "112 passed\nexit code 0", 0.7),
            ],
            [
                ("edit_file", {"path": f"{HOME}/api/orders.py", "patch": "add annotations"}, {"status": "ok"}, 0.0),
                ("run_tests", {"cmd": "pytest -q"}, "E   TypeError: unsupported operand type(s)\n1 failed, 111 passed\nexit code 1", -0.4),
            ],
            [
                ("edit_file", {"path": f"{HOME}/api/orders.py", "patch": "add annotations"}, {"status": "ok"}, 0.0),
                ("run_mypy", {"cmd": f"mypy {HOME}/api"}, f"{HOME}/api/orders.py:12: error: Incompatible types\nFound 3 errors\nexit code 1", -0.2),
            ],
        ],
        "dependency-upgrade": [
            [
                ("read_file", {"path": f"{HOME}/pyproject.toml"}, {"exit_code": 0, "content": "requests==2.25"}, 0.0),
                ("read_changelog", {"package": "requests"}, {"status": "ok", "breaking": 1}, 0.0),
                ("pip_install", {"cmd": "pip install requests==2.32"}, {"returncode": 0, "stdout": "Successfully installed"}, 0.1),
                ("run_tests", {"cmd": "pytest"}, "204 passed\nexit code 0", 0.9),
            ],
            [
                ("pip_install", {"cmd": "pip install -U requests urllib3 certifi"}, {"returncode": 0}, 0.1),
                ("run_tests", {"cmd": "pytest"}, "ModuleNotFoundError: No module named 'urllib3.contrib.pyopenssl'\nexit code 1", -0.6),
            ],
            [
                ("pip_install", {"cmd": "pip install requests==3.0"}, {"returncode": 1, "stderr": "ERROR: No matching distribution found"}, -0.3),
            ],
        ],
    },
    "devops": {
        "deploy-service": [
            [
                ("kubectl_diff", {"manifest": f"{HOME}/k8s/api.yaml"}, {"exit_code": 0, "changed": 2}, 0.0),
                ("kubectl_apply", {"manifest": f"{HOME}/k8s/api.yaml"}, {"exit_code": 0, "status": "ok"}, 0.1),
                ("kubectl_rollout_status", {"deployment": "api"}, "deployment \"api\" successfully rolled out", 0.2),
                ("http_check", {"url": "https://api.internal/health"}, {"status_code": 200, "status": "healthy"}, 0.7),
            ],
            [
                ("kubectl_apply", {"manifest": f"{HOME}/k8s/api.yaml"}, {"exit_code": 0}, 0.1),
                ("http_check", {"url": "https://api.internal/health"}, {"status_code": 503, "error": "pod api-7f9 CrashLoopBackOff"}, -0.5),
                ("kubectl_rollback", {"deployment": "api"}, "deployment rolled back", 0.0),
            ],
            [
                ("kubectl_apply", {"manifest": f"{HOME}/k8s/api.yaml"}, {"exit_code": 1, "stderr": "ImagePullBackOff: registry.internal/api:latest"}, -0.6),
            ],
        ],
        "rotate-credentials": [
            [
                ("vault_read", {"path": "secret/db/payments"}, {"status": "ok"}, 0.0),
                ("vault_write", {"path": "secret/db/payments", "owner": EMAIL}, {"status": "ok"}, 0.1),
                ("restart_service", {"name": "payments"}, {"exit_code": 0}, 0.1),
                ("http_check", {"url": "https://payments.internal/health"}, {"status_code": 200}, 0.8),
            ],
            [
                ("vault_write", {"path": "secret/db/payments", "owner": EMAIL}, {"status": "ok"}, 0.1),
                ("http_check", {"url": "https://payments.internal/health"}, {"status_code": 401, "error": "password authentication failed"}, -0.7),
            ],
        ],
        "disk-alert": [
            [
                ("ssh_exec", {"host": "web-3", "cmd": "df -h /var"}, "Filesystem Size Used Avail Use%\n/dev/sda1 50G 49G 1G 98%\nexit code 0", 0.0),
                ("ssh_exec", {"host": "web-3", "cmd": "du -sh /var/log/*"}, "41G /var/log/app\nexit code 0", 0.0),
                ("log_rotate", {"host": "web-3", "path": "/var/log/app"}, {"exit_code": 0, "freed_gb": 38}, 0.4),
                ("check_alert", {"alert": "disk-web-3"}, {"status": "resolved"}, 0.6),
            ],
            [
                ("ssh_exec", {"host": "web-3", "cmd": f"rm -rf {HOME}/cache"}, "rm: cannot remove: Permission denied\nexit code 1", -0.3),
                ("check_alert", {"alert": "disk-web-3"}, {"status": "failed", "detail": "still firing"}, -0.2),
            ],
            [
                ("ssh_exec", {"host": "web-3", "cmd": "df -h"}, "exit code 0", 0.0),
                ("ssh_exec", {"host": "web-3", "cmd": "reboot"}, "Connection timed out\nexit code 255", -0.6),
            ],
        ],
    },
    "data-analysis": {
        "clean-csv": [
            [
                ("load_csv", {"path": f"{HOME}/data/customers.csv", "encoding": "utf-8"}, {"status": "ok", "rows": 10421}, 0.0),
                ("profile_columns", {"columns": ["email", "signup"]}, {"status": "ok", "nulls": 37}, 0.1),
                ("drop_duplicates", {"key": "email"}, {"status": "ok", "dropped": 212}, 0.1),
                ("save_csv", {"path": f"{HOME}/data/customers_clean.csv"}, {"status": "ok"}, 0.8),
            ],
            [
                ("load_csv", {"path": f"{HOME}/data/customers.csv", "encoding": "ascii"}, {"error": f"UnicodeDecodeError: 'ascii' codec can't decode byte 0xc3 in row of {EMAIL}"}, -0.4),
                ("load_csv", {"path": f"{HOME}/data/customers.csv", "encoding": "latin-1"}, {"status": "ok", "rows": 10421}, 0.0),
                ("save_csv", {"path": f"{HOME}/data/customers_clean.csv"}, {"status": "failed", "error": "ValidationError: duplicate emails remain"}, -0.3),
            ],
        ],
        "sales-report": [
            [
                ("sql_query", {"sql": "select region, sum(total) from orders group by 1"}, {"status": "ok", "rows": 12}, 0.1),
                ("pandas_groupby", {"by": "region"}, {"status": "ok"}, 0.1),
                ("plot_chart", {"kind": "bar", "path": f"{HOME}/reports/q4.png"}, {"status": "ok"}, 0.2),
                ("write_report", {"path": f"{HOME}/reports/q4.md", "to": EMAIL}, {"status": "ok"}, 0.6),
            ],
            [
                ("sql_query", {"sql": "select * from order where region = 'EU'"}, {"error": "OperationalError: no such table: order"}, -0.4),
                ("write_report", {"path": f"{HOME}/reports/q4.md"}, {"status": "partial"}, 0.1),
            ],
            [
                ("sql_query", {"sql": "select * from orders"}, {"status": "timeout", "error": "query timed out after 30s"}, -0.5),
            ],
        ],
        "join-datasets": [
            [
                ("load_csv", {"path": f"{HOME}/data/orders.csv"}, {"status": "ok", "rows": 88120}, 0.0),
                ("load_csv", {"path": f"{HOME}/data/customers.csv"}, {"status": "ok", "rows": 10421}, 0.0),
                ("check_keys", {"left": "customer_id", "right": "id"}, {"status": "ok", "unmatched": 3}, 0.2),
                ("merge_frames", {"how": "left"}, {"status": "ok"}, 0.2),
                ("validate_rows", {"expect": 88120}, {"status": "valid"}, 0.6),
            ],
            [
                ("load_csv", {"path": f"{HOME}/data/orders.csv"}, {"status": "ok"}, 0.0),
                ("load_csv", {"path": f"{HOME}/data/customers.csv"}, {"status": "ok"}, 0.0),
                ("merge_frames", {"how": "inner"}, {"error": "MergeError: keys are not unique in right dataset"}, -0.5),
            ],
            [
                ("load_csv", {"path": f"{HOME}/data/orders.csv"}, {"status": "ok"}, 0.0),
                ("merge_frames", {"how": "outer"}, {"status": "ok"}, 0.1),
                ("validate_rows", {"expect": 88120}, {"status": "invalid", "rows": 91877}, -0.4),
            ],
        ],
    },
    "writing": {
        "summarize-document": [
            [
                ("fetch_document", {"path": f"{HOME}/docs/contract.pdf"}, {"status": "ok", "pages": 31}, 0.0),
                ("outline", {"sections": 6}, {"status": "ok"}, 0.1),
                ("draft", {"words": 250}, {"status": "ok", "text": f"Summary for {CUSTOMER} ..."}, 0.2),
                ("check_length", {"max_words": 300}, {"status": "passed", "words": 243}, 0.6),
            ],
            [
                ("fetch_document", {"path": f"{HOME}/docs/contract.pdf"}, {"status": "ok"}, 0.0),
                ("draft", {"words": 250}, {"status": "ok", "text": f"{CUSTOMER} agrees that ..."}, 0.1),
                ("check_length", {"max_words": 300}, {"status": "failed", "words": 612}, -0.4),
            ],
        ],
        "edit-for-tone": [
            [
                ("read_draft", {"path": f"{HOME}/drafts/apology.md"}, {"status": "ok"}, 0.0),
                ("style_check", {"guide": "friendly"}, {"status": "failed", "issues": 7}, 0.0),
                ("rewrite", {"tone": "friendly"}, {"status": "ok"}, 0.2),
                ("style_check", {"guide": "friendly"}, {"status": "passed", "issues": 0}, 0.7),
            ],
            [
                ("rewrite", {"tone": "friendly", "text": f"Dear {CUSTOMER}, ..."}, {"status": "ok"}, 0.1),
                ("style_check", {"guide": "friendly"}, {"status": "failed", "issues": 4}, -0.3),
            ],
            [
                ("read_draft", {"path": f"{HOME}/drafts/apology.md"}, {"status": "ok"}, 0.0),
                ("rewrite", {"tone": "formal"}, {"status": "ok"}, 0.1),
                ("rewrite", {"tone": "friendly"}, {"status": "ok"}, 0.0),
                ("style_check", {"guide": "friendly"}, {"status": "failed", "issues": 2}, -0.1),
            ],
        ],
        "release-notes": [
            [
                ("git_log", {"range": "v1.3..v1.4"}, "47 commits\nexit code 0", 0.0),
                ("group_changes", {"by": "label"}, {"status": "ok", "groups": 4}, 0.1),
                ("draft", {"format": "markdown"}, {"status": "ok"}, 0.2),
                ("spell_check", {"lang": "en"}, {"status": "passed"}, 0.6),
            ],
            [
                ("draft", {"format": "markdown", "author": EMAIL}, {"status": "ok"}, 0.1),
                ("spell_check", {"lang": "en"}, {"status": "failed", "errors": 9}, -0.3),
            ],
        ],
    },
    "support": {
        "refund-request": [
            [
                ("lookup_customer", {"email": EMAIL}, {"status": "ok", "name": CUSTOMER}, 0.0),
                ("lookup_order", {"order": "A-77812"}, {"status": "ok", "days_since": 12}, 0.0),
                ("check_policy", {"policy": "refund-30d"}, {"status": "valid"}, 0.1),
                ("issue_refund", {"order": "A-77812", "amount": 59.9}, {"status": "approved"}, 0.3),
                ("send_reply", {"to": EMAIL, "body": f"Hi {CUSTOMER}, your refund ..."}, {"status": "resolved", "csat": 5}, 0.6),
            ],
            [
                ("lookup_customer", {"email": EMAIL}, {"status": "ok"}, 0.0),
                ("issue_refund", {"order": "A-77812", "amount": 59.9}, {"status": "denied", "error": "refund exceeds policy"}, -0.3),
                ("escalate", {"team": "billing"}, {"status": "escalated"}, -0.2),
            ],
            [
                ("send_reply", {"to": EMAIL, "body": "We are looking into it"}, {"status": "ok"}, 0.0),
                ("check_ticket", {"ticket": "T-5521"}, {"status": "reopened", "csat": 1}, -0.6),
            ],
        ],
        "password-reset": [
            [
                ("lookup_customer", {"email": EMAIL}, {"status": "ok"}, 0.0),
                ("verify_identity", {"method": "email-otp"}, {"status": "valid"}, 0.2),
                ("send_reset_link", {"to": EMAIL}, {"status": "ok"}, 0.2),
                ("close_ticket", {"ticket": "T-9001"}, {"status": "resolved"}, 0.6),
            ],
            [
                ("send_reset_link", {"to": EMAIL}, {"status": "denied", "error": "identity not verified"}, -0.4),
                ("close_ticket", {"ticket": "T-9001"}, {"status": "reopened"}, -0.3),
            ],
        ],
        "bug-report-triage": [
            [
                ("search_kb", {"query": "checkout button greyed out"}, {"status": "ok", "hits": 2}, 0.0),
                ("reproduce_issue", {"browser": "firefox", "account": EMAIL}, {"status": "ok", "reproduced": True}, 0.2),
                ("create_ticket", {"title": "Checkout disabled on Firefox"}, {"http_status": 201}, 0.2),
                ("send_reply", {"to": EMAIL}, {"status": "resolved"}, 0.5),
            ],
            [
                ("create_ticket", {"title": f"Bug from {CUSTOMER}"}, {"http_status": 201}, 0.1),
                ("send_reply", {"to": EMAIL}, {"status": "ok"}, 0.0),
                ("check_ticket", {"ticket": "T-6610"}, {"status": "reopened", "note": "duplicate"}, -0.5),
            ],
            [
                ("search_kb", {"query": "checkout"}, {"status": "empty", "hits": 0}, 0.0),
                ("create_ticket", {"title": "checkout"}, {"http_status": 422, "error": "ValidationError: missing steps"}, -0.4),
            ],
        ],
    },
}  # fmt: skip

#: Attempts per task, cycled: groups of 4 (iterations 1..3) plus some leftovers.
ATTEMPT_COUNTS = (4, 8, 12, 5, 13, 4, 9)
#: Probability of taking the good path, per iteration (the agent improves over rounds).
GOOD_PATH_P = (0.35, 0.5, 0.65)
TASKS_PER_KIND = 2


def records() -> list[TelemetryRecord]:
    rng = random.Random(SEED)
    out: list[TelemetryRecord] = []
    clock = float(START)
    task_no = 0
    for domain, kinds in KINDS.items():
        for kind, paths in kinds.items():
            for n in range(TASKS_PER_KIND):
                attempts = ATTEMPT_COUNTS[task_no % len(ATTEMPT_COUNTS)]
                task_no += 1
                task_id = f"{domain}/{kind}/{n + 1:03d}"
                for a in range(attempts):
                    p_good = GOOD_PATH_P[min(a // 4, len(GOOD_PATH_P) - 1)]
                    if rng.random() < p_good:
                        path = paths[0]
                    else:
                        path = paths[1 + rng.randrange(len(paths) - 1)]
                    clock += 60.0 + rng.randrange(120)
                    for tool, tool_input, output, reward in path:
                        clock += 1.0 + rng.randrange(20) + rng.randrange(1000) / 1000
                        noisy = round(reward + rng.uniform(-0.05, 0.05), 3) if reward else 0.0
                        out.append(
                            TelemetryRecord(
                                task_id=task_id,
                                attempt=str(a + 1),
                                domain=domain,
                                kind=kind,
                                tool=tool,
                                input=tool_input,
                                output=output,
                                reward=noisy,
                                time=round(clock, 3),
                            )
                        )
                clock += 3600.0
    return out


def render() -> str:
    buffer = io.StringIO()
    write_jsonl(records(), buffer)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the file is current")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
        if current != text:
            print(f"{args.out} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {text.count(chr(10))} records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

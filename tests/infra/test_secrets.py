"""checkov's secrets scan over the whole repository: nothing found, every skip justified.

The other offline frameworks run per area (test_terraform.py, test_k8s.py,
test_charts.py, test_dockerfiles.py); this adds the one that reads every file.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".venvs" / "checkov" / "bin" / "checkov"
NOT_OURS = (".venvs", ".tools", "runs", ".git", "node_modules")


def run_secrets_scan(directory: Path) -> dict:
    cmd = [str(CHECKOV), "-d", str(directory), "--framework", "secrets", "-o", "json"]
    cmd += ["--skip-download", "--quiet", "--compact"]
    for skip in NOT_OURS:
        cmd += ["--skip-path", skip]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    report = json.loads(out.stdout)
    return report[0] if isinstance(report, list) else report


def test_no_secret_in_the_repository() -> None:
    report = run_secrets_scan(ROOT)
    failed = [
        (c["check_id"], c["file_path"], c["file_line_range"])
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    assert failed == []


def test_the_scan_bites(tmp_path: Path) -> None:
    (tmp_path / "leak.tf").write_text(
        'provider "aws" {\n  secret_key = "AKIAIOSFODNN7EXAMPLE/wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"\n}\n'
    )
    report = run_secrets_scan(tmp_path)
    assert report["results"]["failed_checks"], "the secrets scan found nothing in a planted key"


def test_every_checkov_skip_says_why() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    bare = []
    for name in tracked:
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".whl", ".gz", ".h5ad"}:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            m = re.search(r"checkov:skip=([A-Z0-9_]+)(:?\s*(.*))", line)
            if m and len(m.group(3).strip()) < 10:
                bare.append(f"{name}:{n}: {line.strip()}")
    assert bare == [], "each checkov skip carries its reason beside it"

"""The fault-injection script end to end (slow: two quick runs, one of them killed in iteration 2 and resumed)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_killed_and_resumed_quick_run_passes_every_check(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_injection.py"), "--kills", "2", "--seed", "3",
                             "--in-iteration", "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "SIGKILL" in summary and ": NO" not in summary

"""The soak's CI version: bench/soak.py for a 2-minute window, with faults closer together than the full run's.

Four workers on one 3-budget study (8 trials each) of the shipped tiny model, on a private PostgreSQL
(tests/pgcluster.py) and a real MLflow server: a random worker SIGKILLed or SIGTERMed every 15-25 s, PostgreSQL
restarted every 25-40 s (3-6 s down), the MLflow server restarted once. The soak audits the stores itself; this test
reads its JSON and checks the headline numbers. The full 20-minute run is a benchmark (bench/results/soak.json).
Without PostgreSQL's server binaries it skips, unless AUTOTUNE_REQUIRE_POSTGRES=1 (set by .ci/run) makes it fail.
"""

import json
import os
import subprocess
import sys

import pytest
from pgcluster import server_bindir
from specs import REPO

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CI_SOAK = ["--minutes", "2", "--seed", "0", "--trials-per-budget", "8", "--kill-every", "15", "25",
           "--db-every", "25", "40", "--db-down", "3", "6", "--videos", "64", "--frames", "64"]
# Zero of each, or the soak found work lost, repeated or left behind.
NOTHING_LOST = ("lost", "duplicated", "stuck", "mislinked", "false_stale", "orphan_runs", "duplicate_runs",
                "missing_runs", "stuck_workers")


def test_a_two_minute_soak_under_kills_and_restarts_loses_nothing(tmp_path):
    if server_bindir() is None:
        if os.environ.get("AUTOTUNE_REQUIRE_POSTGRES") == "1":
            raise AssertionError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        pytest.skip("no PostgreSQL server binaries for a private cluster")
    out = tmp_path / "soak.json"
    command = [sys.executable, str(REPO / "bench" / "soak.py"), *CI_SOAK, "--out", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    print(finished.stdout[-3000:])
    assert out.exists(), finished.stdout[-3000:] + finished.stderr[-3000:]
    result = json.loads(out.read_text())
    counts = result["counts"]
    assert finished.returncode == 0 and result["ok"], result["failures"]
    assert counts["kills"] >= 2 and counts["db_restarts"] >= 1 and counts["mlflow_restarts"] == 1, counts
    assert {key: counts[key] for key in NOTHING_LOST} == dict.fromkeys(NOTHING_LOST, 0)
    # The plan: every budget's 8 trials COMPLETE or PRUNED; each FAIL re-run exactly once; one child run per trial.
    assert all(budget["counted"] >= 8 for budget in result["optuna"]["per_budget"].values()), result["optuna"]
    assert counts["retries"] == counts["failed"]
    assert counts["child_runs"] == counts["complete"] + counts["pruned"] + counts["failed"]
    assert result["export"]["presets"] == 3 and result["export"]["disagreements"] == []
    assert result["workers"]["bad_exit_codes"] == [] and result["workers"]["log_problems"] == []
    # Signalled workers exit 130 (SIGTERM) or -9 (SIGKILL); the rest finished the plan (0).
    assert set(result["workers"]["exit_codes"]) <= {"0", "130", "143", "-9", "137"}, result["workers"]

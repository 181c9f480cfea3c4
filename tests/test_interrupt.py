"""Interrupted runs lose nothing: kill `fusion run` in a subprocess, resume, compare with a clean run.

Each scenario starts the command on a small demo cohort, kills the process with SIGKILL at a
chosen point (after the first outer fold finished, or while volumes are being cached), runs
the same command again with --resume, and checks from run.log that the finished work was
reused and that the predictions and metrics equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _configs import shrink_demo_config

from fusion.datasets import make_demo_cohort

pytestmark = pytest.mark.slow

N_SUBJECTS = 48


def _write_config(root: Path, name: str) -> Path:
    """Shrink the demo config to a run of under a minute; each scenario gets its own cache."""
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["cache_dir"] = f"cache-{name}"
    shrink_demo_config(config, outer_folds=3)
    config["tuning"]["n_trials"] = 4
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _command(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fusion.cli", "run", str(config), "--out", str(out), "--no-report", *extra]


def _run(config: Path, out: Path, *extra: str) -> None:
    result = subprocess.run(_command(config, out, *extra), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def _start_and_kill(config: Path, out: Path, ready, timeout: float = 300.0) -> None:
    """Start the run, wait until ``ready()`` is true, then kill the process with SIGKILL."""
    with open(out.parent / f"{out.name}.stderr", "w") as stderr:
        process = subprocess.Popen(_command(config, out), stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the run ended before the kill point was reached"
            assert time.monotonic() < deadline, "the kill point was not reached in time"
            time.sleep(0.005)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def _cache_counts(log: str) -> tuple[int, int]:
    line = next(line for line in reversed(log.splitlines()) if "cache hits" in line)
    hits = int(line.split("cache hits ")[1].split(",")[0])
    misses = int(line.split("misses ")[1])
    return hits, misses


def _assert_same_results(run_dir: Path, reference: Path) -> None:
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str})
    expected = pd.read_csv(reference / "predictions.csv", dtype={"subject_id": str})
    pd.testing.assert_frame_equal(predictions, expected, check_exact=False, rtol=1e-6, atol=1e-7)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected_metrics = json.loads((reference / "metrics.json").read_text())
    for model, entry in expected_metrics["models"].items():
        for metric, summary in entry["summary"].items():
            assert metrics["models"][model]["summary"][metric]["mean"] == pytest.approx(summary["mean"], nan_ok=True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupt") / "cohort"
    make_demo_cohort(root, task="binary", n_subjects=N_SUBJECTS, volume_shape=(12, 12, 8),
                     n_genes=30, n_signal_genes=5, seed=3)
    return root


@pytest.fixture(scope="module")
def reference(cohort) -> Path:
    out = cohort / "runs" / "reference"
    _run(_write_config(cohort, "reference"), out)
    return out


def test_kill_after_first_fold_reuses_it(cohort, reference):
    config = _write_config(cohort, "after-fold")
    out = cohort / "runs" / "after-fold"
    first_fold = out / "folds" / "repeat0-fold0" / "done.json"

    _start_and_kill(config, out, first_fold.is_file)
    assert not (out / "metrics.json").exists()
    _run(config, out, "--resume")

    log = (out / "run.log").read_text()
    assert "repeat 0 fold 0 already finished; reusing it" in log
    hits, misses = _cache_counts(log)
    assert (hits, misses) == (_n_volumes(cohort), 0)
    assert not list(out.rglob("*.tmp"))
    _assert_same_results(out, reference)


def test_kill_during_volume_caching_keeps_cached_volumes(cohort, reference):
    config = _write_config(cohort, "during-cache")
    out = cohort / "runs" / "during-cache"
    cache = cohort / "cache-during-cache" / "imaging"

    _start_and_kill(config, out, lambda: cache.is_dir() and any(cache.glob("*.npy")))
    cached_before = len(list(cache.glob("*.npy")))
    _run(config, out, "--resume")

    hits, misses = _cache_counts((out / "run.log").read_text())
    assert cached_before >= 1
    assert hits == cached_before
    assert hits + misses == _n_volumes(cohort)
    _assert_same_results(out, reference)


def _n_volumes(root: Path) -> int:
    """Count the subjects with a target and an MRI in the demo cohort: the volumes a run loads."""
    manifest = pd.read_csv(root / "imaging" / "manifest.csv", dtype={"subject_id": str})
    clinical = pd.read_csv(root / "clinical.csv", dtype={"subject_id": str})
    with_target = set(clinical.loc[clinical["response"].notna(), "subject_id"])
    return len(with_target & set(manifest["subject_id"]))

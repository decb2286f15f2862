"""worker.healthcheck: the worker's liveness probe reads the heartbeat file's age."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pda.settings import get_settings
from worker import healthcheck

from .deploy_checks import REPO


@pytest.fixture
def heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "pda-worker.heartbeat"
    monkeypatch.setenv("PDA_HEARTBEAT_FILE", str(path))
    monkeypatch.setenv("PDA_HEARTBEAT_INTERVAL_SECONDS", "10")
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_fresh_heartbeat_is_healthy(heartbeat: Path, capsys: pytest.CaptureFixture) -> None:
    heartbeat.touch()
    assert healthcheck.main([]) == 0
    assert capsys.readouterr().out == ""


def test_stale_heartbeat_is_unhealthy_with_its_age(
    heartbeat: Path, capsys: pytest.CaptureFixture
) -> None:
    heartbeat.touch()
    _age(heartbeat, 90)
    assert healthcheck.main([]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("unhealthy: heartbeat file")
    assert "is 90 s old, more than --max-age 60 s" in out


def test_max_age_option_moves_the_limit(heartbeat: Path) -> None:
    heartbeat.touch()
    _age(heartbeat, 90)
    assert healthcheck.main(["--max-age", "120"]) == 0
    assert healthcheck.main(["--max-age", "80"]) == 1


def test_missing_heartbeat_is_unhealthy(heartbeat: Path, capsys: pytest.CaptureFixture) -> None:
    assert healthcheck.main([]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert f"heartbeat file {heartbeat} does not exist" in out


def test_max_age_within_one_heartbeat_interval_is_a_usage_error(heartbeat: Path) -> None:
    heartbeat.touch()
    with pytest.raises(SystemExit) as exc:
        healthcheck.main(["--max-age", "5"])
    assert exc.value.code == 2


@pytest.mark.parametrize("bad", ["0", "-3", "soon"])
def test_max_age_must_be_a_positive_number(heartbeat: Path, bad: str) -> None:
    with pytest.raises(SystemExit) as exc:
        healthcheck.main(["--max-age", bad])
    assert exc.value.code == 2


def test_heartbeat_problem_uses_the_given_clock(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    path.touch()
    mtime = path.stat().st_mtime
    assert healthcheck.heartbeat_problem(path, 60, now=mtime + 59) is None
    assert "is 61 s old" in healthcheck.heartbeat_problem(path, 60, now=mtime + 61)


def test_probe_command_runs_as_a_module(tmp_path: Path) -> None:
    """The exact probe the manifests run, in a fresh interpreter."""
    path = tmp_path / "hb"
    env = {**os.environ, "PDA_HEARTBEAT_FILE": str(path), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "worker.healthcheck", "--max-age", "60"]
    missing = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 1
    assert "does not exist" in missing.stdout
    path.touch()
    fresh = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert (fresh.returncode, fresh.stdout) == (0, "")


def test_probe_defaults_are_the_settings_defaults() -> None:
    # the probe reads PDA_ variables itself (no pydantic): its defaults must not drift
    from pda.settings import Settings

    fields = Settings.model_fields
    assert healthcheck.DEFAULT_HEARTBEAT_FILE == fields["heartbeat_file"].default
    assert (
        healthcheck.DEFAULT_HEARTBEAT_INTERVAL_SECONDS
        == fields["heartbeat_interval_seconds"].default
    )
    assert healthcheck.heartbeat_settings({}) == (
        fields["heartbeat_file"].default,
        fields["heartbeat_interval_seconds"].default,
    )


def test_probe_reads_the_variables_as_settings_does(tmp_path: Path) -> None:
    env = {"PDA_HEARTBEAT_FILE": str(tmp_path / "hb"), "pda_heartbeat_interval_seconds": "2.5"}
    assert healthcheck.heartbeat_settings(env) == (tmp_path / "hb", 2.5)
    # and Settings agrees on the same environment (names in any case)
    from pda.settings import Settings

    old = {k: os.environ.pop(k) for k in list(os.environ) if k.lower().startswith("pda_")}
    try:
        os.environ.update(env)
        s = Settings()
        assert (s.heartbeat_file, s.heartbeat_interval_seconds) == (tmp_path / "hb", 2.5)
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(old)


@pytest.mark.parametrize("bad", ["soon", "0", "-1"])
def test_invalid_interval_is_unhealthy_in_one_line(
    heartbeat: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, bad: str
) -> None:
    heartbeat.touch()
    monkeypatch.setenv("PDA_HEARTBEAT_INTERVAL_SECONDS", bad)
    assert healthcheck.main([]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("unhealthy: invalid PDA_ settings: PDA_HEARTBEAT_INTERVAL_SECONDS=")


def _imported(cmd: list[str], env: dict[str, str]) -> set[str]:
    """Top-level names of every module ``python -X importtime`` reports for ``cmd``."""
    run = subprocess.run([sys.executable, "-X", "importtime", *cmd], env=env, cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and "|" in line and "self [us]" not in line
    }


def test_probe_imports_only_the_standard_library(tmp_path: Path) -> None:
    """The probe runs under a timeout beside a busy worker: importing pydantic and the
    settings cost 0.6-7 s and timed it out. -X importtime lists every module it loads;
    what the interpreter's own start loads here (site hooks) is subtracted."""
    path = tmp_path / "hb"
    path.touch()
    env = {**os.environ, "PDA_HEARTBEAT_FILE": str(path), "PYTHONPATH": str(REPO)}
    baseline = _imported(["-c", "pass"], env)
    imported = _imported(["-m", "worker.healthcheck", "--max-age", "60"], env)
    assert "worker" in imported  # the parse found the probe itself
    assert imported - baseline - set(sys.stdlib_module_names) == {"worker"}

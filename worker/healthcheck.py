"""Liveness check for a worker, a process with no HTTP port.

``python -m worker.healthcheck [--max-age SECONDS]`` exits 0 when the heartbeat file
(``PDA_HEARTBEAT_FILE``) was modified within the last ``--max-age`` seconds (default 60),
else prints a one-line reason and exits 1. The worker touches that file every
``PDA_HEARTBEAT_INTERVAL_SECONDS``; this is the Kubernetes exec liveness probe and the
Docker HEALTHCHECK of the worker image.

It runs beside a busy worker every few seconds, under a probe timeout, so it imports the
standard library only: it reads the two settings from the environment itself, the way
:class:`pda.settings.Settings` does (prefix ``PDA_``, names in any case), instead of
importing pydantic and the settings module (0.6-1.4 s quiet, up to 7 s on a loaded
machine, which made the probe time out beside a healthy worker). tests/deploy checks that
the defaults here are the Settings defaults and that the probe imports nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

DEFAULT_MAX_AGE_SECONDS = 60.0
#: the defaults of Settings.heartbeat_file and Settings.heartbeat_interval_seconds
DEFAULT_HEARTBEAT_FILE = Path("/tmp/pda-worker.heartbeat")
DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 10.0


class SettingsError(ValueError):
    """A PDA_ variable the probe reads has a value Settings would reject."""


def _env(environ: Mapping[str, str], name: str) -> str | None:
    # pydantic-settings matches environment names case-insensitively by default
    wanted = f"pda_{name}"
    for key, value in environ.items():
        if key.lower() == wanted:
            return value
    return None


def heartbeat_settings(environ: Mapping[str, str] | None = None) -> tuple[Path, float]:
    """(heartbeat file, heartbeat interval in seconds) from ``PDA_`` variables."""
    environ = os.environ if environ is None else environ
    path = _env(environ, "heartbeat_file")
    interval_text = _env(environ, "heartbeat_interval_seconds")
    interval = DEFAULT_HEARTBEAT_INTERVAL_SECONDS
    if interval_text is not None:
        try:
            interval = float(interval_text)
        except ValueError:
            raise SettingsError(
                f"PDA_HEARTBEAT_INTERVAL_SECONDS={interval_text!r} is not a number") from None
        if not interval > 0:
            raise SettingsError(
                f"PDA_HEARTBEAT_INTERVAL_SECONDS={interval_text!r} must be more than 0")
    return (DEFAULT_HEARTBEAT_FILE if path is None else Path(path)), interval


def heartbeat_problem(path: Path, max_age: float, now: float | None = None) -> str | None:
    """Return why the heartbeat at ``path`` is not fresh, or None when it is."""
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError:
        return f"heartbeat file {path} does not exist (worker not started yet, or dead)"
    except OSError as exc:
        return f"cannot read heartbeat file {path}: {exc.strerror}"
    age = (time.time() if now is None else now) - modified
    if age > max_age:
        return f"heartbeat file {path} is {age:.0f} s old, more than --max-age {max_age:g} s"
    return None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.healthcheck",
        description="Exit 0 if the worker's heartbeat file is fresh, else 1.",
    )
    parser.add_argument(
        "--max-age",
        type=_positive_seconds,
        default=DEFAULT_MAX_AGE_SECONDS,
        metavar="SECONDS",
        help=f"oldest heartbeat that counts as alive (default {DEFAULT_MAX_AGE_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    try:
        path, interval = heartbeat_settings()
    except SettingsError as exc:
        print(f"unhealthy: invalid PDA_ settings: {exc}")
        return 1
    if args.max_age <= interval:
        parser.error(
            f"--max-age {args.max_age:g} must exceed PDA_HEARTBEAT_INTERVAL_SECONDS "
            f"({interval:g}), or a live worker looks dead"
        )
    problem = heartbeat_problem(path, args.max_age)
    if problem is not None:
        print(f"unhealthy: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

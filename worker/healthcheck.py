"""Liveness check for a worker, a process with no HTTP port.

``python -m worker.healthcheck [--max-age SECONDS]`` exits 0 when the heartbeat file
(``PDA_HEARTBEAT_FILE``) was modified within the last ``--max-age`` seconds (default 60),
else prints a one-line reason and exits 1. The worker touches that file every
``PDA_HEARTBEAT_INTERVAL_SECONDS``; this is the Kubernetes exec liveness probe and the
Docker HEALTHCHECK of the worker image. It reads the file's age only, so it stays cheap
enough to run every few seconds beside a busy worker.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from pda.settings import get_settings

DEFAULT_MAX_AGE_SECONDS = 60.0


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
        settings = get_settings()
    except ValidationError as exc:
        print(f"unhealthy: invalid PDA_ settings: {exc.errors()[0]['msg']}")
        return 1
    if args.max_age <= settings.heartbeat_interval_seconds:
        parser.error(
            f"--max-age {args.max_age:g} must exceed PDA_HEARTBEAT_INTERVAL_SECONDS "
            f"({settings.heartbeat_interval_seconds:g}), or a live worker looks dead"
        )
    problem = heartbeat_problem(settings.heartbeat_file, args.max_age)
    if problem is not None:
        print(f"unhealthy: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

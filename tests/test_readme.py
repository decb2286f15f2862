"""The README is the front door: it must stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from pda.cli import build_parser
from pda.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    missing = [f"PDA_{n.upper()}" for n in Settings.model_fields
               if f"PDA_{n.upper()}" not in README]
    assert not missing, f"README's configuration table lacks {missing}"


def test_the_readme_names_no_setting_that_does_not_exist():
    known = {f"PDA_{n.upper()}" for n in Settings.model_fields} | {"PDA_"}
    named = set(re.findall(r"PDA_[A-Z_]+", README))
    assert named <= known, named - known


def test_the_quickstart_commands_exist():
    assert "pip install -e . && pda serve" in README
    assert "bash .ci/run" in README and (ROOT / ".ci/run").is_file()
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    for cmd in re.findall(r"^pda (\w[\w-]*)", README, flags=re.M):
        assert cmd in commands, cmd
    assert (ROOT / "examples/chelsea.png").is_file()

"""The README is the front door: it must stay true to the code."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from pda.catalog import builtin_metadata
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


def test_what_the_readme_examples_write_is_ignored_by_git():
    written = set(re.findall(r"-o (\S+) ", README)) | set(re.findall(r"tee (\S+)", README))
    written |= {m.rstrip("/") + "/x" for m in re.findall(r"^pda explain .*--out (\S+)", README,
                                                          flags=re.M)}
    assert {"job.json", "overlay.png", "relevance.json", "out/x"} <= written
    for path in written:
        proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert proc.returncode == 0, f"{path} (written by a README example) is not ignored"


def test_every_cli_example_in_the_readme_parses_and_names_files_that_exist():
    parser = build_parser()
    for line in re.findall(r"^(pda [^#\n]+)", README, flags=re.M):
        argv = shlex.split(line)[1:]
        if argv[0] in ("serve", "worker", "bench"):
            continue
        args = parser.parse_args(argv)
        image = getattr(args, "image", None)
        assert image is None or (ROOT / image).is_file(), line
        if getattr(args, "layer", None) not in (None, "output", "logits"):
            names = [x["name"] for x in builtin_metadata("efficientnet_lite0")["layers"]]
            assert args.layer in names, line

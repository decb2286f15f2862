"""The README is the front door: it must stay true to the code."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import zipfile
from pathlib import Path

import pytest

from pda.catalog import builtin_metadata
from pda.cli import build_parser
from pda.settings import Settings
from tests.support.waiting import wait_until

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
        for image in getattr(args, "image", None) or []:  # files, or folders of them
            assert (ROOT / image).exists(), line
        if getattr(args, "layer", None) not in (None, "output", "logits"):
            names = [x["name"] for x in builtin_metadata("efficientnet_lite0")["layers"]]
            assert args.layer in names, line


# --------------------------------------------------------------------------------------
# Every shell and Python example runs (issue 19), with the quick settings its marker names:
# an HTML comment right above the block, unseen on the rendered page:
#   <!-- readme-test: skip: WHY (and where it is run instead) -->
#   <!-- readme-test: server; quick: ARGS -->   (a `pda serve` at the README's address)
#   <!-- readme-test: quick: pda explain ARGS -->   (ARGS appended to each such line)
#   <!-- readme-test: quick: pda.explain K=V, ... -->   (keywords for every pda.explain call)

BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>.*?) -->\n)?```(?P<lang>bash|python)\n"
                   r"(?P<body>.*?)\n```", re.S)
README_URL = "http://127.0.0.1:8000"


def readme_blocks() -> list[tuple[str, str, str]]:
    return [(m["marker"] or "", m["lang"], m["body"]) for m in BLOCK.finditer(README)]


def quick(marker: str, command: str) -> str:
    """The arguments the marker adds to lines of ``command`` (``pda explain``, ...)."""
    for part in marker.split(";"):
        part = part.strip()
        if part.startswith(f"quick: {command} "):
            return part[len(f"quick: {command} "):]
    return ""


def test_every_readme_example_is_run_or_says_why_not():
    blocks = readme_blocks()
    assert len(blocks) >= 6
    for marker, _lang, body in blocks:
        if marker.startswith("skip"):
            assert len(marker) > len("skip: ") + 20, f"a skip must say why: {body[:60]}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A folder like the repository root for the examples' outputs, and their env."""
    import os

    root = tmp_path_factory.mktemp("readme")
    (root / "examples").symlink_to(ROOT / "examples")
    (root / "pda").symlink_to(ROOT / "pda")  # the shipped photos, pda/data/evaluation
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDA_")}
    env.update(PYTHONPATH=str(ROOT), PDA_BACKEND_CACHE_DIR=str(root / "cache"),
               PDA_LOG_LEVEL="warning")
    return root, env


def bash(script: str, cwd: Path, env: dict[str, str], timeout: float = 900
         ) -> subprocess.CompletedProcess:
    import sys

    # `pda` is this checkout's CLI, whatever an installed script points at
    prelude = f'set -euo pipefail\npda() {{ "{sys.executable}" -m pda.cli "$@"; }}\n'
    return subprocess.run(["bash", "-c", prelude + script], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


def command_lines(body: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in body.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.slow
def test_the_readme_command_line_examples_run(sandbox):
    root, env = sandbox
    ran = 0
    for marker, lang, body in readme_blocks():
        if lang != "bash" or marker.startswith("skip") or "server" in marker:
            continue
        for line in command_lines(body):
            cmd = line.split()[:2]
            extra = quick(marker, " ".join(cmd))
            proc = bash(f"{line} {extra}", root, env)
            assert proc.returncode == 0, f"{line} {extra}\n{proc.stderr[-2000:]}"
            ran += 1
            if cmd == ["pda", "explain"]:
                out = root / line.split("--out ")[1].split()[0]
                if (out / "summary.json").is_file():  # many images: a folder per image
                    summary = json.loads((out / "summary.json").read_text())
                    assert summary["counts"]["finished"] == summary["counts"]["total"] > 1
                    continue
                assert json.loads((out / "result.json").read_text())["explanations"]
    assert ran >= 6


@pytest.mark.slow
def test_the_readme_curl_session_runs_against_pda_serve(sandbox):
    import socket
    import sys

    root, env = sandbox
    blocks = [b for b in readme_blocks() if "server" in b[0]]
    assert len(blocks) == 2  # the single job's session, then the batch's
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "pda.cli", "serve", "--port", str(port)],
                              cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        # embedded mode: the worker loads the model first
        wait_until("pda serve to answer /livez", lambda: bash(
            f"curl -sf {url}/livez >/dev/null", root, env).returncode == 0, timeout=120,
            every=0.5)
        for marker, _, body in blocks:
            extra = quick(marker, "").strip() or marker.split("quick: ", 1)[1]
            # the quick settings once per request (before its first image)
            script = "\n".join(line.replace("-F image=@", f"{extra} -F image=@", 1)
                                for line in body.replace(README_URL, url).splitlines())
            proc = bash(script, root, env, timeout=600)
            assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert (root / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((root / "relevance.json").read_text())
    assert len(doc["explanations"][0]["relevance"]) == 224
    with zipfile.ZipFile(root / "results.zip") as z:
        summary = json.loads(z.read("summary.json"))
        assert "contact-sheet.png" in z.namelist()
    assert [(i["file"], i["status"]) for i in summary["items"]] == [
        ("chelsea.png", "finished"), ("lion.jpg", "finished")]


@pytest.mark.slow
def test_the_readme_python_example_runs(sandbox):
    import sys

    root, env = sandbox
    (marker, _, body), = [b for b in readme_blocks() if b[1] == "python"]
    kwargs = marker.split("quick: pda.explain ", 1)[1]
    program = ("import functools\nimport pda\nimport pda.library\n"
               f"pda.explain = functools.partial(pda.library.explain, {kwargs})\n" + body)
    proc = subprocess.run([sys.executable, "-c", program], cwd=root, env=env, text=True,
                          capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = body.splitlines()[[i for i, x in enumerate(body.splitlines())
                               if x.startswith("print(")][0]]
    promised = first.split("# ", 1)[1].strip()  # what the README says it prints
    assert promised in proc.stdout, proc.stdout
    assert (root / "out" / "result.json").is_file()


# --------------------------------------------------------------------------------------
# Figures: each measured figure the README quotes is one docs/ holds; counts are computed.

FIGURE = re.compile(r"(?<![\w.-])(\d+(?:[.,]\d+)*(?:e-\d+)?(?:x| ?(?:min|s|bits|minutes))"
                    r"|\d+ h \d+ min)(?![\w/])")


def test_every_figure_the_readme_quotes_is_in_docs():
    docs = " ".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    docs = re.sub(r"\s+", " ", docs)
    prose = re.sub(r"\s+", " ", README)  # code comments quote figures too
    prose = prose.replace("`PDA_RESULT_TTL_SECONDS` (24 h)", "")  # a setting, checked below
    quoted = set(FIGURE.findall(prose))
    assert {"2.9x", "46 min", "2 h 14 min", "9.5 s", "7.0 s"} <= quoted
    missing = sorted(f for f in quoted if f not in docs)
    assert not missing, f"README quotes figures docs/ does not hold: {missing}"
    assert Settings.model_fields["result_ttl_seconds"].default == 24 * 3600


def test_the_readme_pass_counts_are_the_planners():
    from pda.defaults import PAPER
    from pda.engine.faithfulness import passes_needed
    from pda.params import ExplainParams, plan

    size = (224, 224)
    default, paper = plan(ExplainParams(), size), plan(ExplainParams(**PAPER), size)
    assert f"{default['sweep_passes']:,} sweep passes" in README
    assert f"{default['forward_passes']:,} forward passes, the job's" in README
    assert f"{paper['sweep_passes']:,} sweep passes, {paper['forward_passes']:,} forward" in README
    assert f"plus {passes_needed(224 * 224, 3)}\nfor the three targets" in README

"""Fuzzing: Schemathesis drives the live API from its own OpenAPI document (no 5xx, no
traceback in the log), and mutated image files never get past the decoder's checks."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pda.errors import InvalidImageError
from pda.images import open_image
from tests.support.paths import CAT

KEY = "fuzz-key"
#: per operation and phase; about 500 requests per run, a few seconds each
MAX_EXAMPLES = 25


def schemathesis(url: str, *extra: str, config: Path | None = None) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "schemathesis.cli"]
    if config:
        cmd += ["--config-file", str(config)]
    # one worker: CPython 3.11's ast.parse is not thread-safe, and Hypothesis calls it
    cmd += ["run", f"{url}/openapi.json", "--checks", "not_a_server_error",
            "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--workers", "1",
            "--request-timeout", "30", "-H", f"X-API-Key: {KEY}", "--no-shrink",
            # 503 there means "not ready" (no worker runs here), which is its contract
            "--exclude-path", "/readyz",
            # a job's event stream lasts until the job ends, and no job ends here (no
            # worker): every request would time out; tests/service/test_events.py has it
            "--exclude-path-regex", "/events$", *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    return run.returncode, run.stdout + run.stderr


@pytest.mark.slow
def test_fuzzing_the_openapi_schema_finds_no_server_error(settings, start_server, tmp_path):
    pytest.importorskip("schemathesis")
    server = start_server(settings, PDA_API_KEYS=KEY, PDA_RATE_LIMIT_PER_MINUTE="1000000")
    # one real job, so that the job routes are exercised past "unknown job" too
    r = server.http.post("/v1/explanations", headers={"X-API-Key": KEY},
                         files={"image": ("cat.png", CAT.read_bytes(), "image/png")},
                         data={"window": "56", "stride": "56"})
    assert r.status_code == 202, r.text
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.job_id" = "{r.json()["id"]}"\n')
    generated = 0
    for cfg in (None, config):  # random job ids, then the real one
        code, out = schemathesis(server.url, config=cfg)
        assert code == 0, out[-6000:]
        found = re.search(r"(\d+) generated", out)
        assert found, out[-2000:]
        generated += int(found.group(1))
    print(f"\nschemathesis: {generated} requests, no server error")
    assert generated >= 300
    log = (tmp_path / "server0.log").read_text()
    assert "Traceback" not in log and "unhandled error" not in log, log[-4000:]
    assert server.http.get("/livez").status_code == 200


def seeds() -> dict[str, bytes]:
    img = Image.open(io.BytesIO(CAT.read_bytes())).convert("RGB").resize((48, 32))
    out = {}
    for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 90}), ("GIF", {}), ("WEBP", {}),
                    ("TIFF", {"compression": "tiff_deflate"}), ("BMP", {})):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out[fmt] = buf.getvalue()
    return out


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    a = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # flip a few bytes (headers live at the start: favour it)
        for _ in range(int(rng.integers(1, 8))):
            i = int(min(rng.exponential(64), len(a) - 1))
            a[i] = int(rng.integers(256))
    elif kind == 1:  # truncate
        a = a[: int(rng.integers(1, len(a)))]
    elif kind == 2:  # duplicate a slice (repeated chunks, frames, markers)
        i, j = sorted(int(x) for x in rng.integers(0, len(a), 2))
        a = a[:j] + a[i:j] * int(rng.integers(1, 4)) + a[j:]
    else:  # write a large 32-bit number somewhere in the first 64 bytes (sizes, lengths)
        i = int(rng.integers(0, min(60, len(a) - 4)))
        a[i:i + 4] = int(rng.integers(2**16, 2**32)).to_bytes(4, "big")
    return bytes(a)


@pytest.mark.filterwarnings("ignore")  # Pillow warns about the damage it tolerates
def test_mutated_image_files_are_decoded_or_refused_cleanly():
    rng = np.random.default_rng(2017)
    outcomes = {"decoded": 0, "refused": 0}
    for data in seeds().values():
        for _ in range(150):
            try:
                img = open_image(mutate(data, rng), max_pixels=4_000_000)
            except InvalidImageError as e:  # ImageTooLargeError is one too
                assert "\n" not in str(e) and e.field == "image"
                outcomes["refused"] += 1
            else:
                assert img.mode == "RGB" and img.width * img.height <= 4_000_000
                outcomes["decoded"] += 1
    assert outcomes["refused"] > 100 and sum(outcomes.values()) == 900

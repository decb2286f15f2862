"""``pda serve`` with no PDA_REDIS_URL, as the README's Quickstart runs it: a Redis of its
own with append-only persistence in the data directory and a worker process beside the
API. What it keeps survives a SIGKILL of ``pda serve``; Ctrl-C with a job running exits
cleanly; the job resumes at the next start."""

from __future__ import annotations

import io
import signal
import subprocess

import pytest
from PIL import Image

from tests.support.servers import worker_loaded
from tests.support.service import BIG, SMALL, make_settings, post, wait_for
from tests.support.waiting import Poller, wait_until

pytestmark = pytest.mark.slow
#: one deployment's settings across its restarts (the queue name is part of them)
SETTINGS = make_settings(redis_url=None)
#: the default window with 2 samples and no scores: 625 windows x 2 + 1 = 1,251 passes, in
#: ten checkpoint segments, so a kill midway leaves some of the sweep kept
LONG = {"window": "32", "stride": "8", "samples": "2", "sampler": "marginal",
        "faithfulness": "false", "seed": "5"}


def embedded(start_server, data, settings=None, **env):
    """``pda serve`` on ``data``; ``settings`` (the queue's name) kept across restarts."""
    server = start_server(settings or SETTINGS, PDA_DATA_DIR=str(data),
                          PDA_RATE_LIMIT_PER_MINUTE="100000", **env)
    wait_until("the embedded worker to load its model", lambda: worker_loaded(server.http),
               timeout=180, every=0.3)
    return server


def test_embedded_mode_keeps_results_and_resumes_jobs_across_a_sigkill(start_server,
                                                                       tmp_path):
    data = tmp_path / "data"
    first = embedded(start_server, data)
    ready = first.http.get("/readyz").json()
    assert ready["mode"] == "embedded" and ready["checks"] == {"redis": "ok", "workers": 1}
    assert (data / "redis" / "appendonlydir").is_dir()  # append-only persistence, here
    done = wait_for(first.http, post(first, SMALL)["id"], timeout=180)
    assert done["status"] == "finished", done
    long = post(first, LONG)
    assert long["progress"]["total"] == 1251
    shown = Poller(first.http, long["id"], every=0.1)
    wait_until("the long job to pass 40 %", lambda: shown.seen and shown.seen[-1] >= 500,
               timeout=300, every=0.2)
    first.proc.send_signal(signal.SIGKILL)  # pda serve dies; the kernel stops its children
    first.proc.wait(10)
    seen_before = shown.stop()

    second = embedded(start_server, data)  # the same data directory
    # the result that finished before the kill is served as it was
    again = second.http.get(f"/v1/explanations/{done['id']}").json()
    assert again["status"] == "finished" and again["finished_at"] == done["finished_at"]
    png = second.http.get(f"/v1/explanations/{done['id']}/overlay.png")
    assert png.status_code == 200
    Image.open(io.BytesIO(png.content)).verify()
    # the running job resumes from its checkpoints, its count never lower than it was
    after = Poller(second.http, long["id"], every=0.1)
    job = wait_for(second.http, long["id"], timeout=300)
    seen_after = after.stop()
    assert job["status"] == "finished", job
    # the kernel's SIGTERM let the worker give the job back itself ("shutdown") unless its
    # Redis went first; then the next start requeued it ("worker_lost")
    assert job["attempt"] == 2, job
    assert job["previous_attempt"]["ended"] in ("shutdown", "worker_lost"), job
    assert job["previous_attempt"]["resumed_from"] > 1  # checkpoints kept, not a restart
    shown_all = seen_before + seen_after
    assert shown_all == sorted(shown_all), shown_all
    assert job["progress"] == {"done": 1251, "total": 1251, "fraction": 1.0}


def test_ctrl_c_with_a_job_running_exits_cleanly_and_the_job_resumes(start_server,
                                                                     tmp_path):
    data = tmp_path / "data"
    server = embedded(start_server, data)
    job = post(server, BIG)
    wait_until("the job to sweep", lambda: server.http.get(
        f"/v1/explanations/{job['id']}").json()["phase"] in ("sweeping", "scoring"),
        timeout=180, every=0.1)
    server.proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends it
    try:
        code = server.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pda serve still runs 60 s after Ctrl-C: {server.log.read_text()[-2000:]}")
    log = server.log.read_text()
    assert code == 130, log[-2000:]
    assert "Traceback" not in log and "terminate called" not in log, log[-2000:]
    assert not (data / "children.pids").exists()  # its Redis and worker are gone too
    # the next start runs the job to the end (it was given back to the queue's front)
    server = embedded(start_server, data)
    end = wait_for(server.http, job["id"], timeout=180)
    assert end["status"] == "finished" and end["previous_attempt"]["ended"] == "shutdown", end


def test_a_second_pda_serve_on_the_same_data_is_refused_in_one_line(start_server, tmp_path):
    data = tmp_path / "data"
    embedded(start_server, data)
    with pytest.raises(RuntimeError, match="another pda serve .* is using"):
        start_server(make_settings(redis_url=None), PDA_DATA_DIR=str(data))

"""The one table of problem documents (pda.problems): every entry makes a valid RFC 9457
document, unknown exceptions become a 500 that leaks nothing, and a failed job stores
the same documents the API answers with."""

from __future__ import annotations

import json

import pytest

from pda import errors as E
from pda.problems import TABLE, headers_of, job_problem, status_of, to_problem


def _instance(cls: type[BaseException]) -> BaseException:
    if cls is E.UploadTooLargeError:
        return cls(1234)
    if cls is E.HTTPStatusError:
        return cls(405, "method not allowed here")
    return cls(f"something about {cls.__name__}")


@pytest.mark.parametrize("cls", list(TABLE), ids=lambda c: c.__name__)
def test_every_table_entry_yields_a_valid_problem(cls):
    exc = _instance(cls)
    body = to_problem(exc, instance="/v1/x")
    assert body["type"] == "about:blank" or body["type"].startswith("/problems/")
    assert isinstance(body["title"], str) and body["title"]
    assert 400 <= body["status"] <= 599 and body["status"] == status_of(exc)
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["instance"] == "/v1/x"
    json.dumps(body)  # a JSON document
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers_of(exc).items())


def test_the_type_uris_titles_and_statuses_clients_see():
    cases = {
        E.UploadTooLargeError(10): ("/problems/upload-too-large", "Upload too large", 413),
        E.ImageTooLargeError("x"): ("/problems/image-too-large", "Image too large", 413),
        E.InvalidImageError("x"): ("/problems/unsupported-image", "Not a supported image", 415),
        E.ModelNotInstalledError("x"): ("/problems/model-not-installed",
                                        "Model not installed", 422),
        E.QueueFullError("x"): ("/problems/queue-full", "Queue full", 503),
        E.TooManyQueuedError("x"): ("/problems/too-many-queued-jobs",
                                    "Too many queued jobs", 429),
        E.IdempotencyConflictError("x"): ("/problems/idempotency", "Idempotency-Key reused",
                                          409),
        E.NoResultsError("x"): ("/problems/job-failed", "Job failed", 409),
        E.JobFailedError("x"): ("/problems/job-failed", "Job failed", 500),
        E.JobAbandonedError("x"): ("/problems/job-abandoned", "Job abandoned", 500),
        E.ResultsExpiredError("x"): ("/problems/gone", "Results expired", 410),
        E.InternalError("x"): ("about:blank", "Internal error", 500),
    }
    for exc, want in cases.items():
        body = to_problem(exc)
        assert (body["type"], body["title"], body["status"]) == want, type(exc).__name__


def test_an_unknown_exception_is_a_500_job_failed_without_its_message_or_traceback():
    try:
        raise KeyError("/secret/path/weights.pth")
    except KeyError as exc:
        body = to_problem(exc)
    assert body == {"type": "/problems/job-failed", "title": "Job failed", "status": 500,
                    "detail": "an unexpected KeyError occurred"}
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    assert job_problem(RuntimeError("boom"))["status"] == 500


def test_subclasses_take_their_nearest_listed_base():
    class Odd(E.UnknownModelError):
        pass

    assert to_problem(Odd("no such model"))["type"] == "/problems/unknown-model"
    # a PDAError nobody listed is an invalid parameter, named by its field
    body = to_problem(E.UnknownLayerError("no layer 'fc9'"))
    assert body["type"] == "/problems/invalid-parameter" and body["status"] == 422
    assert body["detail"] == "layer: no layer 'fc9'"
    assert body["errors"] == [{"field": "layer", "message": "no layer 'fc9'"}]


def test_members_the_kinds_add():
    assert to_problem(E.ModelLoadError("bad file"))["field"] == "model"
    small = to_problem(E.ImageTooSmallError("too small"))
    assert small["detail"] == "too small"
    assert small["errors"] == [{"field": "image", "message": "too small"}]
    big = to_problem(E.JobTooLargeError("needs 9 passes", errors=[{"field": "samples",
                                                                    "message": "many"}],
                                        forward_passes=9))
    assert big["detail"] == "needs 9 passes" and big["forward_passes"] == 9
    assert big["errors"] == [{"field": "samples", "message": "many"}]


def test_headers_come_from_the_table_and_the_exception():
    assert headers_of(E.QueueFullError("x")) == {"Retry-After": "10"}
    assert headers_of(E.IdempotencyConflictError("x")) == {}
    assert headers_of(E.UnauthorizedError("x")) == {"WWW-Authenticate": "Bearer"}
    assert headers_of(E.RateLimitedError("x", headers={"Retry-After": "7"})) == {
        "Retry-After": "7"}
    assert headers_of(ValueError("x")) == {}


def test_a_failed_job_stores_four_members():
    missing = job_problem(E.ModelNotInstalledError.of("vgg16", "pip install it"))
    assert missing == {"type": "/problems/model-not-installed", "title": "Model not installed",
                       "status": 422, "detail": "model 'vgg16' is known but its weights are "
                       "not installed: pip install it"}
    invalid = job_problem(E.ModelLoadError("corrupt"))
    assert invalid == {"type": "/problems/invalid-job", "title": "The job cannot be run",
                       "status": 422, "detail": "corrupt"}


def test_a_workers_problem_is_raised_again_as_it_is():
    doc = {"type": "/problems/prediction-failed", "title": "Prediction failed", "status": 500,
           "detail": "RuntimeError: x"}
    exc = E.RemoteProblem(doc)
    assert status_of(exc) == 500 and to_problem(exc) == doc
    assert to_problem(exc, instance="/v1/predictions")["instance"] == "/v1/predictions"

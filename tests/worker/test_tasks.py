"""The worker's job functions are named in one table (pda.jobs.queue.TASKS), and each name
imports: a rename that misses the table fails here, not in a queue at run time."""

from __future__ import annotations

import importlib
import inspect

import pytest

from pda.jobs.queue import TASKS


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_every_task_path_imports_to_a_function(kind):
    module, _, name = TASKS[kind].rpartition(".")
    fn = getattr(importlib.import_module(module), name)
    assert inspect.isfunction(fn), TASKS[kind]


def test_the_table_names_what_is_enqueued():
    # every enqueue in pda/jobs names a TASKS entry, never a path of its own
    import pda.jobs

    root = pda.jobs.__path__[0]
    for path in sorted(__import__("pathlib").Path(root).glob("*.py")):
        text = path.read_text()
        assert "\"worker." not in text or path.name == "queue.py", path.name


@pytest.mark.parametrize("name", ["run_chunk", "run_merge"])
def test_paths_of_an_earlier_version_still_import(name):
    # messages enqueued before the rename (worker.chunked.*) still find their function
    from worker import chunked, tasks

    assert getattr(chunked, name) is getattr(tasks, name)

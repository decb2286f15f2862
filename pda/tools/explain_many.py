"""``pda explain DIR_OR_FILES... --out DIR``: many images, one progress bar, one summary.

More than one image, or a folder (its image files, sorted by name, not its subfolders),
is a batch: :func:`pda.library.explain_many` explains the images one after another with
the model loaded once, under one progress bar (forward passes done / total over all
items, with the ETA); each item's files (``result.json``, ``relevance.npy``,
``input.png``, the overlays) go in a folder of its own, ``DIR/0000-cat/``
(:func:`pda.batch_files.item_folder`: the item's index in the sorted input, then the
file's name), and ``DIR/summary.json`` and ``DIR/contact-sheet.png`` sum them up.

An item's folder is written whole or not at all (into a hidden folder, then renamed), so
an interrupted run leaves only complete items; running the same command again skips
every item whose ``result.json`` is already in ``DIR`` and explains the rest (the same
inputs give the same folder names; adding files to a folder can renumber the later
ones). A failed item (a corrupt or too-small image) is one line on stderr and its problem
document in ``summary.json``; the others still run, and the command exits with status 1
when any item failed (2 stays a mistake on the command line, found before any work).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pda.batch_files import (
    CONTACT_SHEET,
    SUMMARY,
    contact_sheet,
    item_folder,
    summary_document,
    summary_entry,
    tile_caption,
)
from pda.document import overlay_name
from pda.errors import InvalidParameterError

#: the files a folder's listing takes as images (a file named on the line is taken as is)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
RESULT = "result.json"
EXIT_FAILED_ITEMS = 1


def is_batch(paths: list[str]) -> bool:
    """More than one path, or a folder: the many-image form."""
    return len(paths) > 1 or any(Path(p).is_dir() for p in paths)


def gather(paths: list[str]) -> list[Path]:
    """The images of ``paths`` in order: a file as given, a folder's image files sorted by
    name (hidden ones left out). A path that does not exist, or a folder with no image
    in it, is a mistake on the command line (nothing has run yet)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file()
                           and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
            if not found:
                raise InvalidParameterError(f"{p} has no image files (allowed: "
                                            f"{', '.join(sorted(IMAGE_SUFFIXES))})",
                                            field="image")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise InvalidParameterError(f"{p}: no such file or folder", field="image")
    return out


def run(paths: list[str], out: Path, *, scale: str, options: dict[str, Any],
        summary_params: dict[str, Any], progress: Any,
        say: Callable[[str], None]) -> int:
    """Explain the images of ``paths`` into ``out``; the exit status (0, or 1 when an
    item failed). ``options`` are :func:`pda.library.explain_many`'s keyword arguments,
    ``summary_params`` what ``summary.json`` records as the batch's parameters, ``progress``
    the CLI's bar (called with passes; ``.note(text)`` prints above it), ``say`` a line on
    stderr."""
    from pda.library import explain_many

    images = gather(paths)
    folders = [item_folder(i, p.name) for i, p in enumerate(images)]
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for i, (path, folder) in enumerate(zip(images, folders, strict=True)):
        done = out / folder / RESULT
        if done.is_file():  # an earlier run's item: its document as written
            entries[i] = summary_entry(index=i, filename=str(path), status="finished",
                                       document=json.loads(done.read_bytes()), error=None,
                                       seconds=None)
        else:
            todo.append(i)
    if entries:
        say(f"pda: {len(entries)} of {len(images)} images already in {out}/ (skipped)")
    warned = False
    items = explain_many([images[i] for i in todo], progress=progress, announce=say,
                         **options) if todo else iter(())
    for item in items:
        i = todo[item.index]
        name = str(images[i])
        if item.result is None:
            err = item.error or {}
            progress.note(f"pda: {name}: failed: {err.get('title')}: {err.get('detail')}")
            entries[i] = summary_entry(index=i, filename=name, status="failed",
                                       document=None, error=item.error, seconds=item.seconds)
            continue
        _write_folder(out, folders[i], item.result.files(scale))
        doc = item.result.document
        if not warned and (warning := doc["coverage"].get("warning")):
            progress.note(f"pda: warning: {warning}")
            warned = True
        entries[i] = summary_entry(index=i, filename=name, status="finished", document=doc,
                                   error=None, seconds=item.seconds)
    progress.close()
    summary = summary_document(entries.values(), summary_params)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    (out / CONTACT_SHEET).write_bytes(contact_sheet(
        [(tile_caption(e), _overlay_reader(out, e)) for e in summary["items"]]))
    counts = summary["counts"]
    failed = counts["failed"]
    say(f"pda: {counts['finished']} of {counts['total']} images explained"
        f"{f' ({len(images) - len(todo)} from an earlier run)' if len(todo) < len(images) else ''}"
        f"{f', {failed} failed' if failed else ''}; wrote {out}/ ({SUMMARY}, {CONTACT_SHEET}, "
        "a folder per image)")
    return EXIT_FAILED_ITEMS if failed else 0


def _write_folder(out: Path, folder: str, files: dict[str, bytes]) -> None:
    """The item's folder, whole or not at all: written aside, then renamed into place."""
    partial = out / f".{folder}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    for name, data in files.items():
        (partial / name).write_bytes(data)
    final = out / folder
    if final.exists():  # an earlier run's incomplete folder (no result.json)
        shutil.rmtree(final)
    partial.rename(final)


def _overlay_reader(out: Path, entry: dict[str, Any]) -> Callable[[], bytes | None]:
    """The item's first target's overlay (the top-1 class's by default), read when its
    tile is drawn (one at a time)."""
    def read() -> bytes | None:
        if not entry["targets"]:
            return None
        path = out / entry["folder"] / overlay_name(entry["targets"][0]["target"])
        return path.read_bytes() if path.is_file() else None
    return read


def stderr_line(text: str) -> None:
    print(text, file=sys.stderr)

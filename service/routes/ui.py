"""``/``: the explanation viewer, a static page that uses only the public API, and
``/ui/batches/{id}``: a batch's page (its items with thumbnails, each opening the
viewer's single-job view, ``/#job={item id}``).

Its HTML, JS and CSS live in ``service/static`` (shipped as package data) and are served
under ``/static`` together with the vendored Swagger UI and ReDoc assets.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

#: the page may talk to this server only: a browser-enforced "no CDN, no tracker"
CSP = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'self'; "
       "frame-ancestors 'self'")

router = APIRouter(include_in_schema=False)


@router.get("/")
def get_viewer() -> FileResponse:
    """The viewer page."""
    # revalidate each time so an upgraded server never pairs old HTML with new JS
    return FileResponse(STATIC_DIR / "index.html",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP})


@router.get("/ui/batches/{batch_id}")
def get_batch_page(batch_id: str) -> FileResponse:
    """A batch's page: the page reads the batch (``/v1/batches/{id}``) itself."""
    return FileResponse(STATIC_DIR / "batch.html",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP})


def install(app: FastAPI) -> None:
    """Serve the viewer at ``/`` and the static assets at ``/static``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

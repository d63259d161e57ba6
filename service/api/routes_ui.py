"""The web page: ``GET /`` and its assets under ``/ui/`` (plain HTML, a little JavaScript, and the vendored
Leaflet and OpenSeadragon, committed by ``make vendor``). Public: the page asks for a key when the API wants
one."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).parent / "ui"

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    """The page."""
    return FileResponse(UI_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its assets at ``/ui/``."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")


__all__ = ["install", "router"]

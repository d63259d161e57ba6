"""The HTTP API: a thin skin over the jobs domain (:mod:`tileseg.jobs`) and the model zoo."""

from tileseg.api.main import create_app

__all__ = ["create_app"]

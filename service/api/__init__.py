"""The HTTP API: a thin skin over the jobs domain (:mod:`service.jobs`) and the model zoo."""

from .main import create_app

__all__ = ["create_app"]

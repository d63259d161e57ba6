"""Architecture hyper-parameters given as text (``--param base=64``), parsed into Python values."""

from __future__ import annotations

from typing import Any

from tileseg.models.errors import TrainingConfigError


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` as an architecture hyper-parameter: ints, floats, true/false and none are parsed,
    anything else is a string.

    Raises:
        TrainingConfigError: no ``=``, or an empty key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TrainingConfigError(f"--param takes key=value, got {text!r}")
    raw = raw.strip()
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered in ("none", "null"):
        return key, None
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw

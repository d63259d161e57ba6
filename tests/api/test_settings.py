"""The service's settings: read from TILESEG_* variables, validated at start."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from tileseg.settings import Settings


def test_settings_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TILESEG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TILESEG_API_KEYS", "first-key-0123456789, second-key-0123456789")
    monkeypatch.setenv("TILESEG_INPUT_ROOTS", str(tmp_path))
    monkeypatch.setenv("TILESEG_RESULT_TTL", "90")
    monkeypatch.setenv("TILESEG_MODELS", "a,b")
    settings = Settings()
    assert settings.api_keys == ["first-key-0123456789", "second-key-0123456789"]
    assert settings.input_roots == [str(tmp_path.resolve())] and settings.models == ["a", "b"]
    assert settings.result_ttl == timedelta(seconds=90)
    assert settings.database == f"sqlite:///{(tmp_path / 'data').resolve() / 'jobs.db'}"
    assert (tmp_path / "data").is_dir()


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("TILESEG_API_KEYS", "short", "at least 16 characters"),
        ("TILESEG_INPUT_ROOTS", "/no/such/folder", "existing folders"),
        ("TILESEG_MAX_UPLOAD_BYTES", "0", "greater than 0"),
        ("TILESEG_RESULT_TTL", "soon", "timedelta"),
        ("TILESEG_MODE", "queue", "TILESEG_BROKER_URL"),
        ("TILESEG_MODE", "cluster", "'embedded' or 'queue'"),
        ("TILESEG_HEARTBEAT", "30", "shorter than the lease"),
    ],
)
def test_unsafe_or_invalid_settings_are_refused(tmp_path, monkeypatch, variable, value, message):
    monkeypatch.setenv("TILESEG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings()

"""Every name the product promises can be imported: each module's ``__all__``, and each name of a lazy map
(``tileseg.training`` loads its modules on first use, so a wrong entry would only fail when a user asks)."""

from __future__ import annotations

import importlib

import pytest

from .test_layout import modules


@pytest.mark.parametrize("module", [m for m, _ in modules()])
def test_every_name_in_all_is_defined(module):
    loaded = importlib.import_module(module)
    missing = [name for name in getattr(loaded, "__all__", []) if not hasattr(loaded, name)]
    assert not missing, f"{module}.__all__ names {missing}, which it does not define"


def test_every_name_of_the_training_map_comes_from_the_module_it_names():
    import tileseg.training as training

    for name, where in training._EXPORTS.items():
        defined = importlib.import_module(where)
        assert name in vars(defined), f"tileseg.training maps {name} to {where}, which does not define it"
        assert getattr(training, name) is vars(defined)[name]


def test_the_map_check_sees_a_wrong_entry(monkeypatch):
    import tileseg.training as training

    monkeypatch.setitem(training._EXPORTS, "TrainingDataError", "tileseg.models.errors")
    with pytest.raises(AttributeError):
        training.TrainingDataError  # noqa: B018  (the lazy lookup is what is checked)

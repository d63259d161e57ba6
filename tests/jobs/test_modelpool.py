"""An API in queue mode checks requests against the model cards alone: the specs it reads are those the
workers' loaded networks carry, also for a serving option that changes the geometry (U-Net++ pruned)."""

from __future__ import annotations

import pytest

from tests.engine import nets
from tileseg.engine.errors import OptionsError
from tileseg.jobs.modelpool import CardCatalogue, ModelPool
from tileseg.models.errors import ModelNotFoundError


@pytest.fixture
def weights(tmp_path):
    nets.register()
    nets.checkpoint(tmp_path, "unetpp", bands=1, classes=2, name="nested", depth=2, base=4)
    nets.checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb-test")
    yield tmp_path / "weights"
    nets.unregister()


def test_the_cards_give_the_loaded_networks_specs(weights):
    cards, pool = CardCatalogue(weights), ModelPool(weights, device="cpu")
    assert cards.names == pool.names == ["nested", "rgb-test"]
    for name, prune in (("nested", None), ("nested", 1), ("rgb-test", None)):
        assert cards.spec(name, prune) == pool.spec(name, prune), (name, prune)
    assert cards.spec("nested", 1).geometry != cards.spec("nested").geometry, "pruning changes the geometry"
    assert cards.describe("nested") == pool.describe("nested")


def test_the_cards_refuse_what_the_pool_refuses(weights):
    cards = CardCatalogue(weights, ["nested"])
    with pytest.raises(ModelNotFoundError, match="served: nested"):
        cards.spec("rgb-test")
    with pytest.raises(OptionsError, match="prune=9"):
        cards.spec("nested", 9)
    with pytest.raises(ModelNotFoundError, match="not installed"):
        CardCatalogue(weights, ["missing"])

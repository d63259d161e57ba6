"""The service's checks of a `source` that is a STAC item, without a server: a local item under an input root
is read only as far as its assets are also under a root or an allowed URL; its asset hrefs, not only its own
name, decide."""

from __future__ import annotations

import pytest

from tests.engine.test_stac import write_item
from tileseg.engine.io.remote import RemoteUrl
from tileseg.jobs.errors import SourceNotAllowedError
from tileseg.jobs.intake import resolve_source


def test_a_local_item_passes_only_when_every_asset_does(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a.tif").write_bytes(b"x")
    (outside / "b.tif").write_bytes(b"x")
    good = write_item(root, {"visual": {"href": "a.tif"}, "thumb": {"href": "s3://scenes/public/t.png"}}, "good.json")
    assert resolve_source("good.json", [str(root)], ["s3://scenes/public/"]) == good.resolve()
    cases = {
        "out.json": {"visual": {"href": "a.tif"}, "b": {"href": "../outside/b.tif"}},
        "abs.json": {"visual": {"href": str(outside / "b.tif")}},
        "bucket.json": {"visual": {"href": "a.tif"}, "b": {"href": "s3://private/b.tif"}},
        "gdal.json": {"visual": {"href": "/vsicurl/http://169.254.169.254/x.tif"}},
        "nested.json": {"visual": {"href": "s3://scenes/public/other.json"}},
    }
    for name, assets in cases.items():
        write_item(root, assets, name)
        with pytest.raises(SourceNotAllowedError, match="STAC item .*asset"):
            resolve_source(name, [str(root)], ["s3://scenes/public/"])


def test_an_s3_item_is_pinned_to_what_was_checked(tmp_path, s3):
    bucket = s3.bucket()
    item = write_item(tmp_path, {"visual": {"href": "scene.tif"}, "b": {"href": "../other/b.tif"}})
    s3.client().upload_file(str(item), bucket, "public/items/item.json")
    with pytest.raises(SourceNotAllowedError, match="asset b: .*not under a prefix"):
        resolve_source(f"s3://{bucket}/public/items/item.json", [], [f"s3://{bucket}/public/items/"])
    source = resolve_source(f"s3://{bucket}/public/items/item.json", [], [f"s3://{bucket}/public/"])
    assert isinstance(source, RemoteUrl) and source.url.startswith(f"s3://{bucket}/public/items/item.json#sha256=")
    assert source.name == "item.json" and "sha256" not in source.masked

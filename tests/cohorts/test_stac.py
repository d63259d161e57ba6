"""STAC inputs of the many-inputs form: a real STAC API's search (rustac's server on loopback) with collections,
an area and a date range; an ItemCollection file; a static catalog; and the API's failures in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cohorts.conftest import FIXED, free_port, manifest, read, run
from tileseg.cohorts.errors import NoInputsError, StacApiError, UnknownCollectionError
from tileseg.cohorts.stac_search import search_items


def test_search_items_filters_by_collection_area_and_dates(stac_api):
    every = search_items(stac_api.url, ["em-scenes"], None, None, None, None)
    assert sorted(i.id for i in every) == ["em0", "em1", "em2", "em3"]
    west = search_items(stac_api.url, ["em-scenes"], [0.2, 0.2, 1.5, 0.8], None, None, None)
    assert sorted(i.id for i in west) == ["em0", "em1"]
    spring = search_items(stac_api.url, None, None, "2024-02-01T00:00:00Z/2024-03-31T00:00:00Z", None, None)
    assert sorted(i.id for i in spring) == ["em1", "em2"]
    assert len(search_items(stac_api.url, ["em-scenes"], None, None, None, 3)) == 3
    with pytest.raises(UnknownCollectionError, match="did you mean 'em-scenes'"):
        search_items(stac_api.url, ["em-scene"], None, None, None, None)
    with pytest.raises(NoInputsError, match="found no item"):
        search_items(stac_api.url, ["em-scenes"], [50, 50, 51, 51], None, None, None)
    with pytest.raises(StacApiError, match="query extension"):  # this server has none: refused, not ignored
        search_items(stac_api.url, ["em-scenes"], None, None, {"eo:cloud_cover": {"lt": 5}}, None)


def test_a_search_segments_the_items_found(tmp_path, stac_api, expected_masks):
    out = tmp_path / "out"
    result = run("segment", "--stac-search", stac_api.url, "--collections", "em-scenes", "--bbox", "1.2,0.2,2.5,0.8",
                 "--datetime", "2024-01-01T00:00:00Z/2024-12-31T00:00:00Z", "--out-dir", out, *FIXED)  # fmt: skip
    assert result.exit_code == 0, result.output
    records = manifest(out)
    assert [r["name"] for r in records] == ["em1", "em2"]
    assert records[0]["input"] == f"{stac_api.url}/collections/em-scenes/items/em1#em1"
    for record in records:
        index = int(record["name"][-1])
        np.testing.assert_array_equal(read(out / record["outputs"]["mask"]), expected_masks[index])
    again = run("segment", "--stac-search", stac_api.url, "--collections", "em-scenes", "--bbox", "1.2,0.2,2.5,0.8",
                "--datetime", "2024-01-01T00:00:00Z/2024-12-31T00:00:00Z", "--out-dir", out, *FIXED)  # fmt: skip
    assert "0 succeeded, 0 failed, 2 skipped" in again.output, again.output


def test_an_item_collection_and_a_static_catalog(tmp_path, stac_api, expected_masks):
    collection = tmp_path / "found.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": stac_api.items[:2]}))
    catalog = tmp_path / "catalog"
    (catalog / "em3").mkdir(parents=True)
    item = {**stac_api.items[3], "links": [{"rel": "root", "href": "../catalog.json"}]}
    item["assets"] = {"visual": {"href": "../../assets/em3.tif"}}  # relative to the item's own file
    (catalog / "em3" / "em3.json").write_text(json.dumps(item))
    (catalog / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "cat", "description": "d",
        "links": [{"rel": "item", "href": "./em3/em3.json"}, {"rel": "root", "href": "./catalog.json"}],
    }))  # fmt: skip
    out = tmp_path / "out"
    result = run("segment", collection, catalog / "catalog.json", "--out-dir", out, *FIXED)
    assert result.exit_code == 0, result.output
    names = [r["name"] for r in manifest(out)]
    assert names == ["em0", "em1", "em3"]
    for name in names:
        np.testing.assert_array_equal(read(out / name / "mask.tif"), expected_masks[int(name[-1])])


def test_an_unknown_collection_or_an_api_that_does_not_answer(tmp_path, stac_api):
    out = tmp_path / "out"
    result = run("segment", "--stac-search", stac_api.url, "--collections", "sentinel-2", "--out-dir", out, *FIXED)
    assert (
        result.exit_code == 1 and result.output.startswith("error: ") and "no collection 'sentinel-2'" in result.output
    )
    assert "em-scenes" in result.output and result.output.count("\n") == 1 and not out.exists()
    silent = f"http://127.0.0.1:{free_port()}"
    result = run("segment", "--stac-search", silent, "--out-dir", out, *FIXED)
    assert result.exit_code == 1 and result.output.startswith(f"error: STAC API {silent}") and not out.exists()
    assert result.output.count("\n") == 1
    result = run("segment", "--stac-search", stac_api.url, "--bbox", "1,2,3", "--out-dir", out, *FIXED)
    assert result.exit_code == 2 and "four numbers" in result.output
    result = run("segment", "--stac-search", stac_api.url, "--query", "{oops", "--out-dir", out, *FIXED)
    assert result.exit_code == 2 and "not JSON" in result.output and not out.exists()

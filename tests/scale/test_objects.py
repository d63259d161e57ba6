"""Objects in queue mode, in three shards, with real parts (the API in queue mode, a Celery worker, Redis,
PostgreSQL): the shipped ``unet-nuclei`` on a real, georeferenced nuclei image whose nuclei cross both shard seams;
the label GeoTIFF equals a single local ``segment()`` run's, id for id, on the mask's grid, and the job counts
the objects, tables them and gives one feature per object. (A server running its jobs itself:
``tests/api/test_objects.py``.)"""

from __future__ import annotations

import csv
import io

import numpy as np
import pyogrio
import pytest

from tests.api.conftest import submit, wait_for
from tests.api.objects import EXACT, grid_of, nuclei_weights, read_labels, reference_labels, write_nuclei  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_env(server_env, nuclei_weights):  # noqa: F811 (the cluster's, serving unet-nuclei and unet-em)
    def make(data, **settings):
        return server_env(data, **{"weights_dir": nuclei_weights, **settings})

    return make


def test_three_shards_give_the_objects_of_a_single_run(scale, data_dir, inputs_root, tmp_path):
    source = write_nuclei(data_dir, inputs_root / "nuclei-utm.tif", georeferenced=True)
    labels, grid = reference_labels(source, tmp_path)
    scale.start_workers(1)
    with scale.api.client() as client:
        refused = submit(client, source, model="unet-em", instances=True, shards=3)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_instance_output"
        assert "unet-nuclei" in refused.json()["error"]["message"]

        response = submit(client, source, model="unet-nuclei", shards=3, instances=True, vectors=True, **EXACT)
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"], timeout=600)
        assert job["status"] == "succeeded", job
        assert job["shards"]["total"] == 3 and job["shards"]["done"] == 3
        assert job["result"]["objects"] == {"nucleus": int(labels.max())}

        served = tmp_path / "served.tif"
        served.write_bytes(client.get(job["links"]["instances"]).content)
        got, got_grid = read_labels(served)
        np.testing.assert_array_equal(got, labels)  # the same objects, the same ids, across both seams
        assert got_grid == grid and got_grid["dtype"] == "uint32"
        mask = tmp_path / "mask.tif"
        mask.write_bytes(client.get(job["links"]["mask"]).content)
        assert {k: got_grid[k] for k in ("shape", "crs", "transform")} == grid_of(mask)
        assert grid["crs"] is not None

        rows = list(csv.DictReader(io.StringIO(client.get(job["links"]["objects"]).text)))
        assert sorted(int(r["id"]) for r in rows) == list(range(1, int(labels.max()) + 1))
        vectors = tmp_path / "objects.gpkg"
        vectors.write_bytes(client.get(job["links"]["vectors"]).content)
        assert pyogrio.read_info(vectors)["features"] == labels.max()
    seams = [96, 192]
    assert all(np.intersect1d(labels[s - 1], labels[s]).size > 1 for s in seams), "objects cross each seam"

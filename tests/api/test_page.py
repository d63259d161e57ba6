"""The web page in a real browser: Playwright driving Debian's Chromium against a real ``tileseg serve``.

An RGB GeoTIFF (a Landsat scene, EPSG:32618) and an ISBI PNG are uploaded through the page with shipped
models; the upload and the job reach 100 %; the viewer opens on its tiles (Leaflet, OpenSeadragon), whose
requests answer 200; the picture on screen holds the classes' colours where the mask has them, loses a
class when its legend entry is unticked, and changes with the opacity slider. A text file shows the API's
own message; a server with keys makes the page ask for one, and everything then works with it. The
screenshots are the README's (docs/).

Chromium is launched by its path with the flags this closed network needs (no background connections);
Playwright's own browser download is not used.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from PIL import Image
from playwright import sync_api as playwright_api

from tests.api.conftest import KEY_A, Server, wait_for
from tests.api.objects import write_nuclei
from tests.conftest import REPO
from tileseg import models

CHROMIUM = os.environ.get("TILESEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = REPO / "docs"
BASEMAP = "http://127.0.0.1:9/{z}/{x}/{y}.png"  # nothing listens there: the test sees the page ask for it
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless; it must be installed (``.ci/run`` installs it): no skip without it."""
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, server_env):
    """A server without keys, serving the shipped ``fcn8s-aerial``, ``unet-em`` and ``unet-nuclei`` (objects), with
    a base map."""
    weights = tmp_path_factory.mktemp("page-weights")
    for name in ("fcn8s-aerial", "unet-em"):
        for suffix in (".safetensors", ".json"):
            shutil.copy(REPO / "weights" / f"{name}{suffix}", weights / f"{name}{suffix}")
    for suffix in (".safetensors", ".json"):
        shutil.copy(models.weights_dir() / f"unet-nuclei{suffix}", weights / f"unet-nuclei{suffix}")
    data = tmp_path_factory.mktemp("page-data")
    env = server_env(data, api_keys="", weights_dir=weights, torch_threads=2, basemap_url=BASEMAP)
    srv = Server(data, env, data.parent / "page-server.log").start()
    yield srv
    srv.stop()


class Page:
    """A browser tab on the page, recording the answers to its tile requests."""

    def __init__(self, browser, url: str, width: int = 1280, height: int = 800):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.tiles: list[tuple[str, int]] = []
        self.requested: list[str] = []
        self.page.on("request", lambda r: self.requested.append(r.url))
        self.page.on("response", lambda r: self.tiles.append((r.url, r.status)) if "/tiles/" in r.url else None)
        self.page.goto(url)

    def ready(self) -> Page:
        self.page.wait_for_selector("body[data-ready=true]", state="attached")
        return self

    def segment(self, image: Path, model: str) -> str:
        """Upload ``image`` with ``model`` through the form; wait for the job to succeed; its id."""
        page = self.page
        page.select_option("#model", model)
        page.set_input_files("#file", str(image))
        page.click("#submit")
        page.wait_for_function("document.getElementById('upload-text').textContent === '100 %'")
        page.wait_for_function("document.getElementById('job-text').textContent.includes('succeeded, 100 %')")
        assert page.eval_on_selector("#job-progress", "e => e.value") == 100
        page.wait_for_selector("#viewer-section:not([hidden])")
        return page.eval_on_selector("#jobs tbody tr", "e => e.dataset.job")

    def settle(self, layers=("input", "mask")) -> None:
        """Wait until tiles of each layer were answered and the network is quiet."""
        for layer in layers:
            self.page.wait_for_function(
                f"performance.getEntriesByType('resource').some(e => e.name.includes('/tiles/{layer}/'))"
            )
        self.page.wait_for_load_state("networkidle")
        time.sleep(0.5)  # the viewers fade tiles in

    def viewer_pixels(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.page.locator("#viewer").screenshot())).convert("RGB"))

    def set_opacity(self, key: str) -> None:
        """Move the opacity slider with the keyboard (End: 100 %, Home: 0 %)."""
        self.page.focus("#opacity")
        self.page.keyboard.press(key)

    def close(self) -> None:
        self.context.close()


def _colour_share(pixels: np.ndarray, colour: str, tolerance: int = 12) -> float:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return float((np.abs(pixels.astype(int) - rgb).max(axis=-1) <= tolerance).mean())


def _mask_shares(srv: Server, job_id: str) -> dict[int, float]:
    """Each class's share of the job's mask (nodata left out)."""
    body = httpx.get(f"{srv.url}/jobs/{job_id}/mask", timeout=30).content
    with rasterio.MemoryFile(body) as mem, mem.open() as src:
        classes = src.read(1)
        valid = classes != src.nodata if src.nodata is not None else np.ones(classes.shape, bool)
    values, counts = np.unique(classes[valid], return_counts=True)
    return {int(v): c / valid.sum() for v, c in zip(values, counts)}


def _check_viewer(tab: Page, srv: Server, job_id: str, classes: list[dict], shot: str) -> None:
    """The tiles came back 200, the classes' colours are on screen where the mask has them, unticking a
    class takes its colour away, and the opacity slider changes the picture."""
    tab.settle()
    statuses = {status for url, status in tab.tiles if job_id in url}
    assert statuses == {200}, f"tile answers: {tab.tiles}"
    assert any("/tiles/input/" in url for url, _ in tab.tiles) and any("/tiles/mask/" in url for url, _ in tab.tiles)
    tab.set_opacity("End")
    tab.settle()
    opaque = tab.viewer_pixels()
    shares = _mask_shares(srv, job_id)
    colours = {c["index"]: c["color"] for c in classes}
    main = max(shares, key=shares.get)
    Image.fromarray(opaque).save(DOCS / ".viewer-last.png") if os.environ.get("TILESEG_KEEP_SHOTS") else None
    on_screen = {index: _colour_share(opaque, colour) for index, colour in colours.items()}
    drawn = sum(on_screen.values())
    assert drawn > 0.05, f"hardly any class colour on screen: {on_screen}"
    for index, share in shares.items():
        # each class covers as much of the drawn mask as of the mask file (the map's reprojection and
        # zoom move a few pixels), so each colour is where the mask has that class, in that proportion
        assert abs(on_screen[index] / drawn - share) < 0.05, (index, share, on_screen[index] / drawn)
    before = _colour_share(opaque, colours[main])
    tab.page.uncheck(f"#legend input[value='{main}']")
    tab.settle(("mask",))
    hidden = tab.viewer_pixels()
    assert _colour_share(hidden, colours[main]) < before / 4, "an unticked class leaves the picture"
    tab.page.check(f"#legend input[value='{main}']")
    tab.set_opacity("Home")
    for _ in range(6):
        tab.page.keyboard.press("PageUp")  # 0 % -> about 60 %
    tab.settle(("mask",))
    blended = tab.viewer_pixels()
    assert np.abs(blended.astype(int) - opaque.astype(int)).mean() > 3, "the opacity changes the picture"
    assert _colour_share(blended, colours[main]) < before / 2
    DOCS.mkdir(exist_ok=True)
    tab.page.screenshot(path=str(DOCS / shot), full_page=True)


def test_geotiff_upload_progress_and_map_viewer(browser, open_server, data_dir):
    tab = Page(browser, open_server.url).ready()
    try:
        cards = tab.page.locator("#models article").all_inner_texts()
        assert any("fcn8s-aerial" in c and "building" in c and "miou" in c for c in cards), cards
        job_id = tab.segment(data_dir / "geotiff" / "RGB.byte.tif", "fcn8s-aerial")
        assert tab.page.locator("#viewer .leaflet-container").count() == 1, "georeferenced: a web map"
        tab.page.wait_for_selector("#viewer .leaflet-layer.basemap", state="attached")
        assert any(url.startswith("http://127.0.0.1:9/") for url in tab.requested), "the base map is asked for"
        links = tab.page.locator("#downloads a").all_inner_texts()
        assert {"mask", "preview"} <= set(links)
        classes = httpx.get(f"{open_server.url}/models/fcn8s-aerial").json()["classes"]
        _check_viewer(tab, open_server, job_id, classes, "page-geotiff.png")
    finally:
        tab.close()


def test_png_upload_and_deep_zoom_viewer(browser, open_server, data_dir):
    tab = Page(browser, open_server.url).ready()
    try:
        job_id = tab.segment(data_dir / "isbi2012" / "test" / "images" / "0.png", "unet-em")
        assert tab.page.locator("#viewer .openseadragon-container").count() == 1, "pixel space: OpenSeadragon"
        classes = httpx.get(f"{open_server.url}/models/unet-em").json()["classes"]
        _check_viewer(tab, open_server, job_id, classes, "page-isbi.png")
        row = tab.page.locator(f"#jobs tr[data-job='{job_id}']").inner_text()
        assert "0.png" in row and "succeeded" in row
    finally:
        tab.close()


def test_an_instance_job_shows_its_objects_outlined(browser, open_server, data_dir, tmp_path):
    """Ticking ``instances`` asks for the objects (and their vectors): the viewer outlines every object over
    the image, in the outline colour, and the legend's box hides them."""
    image = write_nuclei(data_dir, tmp_path / "nuclei.tif")
    tab = Page(browser, open_server.url).ready()
    try:
        tab.page.check("#opt-instances")
        job_id = tab.segment(image, "unet-nuclei")
        job = httpx.get(f"{open_server.url}/jobs/{job_id}").json()
        assert job["options"]["instances"] is True and job["options"]["vectors"] is True
        count = job["result"]["objects"]["nucleus"]
        tab.page.wait_for_selector("#viewer svg.outlines path", state="attached")
        drawn = tab.page.eval_on_selector(
            "#viewer svg.outlines path", "e => (e.getAttribute('d').match(/M/g) || []).length"
        )
        assert drawn >= count > 20, (drawn, count)  # one ring each at least (holes and parts add rings)
        assert f"{count} object outlines" in tab.page.inner_text("#legend")
        assert {"instances", "objects", "vectors"} <= set(tab.page.locator("#downloads a").all_inner_texts())
        tab.settle()
        outlined = _colour_share(tab.viewer_pixels(), "#ffe14d", tolerance=40)
        assert outlined > 0.005, outlined
        tab.page.uncheck("#outlines")
        assert _colour_share(tab.viewer_pixels(), "#ffe14d", tolerance=40) < outlined / 4
    finally:
        tab.close()


def test_bad_upload_shows_the_api_message(browser, open_server, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 20)
    with open(text, "rb") as fh:
        answer = httpx.post(
            f"{open_server.url}/segment", data={"model": "unet-em"}, files={"file": ("notes.txt", fh)}, timeout=30
        )
    error = answer.json()["error"]
    tab = Page(browser, open_server.url).ready()
    try:
        tab.page.select_option("#model", "unet-em")
        tab.page.set_input_files("#file", str(text))
        tab.page.click("#submit")
        tab.page.wait_for_selector("#error:not([hidden])")
        shown = tab.page.inner_text("#error")
        uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # each try its own job
        assert uuid.sub("ID", shown) == uuid.sub("ID", f"{answer.status_code} {error['code']}: {error['message']}")
        assert answer.status_code == 415
    finally:
        tab.close()


def test_options_come_from_the_form_schema(browser, open_server):
    schema = httpx.get(f"{open_server.url}/openapi.json").json()
    form = schema["paths"]["/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    expected = set(form["properties"]) - {"file", "source", "model"}
    tab = Page(browser, open_server.url).ready()
    try:
        names = "es => es.map(e => e.name)"
        main = set(tab.page.eval_on_selector_all("#main-options input, #main-options select", names))
        advanced = set(tab.page.eval_on_selector_all("#advanced input, #advanced select", names))
        assert main == {"roi", "vectors", "instances"} and main | advanced == expected and not main & advanced
        assert {"tile", "blend", "tta", "probabilities", "pixel_size"} <= advanced
        # the fold is closed at first: the advanced options are there but not shown until it is opened
        assert tab.page.eval_on_selector("#advanced", "e => e.tagName === 'DETAILS' && !e.open")
        assert not tab.page.is_visible("#opt-tile") and tab.page.is_visible("#opt-vectors")
        tab.page.click("#advanced summary")
        assert tab.page.is_visible("#opt-tile")
        unlabelled = tab.page.evaluate(
            "[...document.querySelectorAll('input, select, button')]"
            ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())"
            ".map(e => e.id || e.name)"
        )
        assert unlabelled == [], f"controls without a label: {unlabelled}"
    finally:
        tab.close()


def test_cards_show_the_pixel_size_with_its_unit(browser, open_server):
    card = httpx.get(f"{open_server.url}/models/unet-em").json()["spec"]["input"]["pixel_size"]
    assert card["unit"] == "um", card
    tab = Page(browser, open_server.url).ready()
    try:
        text = tab.page.locator("#models article", has_text="unet-em").inner_text()
        assert "[object Object]" not in text
        assert re.search(rf"pixel size\s+{re.escape(str(card['value']))} µm", text), text
    finally:
        tab.close()
    assert httpx.get(f"{open_server.url}/viewer/config").json() == {"basemap": BASEMAP}


def test_phone_width(browser, open_server):
    tab = Page(browser, open_server.url, width=390, height=844).ready()
    try:
        overflow = tab.page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 390, f"the page is {overflow} px wide on a 390 px screen"
        DOCS.mkdir(exist_ok=True)
        tab.page.screenshot(path=str(DOCS / "page-phone.png"), full_page=False)
    finally:
        tab.close()


def test_with_keys_the_page_asks_for_one(browser, server, data_dir):
    """The shared server has keys: the page asks, keeps the key for the tab, and then follows a job
    (events read with the key) and draws its tiles (fetched with the key)."""
    answer = httpx.get(f"{server.url}/models")
    assert answer.status_code == 401
    tab = Page(browser, server.url)
    try:
        tab.page.wait_for_selector("#key-section:not([hidden])")
        assert tab.page.inner_text("#key-reason") == answer.json()["error"]["message"]
        assert tab.page.evaluate("document.activeElement.id") == "api-key"
        tab.page.keyboard.type(KEY_A)
        tab.page.keyboard.press("Enter")
        tab.ready()
        assert tab.page.evaluate("sessionStorage.getItem('tileseg.apiKey')") == KEY_A
        assert tab.page.locator("#models article").count() >= 1
        job_id = tab.segment(data_dir / "geotiff" / "rgb-byte-tenth.tif", "rgb-test")
        tab.settle()
        assert {status for url, status in tab.tiles if job_id in url} == {200}
    finally:
        tab.close()
    with server.client() as client:  # the same job, as the API has it
        assert wait_for(client, job_id)["status"] == "succeeded"

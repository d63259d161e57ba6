"""``tileseg:segment``: segment a raster layer on a tileseg server and write the mask (and polygons) here; with a
model that makes objects (an instance decoding, e.g. ``unet-nuclei``), the objects too: one polygon each (the
job's vectors) and their label raster (the job's ``instances``).

The run: check the model against the server's ``GET /models`` (a wrong name fails with the list), upload the
layer's file (or send its URL as ``source``), follow ``GET /jobs/{id}`` into the progress bar, download the
results. Cancel in QGIS cancels the job on the server (``DELETE /jobs/{id}``). In the desktop, the layers
QGIS loads afterwards get the model card's class colours.

Progress: the upload is the first 10 %, the server's own progress the next 85 %, the downloads the last 5 %.
"""

from __future__ import annotations

import os
import time

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsVectorLayer,
)

from .remote import Canceled, Remote, RemoteError
from .style import style_mask, style_objects, style_polygons

DEFAULT_SERVER = "http://127.0.0.1:8000"
POLL_SECONDS = 0.5
FINAL = ("succeeded", "failed", "canceled", "expired")
UPLOAD_SHARE, RUN_SHARE = 10.0, 85.0  # percent of the bar; the downloads take the rest

# QGIS keeps only the C++ side of a layer post-processor, and runs it after the algorithm's instance (a
# copy that QgsProcessingAlgorithm.run makes and deletes) is gone: the Python side lives here, one per output
# path, replaced by the next run that writes there.
_STYLERS: dict[str, _Styler] = {}


class SegmentAlgorithm(QgsProcessingAlgorithm):
    """Segment a raster on a tileseg server with one of its models."""

    INPUT, MODEL, SERVER, API_KEY = "INPUT", "MODEL", "SERVER", "API_KEY"
    TILE, ROI_AUTO, PIXEL_SIZE = "TILE", "ROI_AUTO", "PIXEL_SIZE"
    OUTPUT, VECTORS = "OUTPUT", "VECTORS"
    OBJECTS, INSTANCES = "OBJECTS", "INSTANCES"

    def name(self) -> str:
        return "segment"

    def displayName(self) -> str:
        return "Segment on a tileseg server"

    def shortHelpString(self) -> str:
        return (
            "Uploads the raster's file (or, for a layer read from an http(s) URL, sends the URL) to a tileseg "
            "server, runs MODEL on it tile by tile, and writes the class mask (GeoTIFF) and optionally the "
            "polygons of each class; with a model that makes objects (e.g. unet-nuclei), the objects, one polygon "
            "each with their measurements, and their label raster (0 no object, 1..N one object each). Cancel "
            "cancels the job on the server. The API key may also come from the TILESEG_API_KEY environment "
            "variable, the server's URL from TILESEG_SERVER."
        )

    def createInstance(self):
        return SegmentAlgorithm()

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterString(self.MODEL, "Model (a name the server lists)"))
        self.addParameter(
            QgsProcessingParameterString(self.SERVER, "Server URL", os.environ.get("TILESEG_SERVER", DEFAULT_SERVER))
        )
        self.addParameter(QgsProcessingParameterString(self.API_KEY, "API key", optional=True))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TILE, "Tile size in pixels (empty: the server's choice)", minValue=1, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.ROI_AUTO, "Only the region the server finds (roi=auto: tissue on slides)", defaultValue=False
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.PIXEL_SIZE,
                "Pixel size with its unit, when the file's is missing or wrong (e.g. 0.5m)",
                optional=True,
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Mask"))
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                self.VECTORS,
                "Polygons of each class",
                QgsProcessing.TypeVectorPolygon,
                optional=True,
                createByDefault=False,
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                self.OBJECTS,
                "Objects, one polygon each (a model that makes objects, e.g. unet-nuclei)",
                QgsProcessing.TypeVectorPolygon,
                optional=True,
                createByDefault=False,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.INSTANCES, "Object labels (0: none, 1..N one object each)", optional=True, createByDefault=False
            )
        )

    def processAlgorithm(self, parameters, context, feedback):
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        upload, source = _input_of(layer)
        model = self.parameterAsString(parameters, self.MODEL, context).strip()
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        vectors = self.parameterAsOutputLayer(parameters, self.VECTORS, context) or None
        objects = self.parameterAsOutputLayer(parameters, self.OBJECTS, context) or None
        instances = self.parameterAsOutputLayer(parameters, self.INSTANCES, context) or None
        _check_extension(output, (".tif", ".tiff"), "the mask")
        for path, what in ((vectors, "the polygons"), (objects, "the objects")):
            if path:
                _check_extension(path, (".gpkg", ".geojson"), what)
        if instances:
            _check_extension(instances, (".tif", ".tiff"), "the object labels")
        key = self.parameterAsString(parameters, self.API_KEY, context).strip() or os.environ.get("TILESEG_API_KEY")
        fields = self._fields(parameters, context, model, source, bool(vectors or objects))
        if objects or instances:
            fields["instances"] = "true"  # the server refuses a model without objects, naming those with them
        try:
            remote = Remote(self.parameterAsString(parameters, self.SERVER, context), key)
            card = _card(remote, model)
            feedback.pushInfo(f"{remote.url}: {'sending ' + source if source else 'uploading ' + upload}")
            job = remote.submit(
                fields,
                upload,
                canceled=feedback.isCanceled,
                progress=lambda f: feedback.setProgress(UPLOAD_SHARE * f),
            )
            feedback.pushInfo(f"job {job['id']} ({job['input']['width']}x{job['input']['height']} pixels)")
            done = _follow(remote, job, feedback)
            _download(remote, done, output, vectors, feedback)
            for path, link in ((objects, "vectors"), (instances, "instances")):
                if path:
                    _download_link(remote, done["links"][link], path, feedback)
        except Canceled:
            raise QgsProcessingException("canceled") from None
        except RemoteError as err:
            raise QgsProcessingException(str(err)) from None
        self._style_on_load(context, output, vectors, card["classes"], objects)
        return {self.OUTPUT: output, self.VECTORS: vectors, self.OBJECTS: objects, self.INSTANCES: instances}

    def _fields(self, parameters, context, model: str, source: str | None, vectors: bool) -> dict[str, str]:
        """The form of ``POST /segment``: only what the user set, so the server's defaults apply otherwise."""
        fields = {"model": model}
        if source:
            fields["source"] = source
        if parameters.get(self.TILE) not in (None, ""):
            fields["tile"] = str(self.parameterAsInt(parameters, self.TILE, context))
        if self.parameterAsBoolean(parameters, self.ROI_AUTO, context):
            fields["roi"] = "auto"
        pixel_size = self.parameterAsString(parameters, self.PIXEL_SIZE, context).strip()
        if pixel_size:
            fields["pixel_size"] = pixel_size
        if vectors:
            fields["vectors"] = "true"
        return fields

    def _style_on_load(
        self, context, output: str, vectors: str | None, classes: list[dict], objects: str | None = None
    ) -> None:
        """When QGIS loads the outputs (the desktop does; ``qgis_process`` does not), colour them by class (the
        objects as outlines in their class's colour)."""
        for path, style in ((output, style_mask), (vectors, style_polygons), (objects, style_objects)):
            if path and context.willLoadLayerOnCompletion(path):
                _STYLERS[path] = _Styler(style, classes)
                context.layerToLoadOnCompletionDetails(path).setPostProcessor(_STYLERS[path])


class _Styler(QgsProcessingLayerPostProcessorInterface):
    """Applies one of :mod:`.style`'s functions to a layer QGIS has just loaded."""

    def __init__(self, style, classes: list[dict]):
        super().__init__()
        self.style = style
        self.classes = classes

    def postProcessLayer(self, layer, context, feedback):
        if isinstance(layer, (QgsRasterLayer, QgsVectorLayer)):
            self.style(layer, self.classes)


def _input_of(layer: QgsRasterLayer) -> tuple[str | None, str | None]:
    """``(file to upload, None)`` for a layer read from a local file, ``(None, URL)`` for one read from an
    http(s) URL (the server fetches it, if its allow-list permits)."""
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"the layer {layer.name()!r} comes from the {layer.providerType()!r} provider; "
            "tileseg:segment needs a raster file (save it as a GeoTIFF first)"
        )
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or layer.source()
    if path.startswith("/vsicurl/"):
        path = path[len("/vsicurl/") :]
    if path.startswith(("http://", "https://")):
        return None, path
    if not os.path.isfile(path):
        raise QgsProcessingException(f"the layer {layer.name()!r} is not a file on this computer: {path}")
    return path, None


def _check_extension(path: str, allowed: tuple[str, ...], what: str) -> None:
    if not path.lower().endswith(allowed):
        raise QgsProcessingException(f"{what} is written as {' or '.join(allowed)}, not {path}")


def _card(remote: Remote, model: str) -> dict:
    """The model's card from the server's list; a name it does not serve fails with the names it does."""
    cards = remote.models()
    for card in cards:
        if card["name"] == model:
            return card
    names = ", ".join(sorted(c["name"] for c in cards)) or "none"
    raise RemoteError(f"the server at {remote.url} has no model {model!r}; it serves: {names}")


def _follow(remote: Remote, job: dict, feedback) -> dict:
    """Poll the job until it ends, its progress in the bar; cancel in QGIS cancels it on the server."""
    while True:
        if feedback.isCanceled():
            remote.cancel(job["id"])
            raise RemoteError(f"canceled: job {job['id']} was canceled on the server")
        job = remote.job(job["id"])
        feedback.setProgress(UPLOAD_SHARE + RUN_SHARE * job["progress"]["percent"] / 100.0)
        if job["status"] in FINAL:
            break
        time.sleep(POLL_SECONDS)
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        raise RemoteError(f"job {job['id']} {job['status']}: {error.get('message') or 'no details'}")
    return job


def _download(remote: Remote, job: dict, output: str, vectors: str | None, feedback) -> None:
    """The mask to ``output``, the polygons (GeoPackage, or GeoJSON by the file's extension) to ``vectors``."""
    done = UPLOAD_SHARE + RUN_SHARE
    remote.download(job["links"]["mask"], output, feedback.isCanceled)
    feedback.setProgress(done + (100 - done) / 2)
    if vectors:
        link = job["links"]["vectors"]
        if vectors.lower().endswith(".geojson"):
            link += "?format=geojson"
        remote.download(link, vectors, feedback.isCanceled)
    feedback.setProgress(100)


def _download_link(remote: Remote, link: str, path: str, feedback) -> None:
    """One more result to ``path``: the objects' polygons (GeoJSON by the file's extension) or their labels."""
    if path.lower().endswith(".geojson"):
        link += "?format=geojson"
    remote.download(link, path, feedback.isCanceled)

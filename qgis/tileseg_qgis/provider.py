"""The Processing provider ``tileseg`` and the plug-in object that registers it."""

from __future__ import annotations

from qgis.core import QgsApplication, QgsProcessingProvider

from .algorithm import SegmentAlgorithm


class TilesegProvider(QgsProcessingProvider):
    """Algorithms that run on a tileseg server: ``tileseg:segment``."""

    def id(self) -> str:
        return "tileseg"

    def name(self) -> str:
        return "tileseg"

    def longName(self) -> str:
        return "tileseg (segmentation on a server)"

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(SegmentAlgorithm())

    # the server writes GeoTIFF masks and GeoPackage (or GeoJSON) polygons; the dialog offers only these
    def supportedOutputRasterLayerExtensions(self):
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):
        return ["gpkg", "geojson"]

    def defaultVectorFileExtension(self, hasGeometry=True):
        return "gpkg"


class TilesegPlugin:
    """What QGIS loads: registers the provider (``initProcessing`` is also what ``qgis_process`` calls)."""

    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self) -> None:
        """Register the provider with QGIS's processing registry (once)."""
        if self.provider is None:
            self.provider = TilesegProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        """The desktop: the algorithm appears in the Processing toolbox; no menus of its own."""
        self.initProcessing()

    def unload(self) -> None:
        """Remove the provider when the plug-in is unloaded or reloaded."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

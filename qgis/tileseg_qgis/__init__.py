"""The tileseg QGIS plug-in: a Processing provider ``tileseg`` whose algorithm ``tileseg:segment`` runs a
segmentation on a tileseg server. QGIS calls :func:`classFactory` when it loads the plug-in (the desktop with
its ``iface``, ``qgis_process`` with None)."""


def classFactory(iface):
    """The plug-in object QGIS keeps while the plug-in is loaded."""
    from .provider import TilesegPlugin

    return TilesegPlugin(iface)

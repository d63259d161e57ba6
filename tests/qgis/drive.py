"""Run ``tileseg:segment`` inside the system's Python, as the desktop does (not a test module: the tests
run it with /usr/bin/python3, where QGIS's bindings are). It can cancel once the progress passes a value,
and it can play the desktop's part after a run: load the outputs and apply the post-processors QGIS would.

    python3 drive.py PLUGIN_FOLDER '{"parameters": {...}, "cancel_at": 20, "load": true}'

The last line printed is a JSON report: ok, error, jobs (the ids the run reported), styles.
"""

import json
import re
import sys

from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)


class Feedback(QgsProcessingFeedback):
    """Keeps the errors and the job ids the algorithm reports; cancels past ``cancel_at`` percent."""

    def __init__(self, cancel_at):
        super().__init__()
        self.errors, self.jobs = [], []
        self.cancel_at = cancel_at
        self.progressChanged.connect(self._progress)

    def _progress(self, percent):
        if self.cancel_at is not None and percent >= self.cancel_at:
            self.cancel()

    def pushInfo(self, info):
        self.jobs += re.findall(r"job ([0-9a-f-]{36})", info)
        super().pushInfo(info)

    def reportError(self, error, fatalError=False):
        self.errors.append(error)
        super().reportError(error, fatalError)


def styles(context, feedback, results):
    """Load each output as the desktop would, run its post-processor, and describe the renderer."""
    found = {}
    for key, make in (("OUTPUT", QgsRasterLayer), ("VECTORS", QgsVectorLayer), ("OBJECTS", QgsVectorLayer)):
        path = results.get(key)
        if not path:
            continue
        layer = make(path, key)
        context.layerToLoadOnCompletionDetails(path).postProcessor().postProcessLayer(layer, context, feedback)
        renderer = layer.renderer()
        if key == "OUTPUT":
            entries = [(c.value, c.color.name(), c.label) for c in renderer.classes()]
        else:
            entries = [(c.value(), c.symbol().color().name(), c.label()) for c in renderer.categories()]
        found[key] = {"renderer": renderer.type(), "entries": entries}
    return found


def main():
    plugins, request = sys.argv[1], json.loads(sys.argv[2])
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.insert(0, plugins)
    from tileseg_qgis.provider import TilesegProvider

    provider = TilesegProvider()  # the registry does not keep Python's object alive: this name does
    QgsApplication.processingRegistry().addProvider(provider)
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("tileseg:segment")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    parameters = request["parameters"]
    if request["load"]:  # what the desktop's dialog does for the outputs it will load
        for key in ("OUTPUT", "VECTORS", "OBJECTS"):
            if key in parameters:
                details = QgsProcessingContext.LayerDetails(key, QgsProject.instance(), key)
                context.addLayerToLoadOnCompletion(parameters[key], details)
    feedback = Feedback(request["cancel_at"])
    results, ok = algorithm.run(parameters, context, feedback)
    report = {"ok": bool(ok), "errors": feedback.errors, "jobs": feedback.jobs}
    if ok and request["load"]:
        report["styles"] = styles(context, feedback, results)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

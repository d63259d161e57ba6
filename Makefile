# One command each: `make serve` sets up and runs the service; `make test` sets up and runs the tests (the
# system packages they need too: scripts/test-deps.sh); `make test-quick` runs those that need no system service;
# `make docs` serves the documentation site;
# `make segment IN=... OUT=... MODEL=...` sets up and runs the command line; `make demo` segments the example image. Everything goes into .venv;
# the CPU build of PyTorch is installed first unless a GPU is present.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0

.PHONY: install install-test install-docs lint test test-quick test-deps docs docs-build serve segment demo vendor qgis-plugin clean

HOST ?= 127.0.0.1
PORT ?= 8000

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	@if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install --quiet "torch>=2.3,<2.15"; \
	else $(BIN)/pip install --quiet "$(TORCH_CPU)"; fi
	touch $@

install: $(VENV)/.torch
	$(BIN)/pip install --quiet -e .

# torchvision (for smp's encoders) must match the installed torch: pinned beside it, installed before the
# extras so that pip never resolves a newer torch for it (0.28.0 requires torch==2.13.0)
TORCHVISION_CPU ?= torchvision==0.28.0
$(VENV)/.torchvision: $(VENV)/.torch
	@if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install --quiet "torch>=2.3,<2.15" torchvision; \
	else $(BIN)/pip install --quiet "$(TORCH_CPU)" "$(TORCHVISION_CPU)"; fi
	touch $@

install-test: $(VENV)/.torchvision
	$(BIN)/pip install --quiet -e ".[test]"

lint: install-test
	$(BIN)/ruff check service models tests bench docs
	$(BIN)/ruff format --check service models tests bench docs
	$(BIN)/mypy

# Redis, PostgreSQL, docker-compose, Chromium, QGIS and the podman set-up: installed with apt as root or with
# sudo, else it stops at once with the exact command to run
test-deps:
	./scripts/test-deps.sh

# the 40 slowest tests are listed at the end: what to look at when the suite grows slow
test: install-test test-deps
	$(BIN)/python -m pytest -q --durations=40

# the tests that need no system service (no Redis, PostgreSQL, browser, QGIS or containers): a few minutes less
test-quick: install-test
	$(BIN)/python -m pytest -q -m "not system"

install-docs: $(VENV)/.torch
	$(BIN)/pip install --quiet -e ".[docs]"

# the documentation site at http://127.0.0.1:8001 (docs/, mkdocs.yml); docs-build checks it as CI does
docs: install-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8001

docs-build: install-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

serve: install
	$(BIN)/tileseg serve --host "$(HOST)" --port "$(PORT)"

segment: install
	$(BIN)/tileseg segment "$(IN)" "$(OUT)" --model "$(MODEL)"

# The example image in the repository, segmented from a fresh clone with nothing beside it.
demo: install
	@mkdir -p demo
	$(BIN)/tileseg segment examples/aerial.tif demo/aerial-mask.tif --model unet-aerial --vectors demo/aerial.gpkg
	@echo "mask:     $(CURDIR)/demo/aerial-mask.tif (class colours inside; polygons in demo/aerial.gpkg)"
	@echo "the page: run 'make serve', open http://$(HOST):$(PORT)/ and upload examples/aerial.tif"

# The web page's JavaScript libraries (Leaflet, OpenSeadragon) from npm at pinned versions, into the package;
# the result is committed, so installing needs no Node.
vendor:
	./scripts/vendor.sh

# The QGIS plug-in as a zip for Plugins > Manage and Install Plugins > Install from ZIP: the folder as it is,
# without Python's caches (QGIS writes them there when it loads the plug-in from the repository).
qgis-plugin:
	@mkdir -p dist
	$(PYTHON) -c 'import pathlib, sys, zipfile; root = pathlib.Path("qgis"); \
	files = sorted(p for p in (root / "tileseg_qgis").rglob("*") if p.is_file() and "__pycache__" not in p.parts); \
	z = zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED); [z.write(p, p.relative_to(root)) for p in files]; z.close()' \
	  dist/tileseg_qgis.zip
	@echo "dist/tileseg_qgis.zip: in QGIS, Plugins > Manage and Install Plugins > Install from ZIP"

clean:
	rm -rf $(VENV) build site *.egg-info

"""The build backend: setuptools' own, without one notice that does not apply here.

An editable install of a mapped layout (``service/`` is the package ``tileseg``) makes setuptools print "Editable
installation ... be careful with folders in your working directory with the same name as your package": there is
no ``tileseg/`` folder in the repository for anything to shadow, so every ``pip install -e .`` printed a warning
nobody could act on. Everything else is setuptools' (``setuptools.build_meta``), and its real warnings still show.
"""

import warnings

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the PEP 517 hooks, as they are)
from setuptools.warnings import InformationOnly

_editable = _setuptools.build_editable


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Editable installation", category=InformationOnly)
        return _editable(wheel_directory, config_settings, metadata_directory)

"""Sub-commands of the ``tileseg`` command line, one click command per module.

Import each from its module (``from service.commands.train import train``): importing them here would make
``python -m service.commands.train`` load the module twice.
"""

"""Sub-commands implemented inside the package (see :mod:`exporter.cli`)."""

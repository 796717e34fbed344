"""Tests of exporter.runtime: the handler, its request forms, the TorchServe entry points and archive."""

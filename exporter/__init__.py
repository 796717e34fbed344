"""Package, export and serve recommendation models (XGBoost, DeepFM, MMoE, two-tower) as ONNX.

The command line is ``python -m exporter``; notebooks use :mod:`exporter.export.pipeline` step by step and
:class:`exporter.runtime.handler.ModelHandler` for smoke tests.
"""

__version__ = "0.1.0"

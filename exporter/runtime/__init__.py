"""What a served model needs at run time, and nothing else of ``exporter``: the artifact rules (:mod:`.rules`),
the model handler (:mod:`.handler`) with its request envelopes (:mod:`.envelopes`) and feature columns
(:mod:`.columns`), and TorchServe's entry points (:mod:`.torchserve_entry`).

Standard library, numpy, orjson and onnxruntime only, so a TorchServe archive ships this package as code.
"""

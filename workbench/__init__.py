"""Measurement and tooling around FRDiff: data, shipped models, loading, sampling, metrics, CLI.

``ClassTokenEncoder`` and ``ShapesPipeline`` are exported here because diffusers' ``from_pretrained`` resolves a
saved custom component by importing the library named in ``model_index.json``.
"""

from workbench.pipeline import ClassTokenEncoder, ShapesPipeline

__all__ = ["ClassTokenEncoder", "ShapesPipeline"]

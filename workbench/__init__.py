"""Measurement and tooling around FRDiff: the shipped models, recording, analysis, comparison, the app's services,
the CLI and the benchmarks (``docs/architecture.md`` lists the rooms).

``ClassTokenEncoder`` and ``ShapesPipeline`` are importable from here because diffusers' ``from_pretrained``
resolves a saved custom component by importing the library named in ``model_index.json`` (``workbench``). They load
on first use, so ``import workbench`` alone stays cheap (no torch).
"""

__all__ = ["ClassTokenEncoder", "ShapesPipeline"]


def __getattr__(name: str):
    if name in __all__:
        from workbench.models import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")

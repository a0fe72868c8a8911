"""FRDiff: feature reuse and score mixing for diffusers pipelines (arXiv 2312.03517).

Depends on torch and diffusers only; never imports ``workbench``.
"""

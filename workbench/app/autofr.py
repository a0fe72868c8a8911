"""Auto-FR for the app (no Streamlit): learn a policy on a shipped pipeline, keep the best mask as it goes.

Wraps :func:`workbench.autofr.learn_for_pipeline` (which calls :func:`frdiff.autofr.learn_policy`; its hooks
hold the pipeline's lock and are always removed). ``progress`` receives each iteration's record; the latest mask
that met the compute target is kept in ``best`` so a run stopped from the page can still send it to the builder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import frdiff
from frdiff import Mixing, Policy
from frdiff.policy import model_ref


def learn(pipe, steps: int, target: float | None, gates: str = "step", granularity: str = "feature",
          reuse: str = "hold", iterations: int = 10,
          train_images: int = 4, batch_size: int = 2, savings: dict | None = None,
          progress: Callable[[dict], None] | None = None, cancel: Callable[[], bool] | None = None,
          best: dict | None = None, model_name: str | None = None, prompts: list[str] | None = None):
    """Run Auto-FR (``prompts``: a text-to-image pipeline's, cycled over the training images); ``best`` (a dict) is
    updated in place with ``{"mask", "iteration", "compute_fraction"}`` whenever an iteration's hard mask meets the
    target. Returns the :class:`frdiff.autofr.AutoFRResult`."""
    from frdiff.autofr import AutoFRConfig
    from workbench.autofr import learn_for_pipeline

    config = AutoFRConfig(gates=gates, granularity=granularity, reuse=reuse, target_compute=target,
                          iterations=iterations,
                          batch_size=batch_size)
    problems = config.problems() + ([f"Auto-FR needs at least 2 steps, got {steps}"] if steps < 2 else [])
    if problems:
        raise ValueError("; ".join(problems))

    def on_iteration(info: dict) -> None:
        met = info["target"] is None or info["compute_fraction"] <= info["target"] + config.tolerance
        if best is not None and met:
            best.update(mask=info["mask"].clone(), iteration=info["iteration"],
                        compute_fraction=info["compute_fraction"], steps=steps, granularity=granularity,
                        reuse=reuse)
        if progress is not None:
            progress(info)

    return learn_for_pipeline(pipe, config, steps, list(range(train_images)), None, None, savings, on_iteration,
                              cancel, model_name=model_name, prompts=prompts)


def policy_from_mask(pipe, mask: torch.Tensor, steps: int, granularity: str = "feature", reuse: str = "hold",
                     provenance: dict | None = None,
                     scheduler: str = "ddim") -> Policy:
    """A policy (mixing off) from a learned ``[blocks, steps]`` mask, e.g. the best one of a stopped run."""
    den = frdiff.denoiser_of(pipe)
    blocks = frdiff.find_blocks(den)
    if mask.ndim != 2 or mask.shape[0] != len(blocks):
        raise ValueError(f"this mask was learned on another model ({mask.shape[0] if mask.ndim else 0} blocks; this "
                         f"{type(den).__name__} has {len(blocks)}): switch back to the model it was learned on to see "
                         "it, or learn again on this one")
    kinds = [k for _, k in blocks]
    policy = Policy(blocks=[b for b, _ in blocks], keyframes=mask, steps=steps, scheduler=scheduler,
                    granularity=["block" if k == "generic" else granularity for k in kinds], kinds=kinds,
                    reuse=[reuse] * len(blocks), mixing=Mixing(),
                    model=model_ref(den), provenance={"made_by": "autofr", **(provenance or {})})
    return policy.check(model_blocks=dict(blocks))


def progress_figure(history: list[dict], target: float | None):
    """Auto-FR's training curves: the MSE against the full run (log scale, left) and the compute fraction of the
    mask each iteration ran (right, 0–1, with the target as a dashed line); two distinct colours."""
    import plotly.graph_objects as go

    its = [h["iteration"] for h in history]
    fig = go.Figure([
        go.Scatter(x=its, y=[h["mse"] for h in history], name="MSE vs the full run", yaxis="y",
                   line=dict(color="#1f77b4")),
        go.Scatter(x=its, y=[h["compute_fraction"] for h in history], name="compute fraction", yaxis="y2",
                   line=dict(color="#d62728")),
    ])
    if target is not None:
        fig.add_hline(y=target, yref="y2", line=dict(color="#d62728", dash="dash"), annotation_text="target",
                      annotation_position="top left")
    fig.update_layout(xaxis_title="iteration", height=380, font=dict(size=15), legend=dict(orientation="h", y=1.15),
                      yaxis=dict(title="MSE (log)", type="log", exponentformat="power", showexponent="all"),
                      yaxis2=dict(title="compute fraction", overlaying="y", side="right", range=[0, 1.05], dtick=0.2))
    return fig

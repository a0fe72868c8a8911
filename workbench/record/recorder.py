"""Recording every selected block's output at every denoiser call of a stock pipeline run.

Observation only: forward hooks on the blocks and on the denoiser, attached for one run and always removed
(``try/finally``), and the pipeline's own ``__call__`` drives sampling -- no copy of the sampling loop. Streaming
statistics (adjacent-step cosine similarity and relative L1 per block and sample) are computed on the model's device
during the run, so a large model can be analysed without storing feature maps at all.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from frdiff.blocks import denoiser_of, first_tensor, stream_tensor
from workbench.conditions import call_kwargs
from workbench.record.plan import (
    REDUCTIONS,
    BudgetError,
    RecordPlan,
    Reduction,
    check_budget,
    plan_recording,
    reduce_map,
    reduced_shape,
)
from workbench.record.store import (
    ARRAYS,
    FORMAT,
    MANIFEST,
    VERSION,
    OutDirError,
    check_out_dir,
    free_disk,
    remove_run_files,
    replace_run,
    run_bytes,
    write_manifest,
    written_record,
)

# Pipelines whose CFG batch puts the conditional half first; every other known one is [uncond, cond].
_COND_FIRST = {"DiTPipeline"}


def adjacent_stats(cur: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cosine similarity and relative L1 Σ|cur − prev| / Σ|prev| (the FRDiff paper)."""
    a, b = cur.flatten(1).float(), prev.flatten(1).float()
    cos = F.cosine_similarity(a, b, dim=1, eps=1e-12)
    rel = (a - b).abs().sum(1) / b.abs().sum(1).clamp_min(1e-12)
    return cos, rel


def _timestep_of(args: tuple, kwargs: dict) -> int:
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if t is None:
        return -1
    t = torch.as_tensor(t)
    return int(t.flatten()[0].item()) if t.numel() else -1


class Recorder:
    """Hooks that write one run into ``out_dir`` step by step. Use as a context manager around a pipeline call."""

    def __init__(self, pipe, plan: RecordPlan, out_dir: str | Path, manifest: dict,
                 progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                 flush_every_s: float = 3.0):
        self.pipe, self.plan, self.out = pipe, plan, Path(out_dir)
        # Steps are buffered on the device and written together at most every flush_every_s seconds (and always
        # when the run ends or fails): per-step writes of many small chunks would cost more than the statistics.
        self.flush_every_s = flush_every_s
        self._buffer: dict[str, list[torch.Tensor]] = {}
        self._flushed = 0
        self._last_flush = 0.0
        self.manifest = manifest
        self.progress, self.cancel = progress, cancel
        self.denoiser = denoiser_of(pipe)
        self.step = 0
        self._handles: list = []
        self._prev: dict[str, torch.Tensor] = {}
        self._current: dict[str, torch.Tensor] = {}
        self._latents: torch.Tensor | None = None
        self._timestep = -1

    def _create_arrays(self) -> None:
        p = self.plan
        folder = self.out / ARRAYS
        self.out.mkdir(parents=True, exist_ok=True)
        try:  # claims the folder: mkdir fails when it exists, so two recorders never share (or wipe) one store
            folder.mkdir()
        except FileExistsError:
            raise OutDirError(f"{folder} already exists: another recording is writing into {self.out}, or an "
                              "earlier one left its arrays there; record into a new folder") from None
        root = zarr.open_group(str(folder), mode="w-")
        nblocks = len(p.blocks)
        # Every chunk carries a crc32c checksum (a corrupted chunk raises when read) and is written even when it
        # holds only the fill value, so a missing chunk file always means damage; unwritten steps read as NaN.
        checked = {"config": {"write_empty_chunks": True}, "fill_value": np.nan}
        compressed = [ZstdCodec(level=0), Crc32cCodec()]
        # Small per-step arrays are chunked 10 steps at a time: one file per step would cost more than the data.
        k_steps = min(10, p.steps)
        arrays = self._arrays = {}  # written through these handles: the write_empty_chunks setting is not stored
        for k in ("cosine", "rel_l1"):
            arrays[f"stats/{k}"] = root.create_array(
                f"stats/{k}", shape=(p.steps, nblocks, p.batch), chunks=(k_steps, nblocks, p.batch),
                dtype="float32", compressors=compressed, **checked)
        if p.reduction.maps:
            for i, b in enumerate(p.blocks):
                shape = reduced_shape(tuple(b["output_shape"]), p.reduction)
                # One chunk per step and CFG half (a reader of one half reads only it); not compressed, since float
                # features barely compress and skipping it halves write and read time (the checksum stays).
                chunk = (1, p.images, *shape[1:])
                arrays[f"features/{i}"] = root.create_array(
                    f"features/{i}", shape=(p.steps, *shape), chunks=chunk, compressors=[Crc32cCodec()],
                    dtype="float16" if p.reduction.float16 else "float32", **checked)
        for key, n in (("denoiser_output", p.batch), ("latents", p.images)):
            arrays[key] = root.create_array(key, shape=(p.steps, n, *p.io_shape), chunks=(k_steps, n, *p.io_shape),
                                            dtype="float32", compressors=compressed, **checked)
        self.root = root

    def __enter__(self) -> Recorder:
        self._create_arrays()
        self.manifest["written"] = written_record(self._arrays, 0)
        write_manifest(self.out, self.manifest)
        self._last_flush = time.perf_counter()
        modules = dict(self.denoiser.named_modules())
        names = [b["name"] for b in self.plan.blocks]
        self._names = names
        for name in names:
            self._handles.append(modules[name].register_forward_hook(self._block_hook(name)))
        self._handles.append(self.denoiser.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        self._handles.append(self.denoiser.register_forward_hook(self._post_hook, with_kwargs=True))
        return self

    def _block_hook(self, name: str):
        def hook(_m, _args, output):
            t = stream_tensor(output)
            if t is None or name in self._current:
                return
            self._current[name] = t.detach()

        return hook

    def _pre_hook(self, _m, args, kwargs):
        if self.step >= self.plan.steps:
            raise RuntimeError(f"the denoiser was called more than the planned {self.plan.steps} times; "
                               "record one pipeline call whose scheduler evaluates once per step")
        if self.cancel is not None and self.cancel():
            raise KeyboardInterrupt("recording cancelled")
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self._latents = sample.detach()[: self.plan.images]
        self._timestep = _timestep_of(args, kwargs)
        self._current = {}

    def _post_hook(self, _m, _args, _kwargs, output):
        s, p = self.step, self.plan
        nb = len(self._names)
        cos = torch.full((nb, p.batch), float("nan"), device=self._latents.device)
        rel = torch.full_like(cos, float("nan"))
        maps = []
        for i, name in enumerate(self._names):
            cur = self._current.get(name)
            if cur is None:
                raise RuntimeError(f"block {name} did not run at step {s}")
            if name in self._prev:
                cos[i], rel[i] = adjacent_stats(cur, self._prev[name])
            self._prev[name] = cur
            if p.reduction.maps:
                maps.append(reduce_map(cur, p.reduction))
        arrays = {"stats/cosine": cos, "stats/rel_l1": rel, "denoiser_output": first_tensor(output).detach().float(),
                  "latents": self._latents.float()}
        arrays.update({f"features/{i}": m for i, m in enumerate(maps)})
        for key, value in arrays.items():
            self._buffer.setdefault(key, []).append(value)
        self.manifest["recorded_timesteps"].append(self._timestep)
        self.step += 1
        if time.perf_counter() - self._last_flush >= self.flush_every_s or self.step == p.steps:
            self.flush()
        if self.progress:
            self.progress(self.step, p.steps)

    def flush(self) -> None:
        """Write the buffered steps (one device→host transfer per array), then the manifest that covers them and
        records what was written (steps, chunks per array), so a reader can tell a missing chunk from an unwritten
        one."""
        if self.step > self._flushed:
            s0, s1 = self._flushed, self.step
            for key, values in self._buffer.items():
                self._arrays[key][s0:s1] = torch.stack(values).cpu().numpy()
            self._buffer.clear()
            self._flushed = s1
            self.manifest["steps_done"] = s1
            self.manifest["written"] = written_record(self._arrays, s1)
            write_manifest(self.out, self.manifest)
        self._last_flush = time.perf_counter()

    def __exit__(self, exc_type, exc, tb) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        # Steps finished before a failure are kept; a step that failed half-way was never buffered.
        self.flush()
        self._prev.clear()
        self._current.clear()
        self.manifest["complete"] = exc_type is None and self.step == self.plan.steps
        if exc_type is not None:
            self.manifest["error"] = f"{exc_type.__name__}: {exc}"
        write_manifest(self.out, self.manifest)


def package_versions() -> dict:
    import diffusers

    return dict(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
                zarr=zarr.__version__, numpy=np.__version__)


def base_manifest(pipe, model_id: str, plan: RecordPlan, scheduler_name: str, steps: int, seeds: list[int],
                  conditions: list, guidance_scale: float, cfg_layout: str) -> dict:
    """The manifest written before the first step (``complete: false`` until the run ends)."""
    denoiser = denoiser_of(pipe)
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps)
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"id": model_id, "architecture": type(denoiser).__name__, "pipeline": type(pipe).__name__},
        "scheduler": {"name": scheduler_name, "class": type(pipe.scheduler).__name__,
                      "config": dict(pipe.scheduler.config)},
        "steps": steps,
        "timesteps": [int(t) for t in sched.timesteps],
        "recorded_timesteps": [],
        "seeds": seeds,
        "conditions": conditions,
        "guidance_scale": guidance_scale,
        # a guidance-distilled model (Flux) sees one half whatever the guidance scale: the batch says which layout
        "cfg": {"layout": cfg_layout if plan.batch == 2 * plan.images else "none", "images": plan.images,
                "batch": plan.batch},
        "reduction": asdict(plan.reduction),
        "blocks": plan.blocks,
        "dtype": str(denoiser.dtype).replace("torch.", ""),
        "estimate_bytes": plan.estimate_bytes,
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "steps_done": 0,
    }


def cfg_layout(pipe, guidance_scale: float) -> str:
    """Order of the halves in the denoiser's CFG batch: ``uncond_first`` (SD, ours), ``cond_first`` (DiT)."""
    if guidance_scale <= 1.0:
        return "none"
    return "cond_first" if type(pipe).__name__ in _COND_FIRST else "uncond_first"


def recording_call(pipe, conditions: list, seeds: list[int], steps: int, guidance_scale: float, options=None):
    """The one pipeline call a recording makes: image i from seed ``seeds[i]`` and ``conditions[i]`` (a class for
    the shipped pipelines, a prompt for text-to-image ones, with ``options``); text-to-image pipelines stop at the
    latents (decoding is not recorded)."""
    from workbench.conditions import takes_prompts

    def call():
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return pipe(**call_kwargs(pipe, list(conditions), options), num_inference_steps=steps,
                    guidance_scale=guidance_scale, generator=gens,
                    output_type="latent" if takes_prompts(pipe) else "pt")

    return call


def record_run(pipe, model_id: str, out_dir: str | Path, labels: list[int] | None = None,
               prompts: list[str] | None = None, seeds: list[int] | None = None, steps: int = 50,
               scheduler: str = "ddim", reduction: str | Reduction = "pool16", blocks: list[str] | None = None,
               guidance_scale: float | None = None, disk_budget: int | None = None, memory_budget: int | None = None,
               progress: Callable[[int, int], None] | None = None,
               cancel: Callable[[], bool] | None = None, part: dict | None = None, overwrite: bool = False,
               options=None) -> Path:
    """Record one sampling run of ``pipe`` (classes for our pipelines, prompts for text-to-image ones, with
    ``options``: a :class:`workbench.conditions.Options` of negative prompt and size, kept in the manifest) into
    ``out_dir``. The budget is checked before sampling starts; the store is written step by step.

    ``out_dir`` must be new or empty (:func:`~workbench.record.store.check_out_dir`); one holding an earlier run is
    refused unless ``overwrite``, which replaces only that run's own files. A refusal (folder, budget, steps)
    creates nothing.

    Under ``torchrun`` (:mod:`workbench.distributed`) each rank records its share of the seeds into
    ``out_dir/part-<rank>`` and rank 0 writes the manifest that joins the parts into one run (see
    :func:`record_sharded`); ``part`` is that bookkeeping, stored in a part's manifest."""
    from workbench import distributed
    from workbench.models.schedulers import check_steps, scheduler_name, scheduler_swapped

    red = REDUCTIONS[reduction] if isinstance(reduction, str) else reduction
    conditions = labels if labels is not None else prompts
    if not conditions:
        raise ValueError("give classes (labels) or prompts to record")
    seeds = seeds if seeds is not None else list(range(len(conditions)))
    if len(seeds) != len(conditions):
        raise ValueError(f"{len(seeds)} seeds for {len(conditions)} images")
    if part is None and distributed.is_distributed():
        return record_sharded(pipe, model_id, out_dir, labels=labels, prompts=prompts, options=options, seeds=seeds,
                              steps=steps,
                              scheduler=scheduler, reduction=red, blocks=blocks, guidance_scale=guidance_scale,
                              disk_budget=disk_budget, memory_budget=memory_budget, progress=progress, cancel=cancel,
                              overwrite=overwrite)
    target = Path(out_dir)
    earlier = check_out_dir(target, overwrite)  # before the model runs: a refusal costs nothing
    # overwriting: this run is recorded inside the earlier one's folder (the same file system), which it replaces
    # only once complete, by renames (an interrupted or failed run leaves the earlier one as it was); a rank's part of
    # a sharded run replaces its part in place
    swap = earlier and part is None
    out = target / f".new-{os.getpid()}" if swap else target
    with scheduler_swapped(pipe, scheduler):
        check_steps(pipe.scheduler, steps)
        if guidance_scale is None:
            guidance_scale = float(getattr(pipe.config, "default_guidance_scale", 7.5))

        call = recording_call(pipe, conditions, seeds, steps, guidance_scale, options)
        t0 = time.perf_counter()
        plan = plan_recording(pipe, call, steps, len(conditions), red, blocks)
        # the free disk where the run will be (nothing is created to measure it), plus what overwriting a part frees
        try:
            check_budget(plan, disk_budget, memory_budget,
                         free_disk(target) + (run_bytes(target) if earlier and not swap else 0))
        except BudgetError as exc:
            if swap:
                raise BudgetError(f"{exc} (--overwrite keeps the earlier run until this one is complete; remove "
                                  f"it first to record in its space)") from None
            raise
        manifest = base_manifest(pipe, model_id, plan, scheduler or scheduler_name(pipe.scheduler), steps, seeds,
                                 list(conditions), guidance_scale,
                                 cfg_layout(pipe, guidance_scale))
        if options is not None and options.as_dict():
            manifest["options"] = options.as_dict()
        if part is not None:
            manifest["part"] = part
        manifest["timing"] = {"plan_s": time.perf_counter() - t0}
        if earlier and not swap:
            remove_run_files(out)
        if swap and out.exists():  # a hard-killed earlier attempt of this process id
            shutil.rmtree(out)
        made = not out.exists()
        recorder = Recorder(pipe, plan, out, manifest, progress=progress, cancel=cancel)
        try:
            with recorder:
                t1 = time.perf_counter()
                call()
                manifest["timing"]["sampling_s"] = time.perf_counter() - t1
        except BaseException:
            if swap:  # the earlier run in target is as it was
                shutil.rmtree(out, ignore_errors=True)
            elif made and out.is_dir() and not any(out.iterdir()):  # refused before writing: leave nothing
                out.rmdir()
            raise
        if swap:
            replace_run(out, target)
        return target


def part_name(rank: int) -> str:
    return f"part-{rank:05d}"


def record_sharded(pipe, model_id: str, out_dir: str | Path, labels: list[int] | None = None,
                   prompts: list[str] | None = None, seeds: list[int] | None = None, overwrite: bool = False,
                   **kwargs) -> Path:
    """:func:`record_run` as one rank of a torchrun job: this rank's contiguous share of the seeds goes to
    ``out_dir/part-<rank>`` (a complete store of its own); rank 0 writes ``out_dir/manifest.json`` listing every
    part and its seeds, before sampling (``complete: false``) and again once every rank has reported (complete, or
    which ranks failed and why). :class:`~workbench.record.store.FeatureStore` reads the folder as one run.

    Rank 0 first checks ``out_dir`` (every rank waits for its verdict, so a refusal stops the job before anything
    is written; each rank checks its own part folder); with ``overwrite`` it removes the earlier run's manifest and
    the parts no rank of this job will replace. When every rank fails before writing its part, rank 0 removes the
    manifest it wrote: nothing is left behind."""
    from workbench import distributed

    ctx = distributed.context()
    conditions = list(labels if labels is not None else prompts)
    seeds = list(seeds)
    out = Path(out_dir)
    parts = []
    for r in range(ctx.world_size):
        a, b = distributed.shard_bounds(len(seeds), r, ctx.world_size)
        if b > a:  # more ranks than seeds: the last ranks have nothing to record
            parts.append({"path": part_name(r), "rank": r, "seeds": seeds[a:b]})
    top = {"format": FORMAT, "version": VERSION, "sharded": True, "world_size": ctx.world_size,
           "model": {"id": model_id}, "seeds": seeds, "conditions": conditions, "parts": parts,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "complete": False,
           "failed": []}
    made = not out.exists()

    def start() -> None:  # rank 0 only: check the folder, clear an earlier run (overwrite), write the manifest
        if ctx.rank == 0:
            if check_out_dir(out, overwrite, sharded=True):
                remove_run_files(out, keep_parts={p["path"] for p in parts})
            write_manifest(out, top)

    distributed.together(start)
    a, b = distributed.shard_bounds(len(seeds), ctx.rank, ctx.world_size)
    mine = {"labels": labels[a:b] if labels is not None else None,
            "prompts": prompts[a:b] if prompts is not None else None}
    part = {"rank": ctx.rank, "world_size": ctx.world_size, "run": ".."}

    def record_part() -> None:
        if b > a:
            record_run(pipe, model_id, out / part_name(ctx.rank), seeds=seeds[a:b], part=part, overwrite=overwrite,
                       **mine, **kwargs)

    try:
        distributed.together(record_part, note=f"what the other ranks recorded is in {out}, marked incomplete")
    except distributed.RankFailed as exc:
        if ctx.rank == 0:
            if not any((out / p["path"] / MANIFEST).is_file() for p in parts):  # no rank wrote anything
                (out / MANIFEST).unlink(missing_ok=True)
                if made and not any(out.iterdir()):
                    out.rmdir()
                raise distributed.RankFailed(exc.failures, exc.world_size, "nothing was written") from None
            top["failed"] = [{"rank": r, "error": msg} for r, msg in exc.failures]
            write_manifest(out, top)
        raise
    if ctx.rank == 0:
        top["complete"] = True
        write_manifest(out, top)
    distributed.barrier()  # the joined manifest is final before any rank reads the run back
    return out

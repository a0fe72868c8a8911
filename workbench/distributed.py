"""Running ``record``, ``run`` and ``autofr`` over several processes (GPUs, nodes) with ``torch.distributed``.

The launcher is PyTorch's own: ``torchrun --nproc_per_node N -m workbench <command> ...`` starts one process per
GPU and sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``; this module reads them,
joins the process group (NCCL on CUDA, gloo on CPU) and gives the commands what they need:

- :func:`shard`: a rank's contiguous share of the seeds (in order, sizes differing by at most one), so the parts
  concatenated in rank order are the original seed order.
- :func:`all_gather_tensor` / :func:`all_gather_json`: gathering per-sample results. Tensors go through
  ``all_gather`` (padded to the largest share); small dicts through JSON encoded as bytes -- no pickle, not even
  between our own ranks (``all_gather_object`` pickles).
- :func:`together`: run a rank-local phase (recording a part, sampling a shard) and then agree on whether every rank
  succeeded. Every rank takes part in the agreement even when its phase raised, so a failure never leaves the others
  waiting in a collective; every rank then raises :class:`RankFailed`, whose message names the failed ranks.
- :func:`run_command`: what ``python -m workbench`` does under ``torchrun``: join the group, run the command,
  report from rank 0 only (the other ranks' stdout is discarded), and turn any exception into one ``error:`` line
  that names the rank. A rank that dies outright (killed, segfault) is handled by torchrun's elastic agent, which
  stops the whole job; a rank stuck in a collective gives up after ``FRDIFF_DIST_TIMEOUT_S`` seconds (default 1800).

docs/distributed.md has the commands for one GPU, several GPUs and several nodes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

COMMANDS = ("record", "run", "autofr", "bench", "train")  # the commands that know how to share work between ranks
TIMEOUT_ENV = "FRDIFF_DIST_TIMEOUT_S"


@dataclass(frozen=True)
class Context:
    """This process's place in the job. ``device``: where collectives run (``cuda:LOCAL_RANK`` with NCCL, else CPU)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


_context: Context | None = None


class RankFailed(RuntimeError):
    """One or more ranks failed in a phase every rank joined; raised on every rank with the same message."""

    def __init__(self, failures: list[tuple[int, str]], world_size: int, note: str = ""):
        self.failures, self.world_size = failures, world_size
        text = "; ".join(f"rank {r} of {world_size}: {msg}" for r, msg in failures)
        super().__init__(text + (f" ({note})" if note else ""))


def launched() -> bool:
    """True when started by ``torchrun`` (or any launcher setting ``WORLD_SIZE``) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def context() -> Context | None:
    """The joined group's :class:`Context`, or None in a single process."""
    return _context


def is_distributed() -> bool:
    return _context is not None and _context.world_size > 1


def is_main() -> bool:
    """Rank 0, or a single process: the one that writes shared files and reports."""
    return _context is None or _context.rank == 0


def init(timeout_s: float | None = None) -> Context:
    """Join the process group described by torchrun's environment variables (idempotent)."""
    global _context
    if _context is not None:
        return _context
    try:
        rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except KeyError as exc:
        raise RuntimeError(f"{exc.args[0]} is not set: start distributed runs with torchrun") from None
    timeout = timedelta(seconds=float(timeout_s or os.environ.get(TIMEOUT_ENV, 1800)))
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local} but only {torch.cuda.device_count()} GPU(s) on this node; "
                               "use --nproc_per_node ≤ the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)  # "cuda" without an index now means this rank's GPU
        backend = "nccl"
        dist.init_process_group(backend, timeout=timeout, device_id=device)
    else:
        device, backend = torch.device("cpu"), "gloo"
        dist.init_process_group(backend, timeout=timeout)
    _context = Context(rank, world, local, device, backend)
    return _context


def shutdown() -> None:
    global _context
    if _context is not None and dist.is_initialized():
        dist.destroy_process_group()
    _context = None


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank's contiguous share of ``n`` items; the first ``n mod world_size`` ranks take one
    more."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[T], ctx: Context | None = None) -> list[T]:
    """This rank's contiguous share of ``items`` (all of them in a single process)."""
    ctx = ctx or _context
    if ctx is None:
        return list(items)
    start, stop = shard_bounds(len(items), ctx.rank, ctx.world_size)
    return list(items[start:stop])


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor on ``t``'s device and dtype; ``t`` itself in a single process)."""
    if not is_distributed():
        return t
    buf = t.detach().to(_context.device, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_gather_tensor(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t`` (same dtype and trailing shape, any length along dim 0), in rank order, on ``t``'s
    device. Shares are padded to the longest for ``all_gather`` and trimmed after."""
    if not is_distributed():
        return [t]
    ctx = _context
    n = torch.tensor([t.shape[0]], device=ctx.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    longest = max(sizes_i)
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=ctx.device)
    padded[: t.shape[0]] = t.detach().to(ctx.device)
    out = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(out, padded)
    return [o[:k].to(t.device) for o, k in zip(out, sizes_i, strict=True)]


def all_gather_json(obj) -> list:
    """Every rank's JSON-serialisable ``obj``, in rank order (sent as UTF-8 bytes in a uint8 tensor, no pickle)."""
    if not is_distributed():
        return [obj]
    data = torch.frombuffer(bytearray(json.dumps(obj, default=str).encode()), dtype=torch.uint8)
    return [json.loads(bytes(part.cpu().numpy().tobytes()).decode()) for part in all_gather_tensor(data)]


def _describe(exc: BaseException) -> str:
    msg = str(exc)
    from workbench.errors import UserError

    return msg if isinstance(exc, UserError | RankFailed) and msg else f"{type(exc).__name__}: {msg}"


def agree(error: BaseException | None, note: str = "") -> None:
    """Every rank says whether its phase failed; raises :class:`RankFailed` on every rank when one did."""
    if not is_distributed():
        if error is not None:
            raise error
        return
    statuses = all_gather_json(None if error is None else _describe(error))
    failures = [(r, msg) for r, msg in enumerate(statuses) if msg is not None]
    if failures:
        raise RankFailed(failures, _context.world_size, note) from error


def together(fn: Callable[[], T], note: str = "") -> T:
    """Run the rank-local ``fn``, then :func:`agree` on the outcome (see the module docstring)."""
    error: BaseException | None = None
    result = None
    try:
        result = fn()
    except Exception as exc:  # reported through the agreement, raised on every rank
        error = exc
    agree(error, note)
    return result


def gather_comparison(local: dict, labels: list[int], seeds: list[int]) -> dict:
    """One :func:`workbench.compare.compare` result for all ranks from each rank's result on its :func:`shard` of
    ``labels`` / ``seeds`` (run with ``keep_images=True``).

    The images of every variant are gathered in seed order and the metrics recomputed on them exactly as a single
    process computes them (PSNR/SSIM/max-abs-diff per sample, class accuracy, FD-shapes over all samples), so the
    result equals the single-process one whenever the images do. Latency: the slowest rank's (the job's wall time
    for the variant), with every rank's in ``latency_per_rank_s``; the speedup is the ratio of those. Every rank
    gets the same result, images included.
    """
    from workbench.metrics import compare_images
    from workbench.sampling import SampleResult, judge

    def gathered(entry: dict) -> tuple[torch.Tensor, list[float]]:
        images = torch.cat(all_gather_tensor(entry["images"].float().cpu().contiguous()))
        return images, [float(x) for x in all_gather_json(entry["latency_s"])]

    ref_images, ref_lat = gathered(local["reference"])
    ref = {**local["reference"], "latency_s": max(ref_lat), "latency_per_rank_s": ref_lat, "images": ref_images,
           **judge(SampleResult(ref_images, list(labels), list(seeds), max(ref_lat)))}
    out = {**local, "reference": ref, "variants": [], "n": len(seeds), "ranks": len(ref_lat)}
    for entry in local["variants"]:
        images, lat = gathered(entry)
        metrics = compare_images(ref_images, images)
        metrics.pop("psnr_per_image")
        out["variants"].append({**entry, "latency_s": max(lat), "latency_per_rank_s": lat,
                                "reference_latency_s": ref["latency_s"], "speedup": ref["latency_s"] / max(lat),
                                **metrics, **judge(SampleResult(images, list(labels), list(seeds), max(lat))),
                                "images": images})
    return out


def refuse(message: str) -> NoReturn:
    """Stop a command for a reason every rank finds alike (bad arguments): rank 0 raises the one ``UserError`` the
    user sees, the other ranks exit quietly with the same status."""
    from workbench.errors import UserError

    if is_main():
        raise UserError(message)
    raise SystemExit(2)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def run_command(args) -> dict | None:
    """``args.func(args)`` as one rank of a torchrun job (see the module docstring). Returns rank 0's report; the
    other ranks return theirs with ``args.json`` cleared, so only rank 0 prints."""
    from workbench.errors import UserError

    if args.command not in COMMANDS:
        raise UserError(f"`{args.command}` does not run under torchrun; only {', '.join(COMMANDS)} share their work "
                        "between ranks")
    try:
        ctx = init()
    except RuntimeError as exc:
        raise UserError(f"cannot join the torchrun job: {exc}") from None
    where = f"rank {ctx.rank} of {ctx.world_size}"
    quiet = contextlib.redirect_stdout(io.StringIO()) if ctx.rank else contextlib.nullcontext()
    try:
        with quiet:
            report = args.func(args)
    except RankFailed as exc:
        if ctx.rank == 0:  # every rank knows; rank 0 says it once
            raise UserError(str(exc)) from None
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise UserError(f"{where}: {_describe(exc)}") from None
    finally:
        shutdown()
    if ctx.rank:
        args.json = False
    return report

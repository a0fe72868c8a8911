"""``bench run-throughput``: images per second of the ``run`` path on one GPU and, under ``torchrun``, on several.

Model: the Stable Diffusion 1.5 UNet architecture at 512 px with CFG (:func:`workbench.bench.engine.build`,
``sd15-unet``, random weights, fp16 on CUDA; ``small`` on the CPU). What is timed is what ``run`` does per variant on
each rank: its share of the seeds (:func:`workbench.distributed.shard`) sampled in batches through
:func:`workbench.sampling.sample`, inside :func:`frdiff.apply` for a policy -- for ``none`` (no reuse) and uniform
M=2. The metrics ``run`` computes afterwards (PSNR/SSIM against the reference, on rank 0) are not timed: they do
not scale with GPUs and depend on the classifier, which does not apply to SD latents.

Fairness between 1 and N GPUs: the same seeds (images) in total, the same batch size per pipeline call, a warm-up
run of every shape before timing, and wall time from a barrier to a barrier (after a device sync), so the slowest
rank sets the time. ``scripts/device_throughput.sh`` runs 1 and 2 GPUs and writes the ratio.

Imports neither zarr nor scikit-image (the GPU machine carries only torch and a diffusers wheel); run it as
``python -m workbench.bench.throughput`` there, or ``python -m workbench bench run-throughput`` where the whole
workbench is installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from workbench import distributed

VARIANTS = (("none", None), ("uniform M=2", 2))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_run_throughput(repeats: int = 1, small: bool | None = None, seeds: int | None = None,
                         steps: int | None = None, batch_size: int | None = None) -> dict:
    """The ``run-throughput`` suite on this process's share of the job (the whole job in a single process).

    seeds: images in total, over all ranks (default 32; ``small``: 8); steps: sampling steps (50; ``small``: 4);
    batch_size: images per pipeline call on each rank (16; ``small``: 2). Every rank returns the same report.
    """
    import frdiff
    from workbench.bench.engine import build
    from workbench.sampling import sample

    ctx = distributed.context()
    cuda = torch.cuda.is_available()
    device = ctx.device if ctx is not None else torch.device("cuda" if cuda else "cpu")
    small = (device.type != "cuda") if small is None else small
    seeds = seeds or (8 if small else 32)
    steps = steps or (4 if small else 50)
    batch_size = batch_size or (2 if small else 16)
    world = ctx.world_size if ctx is not None else 1
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = build("sd15-unet", device, dtype, small)
    all_seeds = list(range(seeds))
    mine = distributed.shard(all_seeds)
    den = pipe.denoiser
    policies = {name: None if m is None else frdiff.make_preset("uniform", den, steps, interval=m)
                for name, m in VARIANTS}

    def run(policy, n_steps: int, seeds_: list[int]) -> float:
        if not seeds_:
            return 0.0
        if policy is None:
            with frdiff.exclusive(pipe):
                return sample(pipe, [0] * len(seeds_), seeds_, steps=n_steps, batch_size=batch_size).latency_s
        with frdiff.apply(pipe, policy):
            return sample(pipe, [0] * len(seeds_), seeds_, steps=n_steps, batch_size=batch_size).latency_s

    # warm-up: every batch shape this rank will run, with and without the reuse hooks (kernel choice, allocator)
    shapes = sorted({len(mine[i:i + batch_size]) for i in range(0, len(mine), batch_size)})
    for n in shapes:
        run(None, 2, mine[:n])
    if mine:
        run(frdiff.make_preset("uniform", den, 3, interval=2), 3, mine[: shapes[0]])  # the reuse paths' kernels
    rows = {}
    for name, policy in policies.items():
        walls, per_rank = [], []
        for _ in range(max(1, repeats)):
            _sync(device)
            distributed.barrier()
            t0 = time.perf_counter()
            sampling_s = run(policy, steps, mine)
            _sync(device)
            distributed.barrier()
            walls.append(time.perf_counter() - t0)
            per_rank.append(distributed.all_gather_json(sampling_s))
        wall = statistics.median(walls)
        rows[name] = {"seconds": wall, "images_per_s": seeds / wall, "walls_s": walls,
                      "sampling_s_per_rank": [statistics.median(r[k] for r in per_rank) for k in range(world)]}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"suite": "run-throughput", "model": "sd15-unet" + (" (small)" if small else ""), "device": name,
            "processes": world, "backend": ctx.backend if ctx is not None else None, "torch": torch.__version__,
            "dtype": str(dtype).replace("torch.", ""), "images": seeds, "images_per_rank": len(mine),
            "steps": steps, "batch_size": batch_size, "repeats": repeats, "variants": rows}


def main(argv: list[str] | None = None) -> int:
    """``[torchrun --nproc_per_node N] python -m workbench.bench.throughput``: the suite without the CLI's other
    imports; prints one JSON object from rank 0."""
    p = argparse.ArgumentParser(prog="python -m workbench.bench.throughput", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="images in total (default 32; --small 8)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 50; --small 4)")
    p.add_argument("--batch-size", type=int, default=None, help="images per pipeline call per rank (default 16)")
    p.add_argument("--repeats", type=int, default=1, help="timed rounds per variant; the median is reported")
    p.add_argument("--small", action="store_true", help="reduced-size UNet (the CPU variant)")
    args = p.parse_args(argv)
    ctx = distributed.init() if distributed.launched() else None
    try:
        report = bench_run_throughput(repeats=args.repeats, small=True if args.small else None, seeds=args.seeds,
                                      steps=args.steps, batch_size=args.batch_size)
    except Exception as exc:
        where = f"rank {ctx.rank} of {ctx.world_size}: " if ctx is not None else ""
        print(f"error: {where}{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    if ctx is None or ctx.rank == 0:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

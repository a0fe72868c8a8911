"""Reading a run for analysis: one CFG half, the next blocks read while one is analysed.

``FeatureStore.features`` reads every step of both CFG halves and then slices one half in memory; for analysis
only one half is needed, so this reader reads that half's chunks only (half the bytes), straight from the chunk
files when they are uncompressed (as the recorder writes them), through zarr otherwise. Blocks are read on a
background thread, ``prefetch`` blocks ahead, so reading overlaps with the (torch, GIL-releasing) computation.
The streaming statistics of all blocks are read in one call (``read_stats``) instead of one whole-array read per
block.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec

from workbench.record.store import ARRAYS, FeatureStore, StoreError


def half_slice(store: FeatureStore, cond: bool | None) -> slice:
    """The batch positions of one CFG half (``cond`` True/False), or all of them (``None`` or no CFG)."""
    cfg = store.manifest["cfg"]
    if cond is None or cfg["layout"] == "none":
        return slice(None)
    n = int(cfg["images"])
    first = cfg["layout"] == "cond_first"
    return slice(0, n) if cond == first else slice(n, None)


def _chunk_files(array: zarr.Array, folder: Path, steps: int, half: slice, what: str = "",
                 strict: bool = False) -> np.ndarray | None:
    """Read ``array[:steps, half]`` straight from its chunk files when they hold raw bytes, else ``None``.

    The recorder writes block maps uncompressed, one chunk per step and CFG half; such a chunk file is, by the zarr
    v3 spec, the chunk's C-order bytes (the ``bytes`` codec), followed by their 4-byte crc32c when the array has
    the ``crc32c`` codec (stores of format 2), named by the array's chunk key encoding. Reading those files with
    ``readinto`` straight into the result skips zarr's per-chunk machinery, ~4× faster for 900 small chunks; the
    checksum is verified as zarr would, and one that fails it is a :class:`StoreError` naming ``what`` and the
    step. A missing chunk file reads as the fill value, as zarr reads it, unless ``strict`` (a recorded run, whose
    every chunk of the steps done was written): then it is a :class:`StoreError` too -- never zeros. Anything else
    (compression, other codecs or byte order, chunks that do not tile the request, a chunk file of the wrong size)
    returns ``None`` and zarr reads it.
    """
    codecs = array.metadata.codecs
    checked = len(codecs) == 2 and isinstance(codecs[1], Crc32cCodec)
    raw = len(codecs) in (1, 2) and isinstance(codecs[0], BytesCodec) and (len(codecs) == 1 or checked)
    endian = getattr(codecs[0], "endian", None) if raw else None
    if endian is None or endian.value != sys.byteorder:
        return None
    if checked:
        try:
            import google_crc32c  # zarr's own crc32c implementation (a dependency of zarr 3)
        except ImportError:
            return None
    shape, chunks = array.shape, array.chunks
    lo, hi, _ = half.indices(shape[1])
    per = chunks[1]
    if chunks[0] != 1 or tuple(chunks[2:]) != tuple(shape[2:]) or lo % per or (hi - lo) % per or hi > shape[1]:
        return None
    out = np.empty((steps, hi - lo, *shape[2:]), dtype=np.dtype(array.dtype))
    for step in range(steps):
        for k in range(lo // per, hi // per):
            target = out[step, k * per - lo:(k + 1) * per - lo]
            path = folder / array.metadata.encode_chunk_key((step, k) + (0,) * (len(shape) - 2))
            try:
                f = open(path, "rb")  # closed by the with below
            except FileNotFoundError:
                if not strict:  # never written: zarr's fill value
                    target[...] = array.metadata.fill_value
                    continue
                raise StoreError(f"{what or folder} has no data for step {step} (its chunk file "
                                 f"{path.name} is missing): the run is damaged") from None
            with f:
                if f.readinto(memoryview(target).cast("B")) != target.nbytes:
                    return None
                stored = f.read(5 if checked else 1)
            if not checked:
                if stored:
                    return None
                continue
            if len(stored) != 4:
                return None
            if np.uint32(google_crc32c.value(target.reshape(-1).view(np.uint8))).tobytes() != stored:
                raise StoreError(f"{what or folder} is corrupt at step {step}: its chunk fails its crc32c checksum")
    return out


def read_maps(store: FeatureStore, block: str, cond: bool | None = True) -> np.ndarray:
    """``[steps, batch, ...]`` maps of one block and CFG half, equal to ``store.features(block, cond)`` but reading
    only that half's chunks (straight from the chunk files where they are raw bytes). A damaged or corrupt block
    raises :class:`StoreError` naming it and the step."""
    if not store.has_maps:
        raise StoreError(f"run {store.directory} stored statistics only (reduction 'stats'), no feature maps")
    if block not in store.blocks:
        raise StoreError(f"block {block!r} was not recorded; recorded: {', '.join(store.blocks)}")
    if store.parts:  # a sharded run (torchrun): each part read the same way, joined in seed order
        return store.join_parts(lambda part, c: read_maps(part, block, c), cond)
    index = store.blocks.index(block)
    key = f"features/{index}"
    store.check_intact(key)
    folder = store.directory / ARRAYS / "features" / str(index)
    try:
        array = zarr.open_array(str(folder), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise StoreError(f"{store.directory}: block {block} ({key}) is missing ({exc})") from None
    half = half_slice(store, cond)
    maps = _chunk_files(array, folder, store.steps_done, half, what=f"{store.directory}: block {block} ({key})",
                        strict=True)
    return store.read_array(key, half) if maps is None else maps


def read_stats(store: FeatureStore, cond: bool | None = True) -> dict[str, np.ndarray]:
    """Streaming statistics of every block at once: ``cosine`` and ``rel_l1``, ``[steps, blocks, batch]`` (blocks in
    ``store.blocks`` order); ``[:, i]`` equals ``store.stats(store.blocks[i], cond)``, which reads the whole array
    once per block."""
    if store.parts:
        return {k: store.join_parts(lambda part, c, k=k: read_stats(part, c)[k], cond, axis=2)
                for k in ("cosine", "rel_l1")}
    half = half_slice(store, cond)
    return {k: store.read_array(f"stats/{k}", slice(None), half) for k in ("cosine", "rel_l1")}


def iter_maps(store: FeatureStore, blocks: Sequence[str] | None = None, cond: bool | None = True,
              prefetch: int = 2) -> Iterator[tuple[str, np.ndarray]]:
    """``(block, maps)`` for each block in order, reading up to ``prefetch`` blocks ahead on a background thread."""
    blocks = list(store.blocks if blocks is None else blocks)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-maps") as pool:
        pending = [pool.submit(read_maps, store, b, cond) for b in blocks[: prefetch + 1]]
        for i, name in enumerate(blocks):
            maps = pending[i].result()
            if i + prefetch + 1 < len(blocks):
                pending.append(pool.submit(read_maps, store, blocks[i + prefetch + 1], cond))
            pending[i] = None  # drop the reference: a block's maps live only while the caller holds them
            yield name, maps

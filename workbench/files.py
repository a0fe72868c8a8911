"""Writing result files so that a failed or interrupted write loses nothing: each file is written beside its target
under a temporary name and moved over it with ``os.replace`` (a reader, and the user, sees the old file or the new
one, never half of one: a full disk used to leave a truncated PNG in place of the earlier image), with the mode a
plain ``open`` gives a new file (``tempfile.mkstemp`` would make it readable by its owner only) or the replaced
file's own.

And the checks an output path gets before any work is done (``writable_parent``): a refusal after minutes of
sampling or training wastes them; one before costs nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def replacing(path: str | Path, binary: bool = False) -> Iterator[IO]:
    """``with replacing(path) as f: f.write(...)``: ``f`` is a temporary file beside ``path`` that replaces it when the
    block ends without an exception; otherwise it is removed and ``path`` is as it was. A new file gets the mode
    ``open`` would give it, a replaced one keeps its own."""
    path = Path(path)
    if path.is_symlink():  # write what the link points to, and keep the link
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    # a new name opened exclusively, as open() makes files (the umask's mode; mkstemp's would be owner-only)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.is_file():  # a replaced file keeps its mode
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically."""
    with replacing(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, value, **kwargs) -> Path:
    """``value`` as indented JSON plus a newline, atomically."""
    return write_text(path, json.dumps(value, indent=2, **kwargs) + "\n")


def image_format(path: str | Path) -> str:
    """Pillow's format for ``path``'s extension (``.png`` → ``PNG``); a ``ValueError`` naming the extensions it
    writes for one it does not know — checked before an image is made, not after."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    formats = Image.registered_extensions()
    if suffix not in formats or formats[suffix] not in Image.SAVE:
        raise ValueError(f"{path}: cannot write an image with extension {suffix or '(none)'!r}; "
                         f"use .png, .jpg or .webp")
    return formats[suffix]


def save_image(image, path: str | Path) -> Path:
    """A Pillow image saved to ``path`` atomically, in the format its extension names."""
    fmt = image_format(path)
    with replacing(path, binary=True) as f:
        image.save(f, format=fmt)
    return Path(path)


def writable_parent(path: str | Path) -> str | None:
    """Why ``path`` (a file or folder to create or replace) cannot be written, or ``None`` if it can: the nearest
    existing folder above it must be a folder (not a file) that this process may write into."""
    above = Path(path).absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        return f"{above} is a file, not a folder"
    if not os.access(above, os.W_OK | os.X_OK):
        return f"{above} is not writable"
    return None


def is_policy_file(path: str | Path, read: Callable[[Path], str] | None = None) -> bool:
    """Whether ``path`` holds an FRDiff policy file (JSON with ``"format": "frdiff-policy"``); anything else — a run's
    manifest, a JSON of another kind, text — is not one, and a command writing policies must not replace it."""
    try:
        text = (read or (lambda p: p.read_text(encoding="utf-8")))(Path(path))
        value = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(value, dict) and value.get("format") == "frdiff-policy"

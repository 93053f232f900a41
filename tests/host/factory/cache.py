"""The cache folder of generated files: built once (locked, temp file + atomic rename), reused afterwards."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

# Bump when the content of a generated file changes, so stale caches are not reused.
FORMAT_VERSION = 1
SEED = 1234


def cache_dir() -> Path:
    """Cache folder for generated models: ``$SPDINV_TEST_CACHE`` or ``~/.cache/spdinv-edit-tests``."""
    env = os.environ.get("SPDINV_TEST_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "spdinv-edit-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so that parallel test processes build a file only once (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builds just duplicate work; os.replace stays atomic
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    save_file(sd, str(path), metadata=metadata)


def _cached(
    name: str,
    build: Callable[[], dict[str, torch.Tensor]],
    metadata: dict[str, str],
    save: Callable[[dict[str, torch.Tensor], Path, dict[str, str]], None] = _save_safetensors,
) -> Path:
    """Return ``cache_dir()/name``, building it first if absent (temp file + atomic rename).

    ``save(state_dict, path, metadata)`` writes the file (safetensors by default).
    """
    target = cache_dir() / name
    if target.is_file():
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if target.is_file():
            return target
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            save(build(), tmp, metadata)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target

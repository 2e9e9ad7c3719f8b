"""Crash-safe file writes and content hashes: the bottom layer every run-directory writer uses.

Every file in a run directory is written to a temporary file in the same folder, flushed, fsync'ed and renamed
over its final name, so a run killed at any moment leaves either the old file or the new one, never a
truncated one. Hashes key the caches (outputs by input content, per-image metrics by image content).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)

#: Every temporary file this project writes is named `.<final name>.i2iz-<random>.tmp` (`atomic_path`), so a
#: cleanup can remove the leftovers of a killed writer and nothing else (a user's `.notes.tmp` never matches).
TMP_TAG = ".i2iz-"
TMP_PATTERN = re.compile(r"^\..+\.i2iz-[A-Za-z0-9_]+\.tmp$")


def cache_dir() -> Path:
    """The project cache (tiny presets, converted weights, sample data): $I2I_ZOO_CACHE or ~/.cache/i2i-zoo."""
    root = os.environ.get("I2I_ZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "i2i-zoo"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsync'ed and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; final files get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read JSON; a missing or unreadable (e.g. foreign, half-written) file gives `default`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_array(arr: Any) -> str:
    """Content hash of an array or tensor: dtype, shape and bytes (device and strides do not matter)."""
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().contiguous().numpy()
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def hash_obj(*parts: Any) -> str:
    """Hash of a JSON-able tuple of parts (keys sorted), for cache keys."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def config_hash(config: Any) -> str:
    """A stable short hash of a JSON-able configuration (keys sorted): part of the output cache key."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _kv_path(root: str | os.PathLike, key: str) -> Path:
    return Path(root) / key[:2] / f"{key}.json"


def _checksum(key: str, value: Any) -> str:
    return hash_obj("kv", key, value)


def kv_get(root: str | os.PathLike, key: str) -> Any:
    """Value stored under `key` in the JSON key-value cache dir `root` (one small file per key), or None.

    Each entry carries a checksum of (key, value): an entry that was edited, damaged, or written for another key
    is dropped with a message on stderr (and recomputed by the caller), never used."""
    path = _kv_path(root, key)
    if not path.exists():
        return None
    entry = read_json(path)
    if isinstance(entry, dict) and set(entry) == {"value", "checksum"} and entry["checksum"] == _checksum(
            key, entry["value"]):
        return entry["value"]
    if isinstance(entry, dict) and "checksum" not in entry and "value" in entry:
        return None  # an entry of the format before checksums: recomputed and rewritten, nothing to report
    drop_cache_entry(path, "its checksum does not match its content")
    return None


def kv_put(root: str | os.PathLike, key: str, value: Any) -> None:
    """Store a JSON-able `value` under `key` in the cache dir `root` (atomic; NaN/inf survive as JSON NaN/Infinity)."""
    value = json.loads(json.dumps(value, default=str))  # the checksum covers exactly what a reader gets back
    atomic_write_json(_kv_path(root, key), {"value": value, "checksum": _checksum(key, value)})


def drop_cache_entry(path: str | os.PathLike, why: str) -> None:
    """Remove a cache file that failed its check, saying so on stderr (the value is then recomputed)."""
    print(f"cache: dropped {path}: {why}; recomputing it", file=sys.stderr, flush=True)
    Path(path).unlink(missing_ok=True)


# Generated cache folders (tiny presets, random-weight encoders): built once, checked by content on every use.
SUMS = ".sha256.json"  # relative path -> sha256 of every file of a build, written at build time
STALE_BUILD_S = 3600  # a temporary build folder older than this belongs to a killed build


def _file_sums(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (SUMS, ".complete")}


def _matches(dest: Path) -> bool:
    """A complete build whose files are exactly those whose sums were written when it was built."""
    return (dest / ".complete").exists() and read_json(dest / SUMS) == _file_sums(dest)


def _verified(dest: Path) -> bool:
    """`_matches`, saying why not when a complete build fails it (edited, damaged, or built before checksums)."""
    if not (dest / ".complete").exists():
        return False
    if _matches(dest):
        return True
    why = "has no checksums (built by an older version)" if not (dest / SUMS).exists() else \
        "does not match the checksums written when it was built (edited or damaged)"
    print(f"cached build {dest} {why}; rebuilding it", file=sys.stderr, flush=True)
    return False


def _clean_stale_builds(dest: Path) -> None:
    """Temporary folders of killed builds of `dest` (`.<name>-<random>`, older than an hour): nothing else."""
    import time

    pattern = re.compile(rf"^\.{re.escape(dest.name)}-[A-Za-z0-9_]{{8}}$")
    for p in dest.parent.iterdir():
        try:
            if pattern.match(p.name) and p.is_dir() and time.time() - p.stat().st_mtime > STALE_BUILD_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            continue


def build_once(dest: Path, builder: Callable[[Path], None], label: str) -> Path:
    """Build a directory of generated files (a tiny preset, a random encoder) once: into a temporary sibling, with
    the sha256 of every file, marked `.complete`, renamed into place (atomic: concurrent builders are safe; an
    interrupted build leaves nothing that looks complete). A built directory is checked against its sums on every
    use and rebuilt, with a message, when its files were edited or damaged. Returns `dest`."""
    if _verified(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_builds(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        builder(tmp)
        (tmp / SUMS).write_text(json.dumps(_file_sums(tmp), indent=1))
        (tmp / ".complete").write_text(label + "\n")
        try:
            tmp.rename(dest)
        except OSError:  # another process finished first (keep it), or an old, edited or incomplete copy (swap)
            if not _matches(dest):
                old = dest.with_name(f".{dest.name}-old-{os.getpid()}")
                try:
                    dest.rename(old)
                    tmp.rename(dest)
                except OSError:  # a concurrent builder swapped first
                    pass
                shutil.rmtree(old, ignore_errors=True)
            if not _matches(dest):
                raise RuntimeError(f"could not put the cached build {label} in place at {dest}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest

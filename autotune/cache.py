"""Caches that make a trial cost the pruned prefill and little else.

`FeatureCache`: the vision tower's output for a video (after projector, pooling and image_newline) does not
depend on the AdaTP thresholds, so it is computed once per (model, video content, frames) and kept in memory
(LRU, bounded by bytes) and on disk (one `.pt` per key, loaded with `weights_only=True`, bounded by bytes,
oldest evicted first). Keys are content hashes: renaming or copying a video keeps its entry; editing it does not.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensor_digest(tensors: list[torch.Tensor]) -> str:
    """sha256 over the raw bytes of tensors (e.g. vision-tower weights, for the model part of a cache key)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().contiguous().cpu().reshape(-1)
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Memory-then-disk cache of tensors keyed by strings.

    memory_bytes: LRU bound in memory; disk_bytes: bound on the disk directory (None: no disk cache when
    directory is None). `hits`, `misses`, `computed` and `rejected` (disk entries that failed to load or to
    validate) count lookups, for tests and benchmarks.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, memory_bytes: int = 2 << 30,
                 disk_bytes: int = 20 << 30, pin_memory: bool = False) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.pin_memory = pin_memory  # page-locked host copies: faster, asynchronous copies to a GPU
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self._memory: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self._memory_used = 0
        self._digests: dict[tuple[str, int, int], str] = {}
        self.hits = self.misses = self.computed = self.rejected = 0
        self._disk_used: int | None = None  # bytes of .pt files on disk (other processes may add more)

    def video_key(self, model_key: str, video_path: str, frames: int) -> str:
        """Content-hash key; the file digest is memoised per (path, size, mtime)."""
        stat = os.stat(video_path)
        memo = (os.path.abspath(video_path), stat.st_size, stat.st_mtime_ns)
        if memo not in self._digests:
            self._digests[memo] = file_digest(video_path)
        return hashlib.sha256(f"{model_key}|{self._digests[memo]}|{frames}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.pt"

    def delete(self, key: str) -> None:
        """Forget `key` in memory and on disk (an entry another cache made redundant)."""
        entry = self._memory.pop(key, None)
        if entry is not None:
            self._memory_used -= _nbytes(entry)
        if self.directory is not None and self._path(key).exists():
            size = self._path(key).stat().st_size
            self._path(key).unlink(missing_ok=True)
            if self._disk_used is not None:
                self._disk_used -= size

    def get(self, key: str, valid: Callable[[torch.Tensor], bool] | None = None) -> torch.Tensor | None:
        """The tensor under `key`, or None. `valid` checks a disk entry before use (shape, dtype): one that fails
        it, like a torn or foreign file, is deleted and counts as a miss (`rejected` counts them)."""
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        if self.directory is not None and self._path(key).exists():
            try:
                tensor = torch.load(self._path(key), weights_only=True, map_location="cpu")
                usable = _is_entry(tensor) and (valid is None or valid(tensor))
            except Exception:  # a torn or foreign file is a miss, not a crash
                usable = False
            if usable:
                self.hits += 1
                self._remember(key, tensor)
                return tensor
            self._path(key).unlink(missing_ok=True)
            self.rejected += 1
        self.misses += 1
        return None

    def put(self, key: str, tensor: torch.Tensor | dict[str, torch.Tensor]) -> None:
        tensor = _to_host(tensor)
        self._remember(key, tensor)
        if self.directory is not None:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(tensor, partial)
            os.replace(partial, path)
            if self._disk_used is None:  # measured once; afterwards kept up to date without rescanning
                self._disk_used = sum(p.stat().st_size for p in self.directory.glob("*/*.pt"))
            else:
                self._disk_used += path.stat().st_size
            if self._disk_used > self.disk_bytes:
                self._evict_disk()

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor],
                       valid: Callable[[torch.Tensor], bool] | None = None) -> torch.Tensor:
        tensor = self.get(key, valid)
        if tensor is None:
            tensor = compute()
            self.computed += 1
            self.put(key, tensor)
        return tensor

    def _remember(self, key: str, tensor: torch.Tensor | dict[str, torch.Tensor]) -> None:
        if key in self._memory:
            return
        if self.pin_memory:
            tensor = _map(tensor, torch.Tensor.pin_memory)
        self._memory[key] = tensor
        self._memory_used += _nbytes(tensor)
        while self._memory_used > self.memory_bytes and len(self._memory) > 1:
            _, old = self._memory.popitem(last=False)
            self._memory_used -= _nbytes(old)

    def _evict_disk(self) -> None:
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.directory.glob("*/*.pt")]
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.disk_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
        self._disk_used = total

    def clear_memory(self) -> None:
        self._memory.clear()
        self._memory_used = 0


# An entry is a tensor, or a dict of named tensors (a prefix: `adatp.Prefix.tensors()`).
def _is_entry(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, dict) and bool(value) and all(
        isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items())


def _map(value, function):
    return function(value) if isinstance(value, torch.Tensor) else {key: function(t) for key, t in value.items()}


def _to_host(value):
    return _map(value, lambda tensor: tensor.detach().cpu().contiguous())


def _nbytes(value) -> int:
    tensors = [value] if isinstance(value, torch.Tensor) else list(value.values())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

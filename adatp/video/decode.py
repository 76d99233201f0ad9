"""Video decoding: which frames to read, reading them, and a video's frame rate; every failure is a VideoError.

- :func:`frame_indices`: which frames to read (lmms-eval's uniform sampling).
- :func:`decode_frames`: read them with decord, in this process or in a child process with a timeout.
- :func:`video_fps_and_length`: the frame rate and frame count Qwen3-VL's timestamps are computed from.

decord and PyAV are imported inside the functions that use them: ``adatp`` imports with torch + transformers only.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["VideoError", "decode_frames", "frame_indices", "one_line", "video_fps_and_length"]


class VideoError(Exception):
    """A video that cannot be read: missing, corrupt, truncated, without frames, or a decoder that died."""


def frame_indices(total: int, num_frames: int) -> list[int]:
    """Indices of ``num_frames`` frames spread uniformly over a video of ``total`` frames.

    ``numpy.linspace(0, total - 1, num_frames, dtype=int)``: the float positions are *truncated* toward zero, exactly
    as lmms-eval's ``llava_onevision.load_video`` (and LLaVA-NeXT's own video loader) do. When ``num_frames > total``
    indices repeat, as there.
    """
    if total < 1:
        raise ValueError(f"total must be >= 1 frame, got {total}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.linspace(0, total - 1, num_frames, dtype=int).tolist()


def decode_frames(path: str | os.PathLike, num_frames: int, *, timeout_s: float | None = None) -> torch.Tensor:
    """Decode ``num_frames`` uniformly sampled frames (:func:`frame_indices`) as RGB ``uint8 [F, H, W, 3]``.

    decord (``VideoReader(path, ctx=cpu(0), num_threads=1)`` and ``get_batch``) does the decoding, as in lmms-eval.
    The container is first opened with PyAV (header only): files that are not videos, have no video stream or
    no frames fail there with a clean message instead of decord's console output.

    Every failure raises :class:`VideoError` with a one-line reason naming the file. decord is native code and is known
    to hang or crash on some broken files (dmlc/decord#269, #373); with ``timeout_s`` set, decoding runs in a child
    process that is killed after that many seconds, so neither a hang nor a crash can take this process down
    (one interpreter start per video). The frames are identical either way.
    """
    path = Path(path)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    _probe_container(path)
    if timeout_s is None:
        frames = _decode_in_process(path, num_frames)
    else:
        frames = _decode_in_child(path, num_frames, timeout_s)
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError(f"{path}: decoder returned {frames.dtype} frames of shape {tuple(frames.shape)}")
    return torch.from_numpy(np.ascontiguousarray(frames))


# decord prefixes its messages with "[12:34:56] /src/file.cc:61: " (once per nested rethrow) and the exception type.
_DECORD_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: |decord\._ffi\.base\.DECORDError: |Check failed: ")


def one_line(error: BaseException) -> str:
    """An error's message as one line (its last, without decord's prefixes), at most 240 characters."""
    message = getattr(error, "strerror", None) or str(error)
    lines = [_DECORD_NOISE.sub("", line).strip() for line in str(message).splitlines()]
    lines = [line for line in lines if line]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _probe_container(path: Path) -> None:
    try:
        import av
    except ImportError:  # PyAV is only a guard; decord alone still reports broken files
        return
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.frames == 0 and not stream.duration and not container.duration:
                raise VideoError(f"{path}: video stream has no frames")
    except av.FFmpegError as error:
        raise VideoError(f"{path}: cannot open container: {one_line(error)}") from None


def _decode_in_process(path: Path, num_frames: int) -> np.ndarray:
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # ffmpeg's per-packet complaints; the VideoError says what failed
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        total = len(reader)
        if total < 1:
            raise VideoError(f"{path}: video has no frames")
        return reader.get_batch(frame_indices(total, num_frames)).asnumpy()
    except VideoError:
        raise
    except Exception as error:  # decord raises RuntimeError / DECORDError with multi-line C++ traces
        raise VideoError(f"{path}: decode failed: {one_line(error)}") from None


# Runs in a bare interpreter (numpy + decord only, no torch import): sampling must stay frame_indices'.
_CHILD_SOURCE = """
import sys, numpy as np, decord
path, num_frames, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
decord.logging.set_level(decord.logging.QUIET)
reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
total = len(reader)
if total < 1:
    sys.exit("video has no frames")
np.save(out, reader.get_batch(np.linspace(0, total - 1, num_frames, dtype=int).tolist()).asnumpy())
"""


def _run_child(path: Path, source: str, arguments: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run decoder code in a child process (a hang or a crash in decord cannot take the caller down)."""
    command = [sys.executable, "-c", source, str(path), *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise VideoError(f"{path}: decoder timed out after {timeout_s:g} s") from None
    if done.returncode < 0:
        raise VideoError(f"{path}: decoder crashed (signal {-done.returncode})")
    return done


def _decode_in_child(path: Path, num_frames: int, timeout_s: float) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="adatp-decode-") as scratch:
        out = Path(scratch) / "frames.npy"
        done = _run_child(path, _CHILD_SOURCE, [str(num_frames), str(out)], timeout_s)
        if done.returncode != 0 or not out.is_file():
            reason = one_line(RuntimeError(done.stderr)) if done.stderr.strip() else f"exit code {done.returncode}"
            raise VideoError(f"{path}: decode failed: {reason}")
        return np.load(out)


def video_fps_and_length(path: str | os.PathLike, *, timeout_s: float | None = None) -> tuple[float, int]:
    """``(average fps, frame count)`` of a video, as decord reports them (``get_avg_fps()``, ``len``) when
    :func:`decode_frames` opens it the same way, so ``frame_indices(count, n)`` are the frames it decodes.

    Errors as in :func:`decode_frames`: :class:`VideoError` with one line naming the file for a missing, empty,
    unreadable file, one without video stream or frames, or without a frame rate; ``timeout_s`` runs decord in a
    child process killed after that many seconds.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    _probe_container(path)
    fps, total = _fps_in_process(path) if timeout_s is None else _fps_in_child(path, timeout_s)
    if total < 1:
        raise VideoError(f"{path}: video has no frames")
    if not (math.isfinite(fps) and fps > 0):
        raise VideoError(f"{path}: no frame rate (decord reports {fps})")
    return fps, total


def _fps_in_process(path: Path) -> tuple[float, int]:
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        return float(reader.get_avg_fps()), len(reader)
    except Exception as error:  # decord raises RuntimeError / DECORDError with multi-line C++ traces
        raise VideoError(f"{path}: cannot read: {one_line(error)}") from None


_FPS_CHILD_SOURCE = """
import sys, decord
decord.logging.set_level(decord.logging.QUIET)
reader = decord.VideoReader(sys.argv[1], ctx=decord.cpu(0), num_threads=1)
print(repr(float(reader.get_avg_fps())), len(reader))
"""


def _fps_in_child(path: Path, timeout_s: float) -> tuple[float, int]:
    done = _run_child(path, _FPS_CHILD_SOURCE, [], timeout_s)
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 2:
        reason = one_line(RuntimeError(done.stderr)) if done.stderr.strip() else f"exit code {done.returncode}"
        raise VideoError(f"{path}: cannot read: {reason}")
    return float(fields[0]), int(fields[1])

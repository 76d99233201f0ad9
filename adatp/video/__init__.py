"""Video input for the supported Video LLMs, torch-only: decoding, then one preprocessing module per model family.

The one place in the project that turns a video file into a model's video inputs:

- :mod:`adatp.video.decode`: which frames to read (:func:`frame_indices`), reading them (:func:`decode_frames`), a
  video's frame rate and length (:func:`video_fps_and_length`); every failure is a :class:`VideoError`.
- :mod:`adatp.video.llava_onevision`: ``LlavaOnevisionVideoProcessor``'s pixels (:func:`preprocess_frames`, settings
  from :func:`preprocess_config_from`) and the front-end :class:`LlavaOnevisionVideo`.
- :mod:`adatp.video.qwen`: ``Qwen2VLVideoProcessor`` / ``Qwen3VLVideoProcessor``'s pixels and grid
  (:func:`qwen_video_pixels`, :func:`qwen_video_grid`, settings from :func:`qwen_preprocess_config_from`), Qwen3-VL's
  timestamps (:func:`qwen3_timestamps`, :func:`qwen3_timestamp_text`) and the front-end :class:`QwenVideo`.
- :mod:`adatp.video.base`: the contract both front-ends implement (:class:`VideoFrontEnd`) and the steps they share.

decord and PyAV are imported inside the functions that use them: ``adatp`` imports with torch + transformers only.
"""

from adatp.video.base import DEFAULT_RESCALE_FACTOR, VideoFrontEnd
from adatp.video.decode import VideoError, decode_frames, frame_indices, video_fps_and_length
from adatp.video.llava_onevision import (
    DEFAULT_MEAN,
    DEFAULT_SIZE,
    DEFAULT_STD,
    LlavaOnevisionVideo,
    expand_video_placeholder,
    preprocess_config_from,
    preprocess_frames,
)
from adatp.video.qwen import (
    QWEN25_MAX_PIXELS,
    QWEN25_MIN_PIXELS,
    QWEN_FRAME_SIZE,
    QwenVideo,
    qwen3_timestamp_text,
    qwen3_timestamps,
    qwen_pixels,
    qwen_preprocess_config_from,
    qwen_published_settings,
    qwen_video_grid,
    qwen_video_pixels,
)

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_RESCALE_FACTOR",
    "DEFAULT_SIZE",
    "DEFAULT_STD",
    "QWEN25_MAX_PIXELS",
    "QWEN25_MIN_PIXELS",
    "QWEN_FRAME_SIZE",
    "LlavaOnevisionVideo",
    "QwenVideo",
    "VideoError",
    "VideoFrontEnd",
    "decode_frames",
    "expand_video_placeholder",
    "frame_indices",
    "preprocess_config_from",
    "preprocess_frames",
    "qwen3_timestamp_text",
    "qwen3_timestamps",
    "qwen_pixels",
    "qwen_preprocess_config_from",
    "qwen_published_settings",
    "qwen_video_grid",
    "qwen_video_pixels",
    "video_fps_and_length",
]

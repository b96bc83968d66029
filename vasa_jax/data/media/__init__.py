"""Image, audio and video input/output through PIL, soundfile and PyAV.

Video and audio are decoded, encoded and probed in-process with PyAV (`av`, FFmpeg's libraries
bundled in its wheel): no ffmpeg binary is run and no log text is parsed, so no system ffmpeg is
needed. Video frames go through the filter graph the ffmpeg CLI would build (autorotation, the
`fps` filter, area downscaling, rgb24 conversion) and come out identical to its output. Every
file name reaches libavformat as a `file:` path, so no name is ever read as a protocol
(`concat:a|b`).

Conventions (docs/design.md): frames are uint8 (H, W, 3) RGB; audio is float32 mono at 16 kHz;
video is 25 fps, so one frame spans 640 audio samples. Writes are atomic: a temporary file in the
target directory is renamed onto the target with `os.replace`, and nothing is left behind on error.

The package keeps one concern per module: `probing` (PyAV), `image`, `audio`, `video_read` and
`video_write`; their public names are re-exported here, so `media.read_audio(...)` works as ever.
"""
from vasa_jax.data.media.audio import read_audio, to_mono, write_wav
from vasa_jax.data.media.image import MAX_DECODE_PIXELS, MAX_IMAGE_PIXELS, read_image
from vasa_jax.data.media.probing import MediaInfo, probe, read_metadata_comment
from vasa_jax.data.media.video_read import (Video, iter_video_frames, read_video, resample_frames,
                                            resample_indices)
from vasa_jax.data.media.video_write import (DEFAULT_COMMENT, VideoWriter, add_watermark,
                                             check_output_path, remove_stale_temps, write_video)

__all__ = ["DEFAULT_COMMENT", "MAX_DECODE_PIXELS", "MAX_IMAGE_PIXELS", "MediaInfo", "Video",
           "VideoWriter", "add_watermark", "check_output_path", "iter_video_frames", "probe",
           "read_audio", "read_image", "read_metadata_comment", "read_video", "remove_stale_temps",
           "resample_frames", "resample_indices", "to_mono", "write_video", "write_wav"]

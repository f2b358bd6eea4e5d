"""Shape arithmetic of the media branches, shared by data and models (ARCHITECTURE.md 1.2-1.4).

How many LLM placeholder tokens an image, a video frame or an audio clip becomes. The
pipelines size their placeholder spans with these; the encoders must produce exactly
these counts (a mismatch is an error naming both counts).
"""

from __future__ import annotations

import math

# Qwen2-VL / Baichuan-Omni-1.5 vision constants
PATCH = 14
MERGE = 2
FACTOR = PATCH * MERGE  # 28: sides are resized to multiples of this
TEMPORAL_PATCH = 2
IMAGE_MIN_PIXELS = 3136
IMAGE_MAX_PIXELS = 3211264
VIDEO_MAX_PIXELS = 602112

# Whisper / Baichuan audio constants
SAMPLE_RATE = 16000
HOP = 160
CHUNK_SECONDS = 30
ENCODER_STRIDE = 2  # conv2 stride: 100 Hz mel -> 50 Hz
POOL = 4  # audio bridge pooling: 50 Hz -> 12.5 Hz
N_FFT = 400  # Whisper STFT window; shorter chunks are dropped by the release


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = IMAGE_MIN_PIXELS,
                 max_pixels: int = IMAGE_MAX_PIXELS) -> tuple[int, int]:
    """Qwen2-VL's resize target: sides are multiples of `factor`, the area is kept within
    [min_pixels, max_pixels] and the aspect ratio is kept as well as rounding allows."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has an empty side: {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds 200")
    h = round(height / factor) * factor  # no clamp here: transformers' order of operations
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def image_grid(height: int, width: int, *, video: bool = False) -> tuple[int, int, int]:
    """(grid_t, grid_h, grid_w) in patches for an image or one video frame (t = 1)."""
    h, w = smart_resize(height, width, max_pixels=VIDEO_MAX_PIXELS if video else IMAGE_MAX_PIXELS)
    return 1, h // PATCH, w // PATCH


def image_token_count(grid_t: int, grid_h: int, grid_w: int) -> int:
    """Tokens after the 2x2 PatchMerger bridge: t*h*w/4."""
    return grid_t * grid_h * grid_w // (MERGE * MERGE)


def audio_chunks(num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[int]:
    """Sample counts of the <= 30 s chunks a clip is split into."""
    size = CHUNK_SECONDS * sample_rate
    if num_samples <= 0:
        raise ValueError("audio clip is empty")
    return [min(size, num_samples - s) for s in range(0, num_samples, size)]


def mel_frames(num_samples: int) -> int:
    """Log-mel frames of an UNPADDED clip's STFT with the last frame dropped (n // 160):
    what `audio_features.log_mel` returns. The release counts one more (`valid_mel_frames`)."""
    return num_samples // HOP


def valid_mel_frames(num_samples: int, max_frames: int = CHUNK_SECONDS * SAMPLE_RATE // HOP) -> int:
    """Valid (non-zeroed) mel frames of one chunk in the release's feature extractor:
    min(3000, n // 160 + 1) (processor_omni.py `extract_fbank_features`; 0 for an empty chunk)."""
    return 0 if num_samples <= 0 else min(max_frames, num_samples // HOP + 1)


def encoder_frames(mel_len: int) -> int:
    """50 Hz encoder frames of `mel_len` mel frames: conv1 (k3, pad 1) keeps the length,
    conv2 (k3, stride 2, pad 1) gives (L - 1) // 2 + 1 (processor_omni.py `inference_output_length`)."""
    return 0 if mel_len <= 0 else (mel_len - 1) // ENCODER_STRIDE + 1


def bridge_frames(enc_len: int, pool: int = POOL) -> int:
    """Audio tokens of `enc_len` encoder frames: floor(enc_len / pool). A trailing partial group
    makes no token (the release's `bridge_length`; pool 4 = 12.5 Hz). v1's Conv-GMLP projector
    (pool 2, 4 or 8) follows the same rule."""
    return enc_len // pool


def chunk_audio_tokens(valid_mel: int, pool: int = POOL) -> int:
    """Tokens of one chunk with `valid_mel` valid mel frames: encoder stride 2, then pooling."""
    return bridge_frames(encoder_frames(valid_mel), pool)


def audio_token_count(num_samples: int) -> int:
    """12.5 Hz tokens (<audio_pad> placeholders) of a clip, as the release's processor counts them.

    Per 30 s chunk: valid mel frames n // 160 + 1 (at most 3000) -> encoder frames
    (L - 1) // 2 + 1 -> tokens floor(enc / 4). Chunks shorter than n_fft (400 samples) are
    dropped, as are chunks that make no token (processor_omni.py `split_with_overlap`, `_get_audio`).
    """
    total = 0
    for n in audio_chunks(num_samples):
        if n < N_FFT:
            continue
        total += bridge_frames(encoder_frames(valid_mel_frames(n)))
    return total

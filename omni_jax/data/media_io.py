"""Lazy media items: sizes from headers (for planning), decoding + features (for rows).

Records store media as encoded bytes (PNG/JPEG frames and images, WAV/FLAC audio). The
pipeline plans rows from token counts that need only the headers (image size, audio
length), then decodes when it builds a row and verifies that the decoded media gives
exactly the planned number of tokens (`DataError('count_mismatch')` otherwise).

Audio chunking: a clip is cut into chunks of `chunk_samples` (30 s, or less when the
row's mel buffer is shorter: `mel_frames * 160` samples); a trailing piece shorter than
one STFT window (400 samples) is dropped, as the release's processor does. A chunk of n
samples gives min(T, n // 160 + 1) valid log-mel frames computed as the release's processor
does (`audio_features.release_chunk_features`: zero-padded to the buffer before the STFT,
zero beyond the valid frames) and `media.chunk_audio_tokens` tokens: encoder frames
(L - 1) // 2 + 1, then floor(/ pool), pool 4 = 12.5 Hz. A chunk that makes no token is
dropped. With 30 s chunks the total equals `media.audio_token_count`.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from omni_jax.data import audio_features, media, resampling, vision_preprocessing
from omni_jax.data.errors import DataError

MIN_CHUNK_SAMPLES = audio_features.N_FFT  # shorter trailing pieces are dropped


@dataclasses.dataclass(frozen=True)
class MediaConfig:
    """Preprocessing settings (ARCHITECTURE.md 1.2, 1.3). `config.data.media`."""

    image_min_pixels: int = media.IMAGE_MIN_PIXELS
    image_max_pixels: int = media.IMAGE_MAX_PIXELS
    video_min_pixels: int = media.IMAGE_MIN_PIXELS
    video_max_pixels: int = media.VIDEO_MAX_PIXELS
    video_fps: float = 1.0  # frames per second kept from a video
    video_max_frames: int = 32
    min_image_area: int = 257  # the release drops images of <= 16 x 16 pixels
    audio_chunk_seconds: int = media.CHUNK_SECONDS
    audio_pool: int = media.POOL  # encoder frames (50 Hz) per audio token
    # ---- vision input kind: "navit" (1.5: dynamic-resolution patches) or "tiles" (v1:
    # SigLIP AnyRes tiles, ARCHITECTURE.md 2) ----
    vision_mode: str = "navit"
    tile_size: int = 384
    tokens_per_tile: int = 182  # SigLIP 27 x 27 = 729 patches, mean-pooled by 4
    video_tokens_per_frame: int = 182  # a frame is one global-view tile
    anyres_grids: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1))  # (rows, cols)
    tile_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # SiglipImageProcessor
    tile_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        if self.vision_mode not in ("navit", "tiles"):
            raise ValueError(f"config.data.media.vision_mode={self.vision_mode!r}; use 'navit' (1.5) or 'tiles' (v1)")
        object.__setattr__(self, "anyres_grids", tuple(tuple(int(x) for x in g) for g in self.anyres_grids))
        object.__setattr__(self, "tile_mean", tuple(float(x) for x in self.tile_mean))
        object.__setattr__(self, "tile_std", tuple(float(x) for x in self.tile_std))

    @property
    def tile_slot(self) -> int:
        """Token slots per tile in the row's tile-token space (the larger of the two counts)."""
        return max(self.tokens_per_tile, self.video_tokens_per_frame)

    @classmethod
    def from_dict(cls, d: Any, where: str = "config.data.media") -> "MediaConfig":
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)


# ------------------------------------------------------------------ v1 AnyRes tiling
def select_grid(height: int, width: int, tile: int, grids: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """LLaVA-NeXT's select_best_resolution over (rows, cols) tile grids: the most effective
    resolution after an aspect-preserving fit, then the least wasted canvas."""
    best, best_eff, best_waste = None, -1, None
    for r, c in grids:
        H, W = r * tile, c * tile
        scale = min(W / width, H / height)
        eff = min(int(width * scale) * int(height * scale), width * height)
        waste = W * H - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (r, c), eff, waste
    return best


def _normalise(img: Image.Image, cfg: "MediaConfig") -> np.ndarray:
    x = np.asarray(img, np.float32) / np.float32(255.0)
    return ((x - np.asarray(cfg.tile_mean, np.float32)) / np.asarray(cfg.tile_std, np.float32)).transpose(2, 0, 1)


def anyres_tiles(image: np.ndarray, cfg: "MediaConfig", *, video: bool = False) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 (H, W, 3) -> (tiles (n, 3, S, S) float32, (n, rows, cols)).

    Tile 0 is the global view (the whole image resized to S x S); then, for images, the
    crops of the image fitted (aspect kept, bicubic) and centred on a black rows*S x cols*S
    canvas, row-major. Video frames are the global view only."""
    S = cfg.tile_size
    pil = Image.fromarray(image)
    tiles = [_normalise(pil.resize((S, S), Image.BICUBIC), cfg)]
    if video:
        return np.stack(tiles), (1, 1, 1)
    h, w = image.shape[:2]
    r, c = select_grid(h, w, S, cfg.anyres_grids)
    H, W = r * S, c * S
    scale = min(W / w, H / h)
    nw, nh = min(W, max(1, math.ceil(w * scale))), min(H, max(1, math.ceil(h * scale)))
    canvas = Image.new("RGB", (W, H), (0, 0, 0))
    canvas.paste(pil.resize((nw, nh), Image.BICUBIC), ((W - nw) // 2, (H - nh) // 2))
    big = _normalise(canvas, cfg)
    tiles += [big[:, i * S:(i + 1) * S, j * S:(j + 1) * S] for i in range(r) for j in range(c)]
    return np.stack(tiles).astype(np.float32), (1 + r * c, r, c)


# ------------------------------------------------------------------ audio arithmetic
def chunk_lengths(num_samples: int, chunk_samples: int) -> list[int]:
    """Sample counts of the chunks a clip is cut into (trailing piece < 400 dropped)."""
    if num_samples < MIN_CHUNK_SAMPLES:
        raise DataError("corrupt_media", f"audio clip of {num_samples} samples is shorter than one "
                        f"STFT window ({MIN_CHUNK_SAMPLES} samples at {media.SAMPLE_RATE} Hz)")
    out = [min(chunk_samples, num_samples - s) for s in range(0, num_samples, chunk_samples)]
    mel = chunk_samples // media.HOP
    return [n for n in out
            if n >= MIN_CHUNK_SAMPLES and media.chunk_audio_tokens(media.valid_mel_frames(n, mel)) > 0]


def frames_to_tokens(mel_frames: int, pool: int = media.POOL) -> int:
    """Tokens from a chunk's valid 100 Hz mel frames (media.chunk_audio_tokens): 12.5 Hz for
    the 1.5 bridge (pool 4); v1's Conv-GMLP ablated 2, 4 and 8."""
    return media.chunk_audio_tokens(mel_frames, pool)


def chunk_tokens(chunk_samples: Sequence[int], pool: int = media.POOL,
                 buffer_samples: int = media.CHUNK_SECONDS * media.SAMPLE_RATE) -> list[int]:
    """Tokens of each chunk (sample counts) whose features fill a `buffer_samples` buffer."""
    return [frames_to_tokens(media.valid_mel_frames(n, buffer_samples // media.HOP), pool) for n in chunk_samples]


# ------------------------------------------------------------------ decoding
def decode_audio(data: bytes, sample_rate: int = media.SAMPLE_RATE) -> np.ndarray:
    """WAV (any PCM width) or FLAC bytes -> float32 mono at `sample_rate` (audio_features.decode_wav,
    soundfile)."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise DataError("corrupt_media", "audio is empty")
    try:
        return audio_features.decode_wav(bytes(data), sample_rate)
    except ValueError as e:
        raise DataError("corrupt_media", str(e)) from e


def audio_num_samples(data: bytes, sample_rate: int = media.SAMPLE_RATE) -> int:
    """Samples after decoding at `sample_rate`, from the header only (soundfile)."""
    import soundfile as sf

    if not isinstance(data, (bytes, bytearray)) or not data:
        raise DataError("corrupt_media", "audio is empty")
    try:
        info = sf.info(io.BytesIO(bytes(data)))
        n, sr = info.frames, info.samplerate
    except Exception as e:
        raise DataError("corrupt_media", f"cannot read the audio header ({len(data)} bytes): {e}") from e
    return resampling.output_length(n, sr, sample_rate)


def resample(x: np.ndarray, rate_from: int, rate_to: int) -> np.ndarray:
    """Polyphase resampling (`resampling.resample`); kept here for existing callers."""
    return resampling.resample(x, rate_from, rate_to)


# ------------------------------------------------------------------ items
class ImageItem:
    """An encoded image (or one video frame)."""

    def __init__(self, data: bytes, *, video: bool = False):
        if not isinstance(data, (bytes, bytearray)):
            raise DataError("wrong_type", f"image must be encoded bytes, got {type(data).__name__}")
        self.data, self.video = bytes(data), video
        self._size: tuple[int, int] | None = None

    def size(self) -> tuple[int, int]:
        """(height, width) from the header (read once)."""
        if self._size is not None:
            return self._size
        try:
            with Image.open(io.BytesIO(self.data)) as im:
                w, h = im.size
        except Exception as e:
            raise DataError("corrupt_media", f"cannot read the image header ({len(self.data)} bytes): {e}") from e
        self._size = (h, w)
        return h, w

    def _bounds(self, cfg: MediaConfig) -> tuple[int, int]:
        return ((cfg.video_min_pixels, cfg.video_max_pixels) if self.video
                else (cfg.image_min_pixels, cfg.image_max_pixels))

    def grid(self, cfg: MediaConfig) -> tuple[int, int, int]:
        h, w = self.size()
        if h * w < cfg.min_image_area:
            raise DataError("invalid", f"image of {h}x{w} pixels is below the minimum area {cfg.min_image_area}")
        lo, hi = self._bounds(cfg)
        try:
            rh, rw = media.smart_resize(h, w, min_pixels=lo, max_pixels=hi)
        except ValueError as e:
            raise DataError("invalid", str(e)) from e
        return 1, rh // media.PATCH, rw // media.PATCH

    def num_tiles(self, cfg: MediaConfig) -> int:
        """v1 tiles: the global view plus the AnyRes crops (video frames: 1)."""
        if self.video:
            return 1
        h, w = self.size()
        if h * w < cfg.min_image_area:
            raise DataError("invalid", f"image of {h}x{w} pixels is below the minimum area {cfg.min_image_area}")
        r, c = select_grid(h, w, cfg.tile_size, cfg.anyres_grids)
        return 1 + r * c

    def tokens(self, cfg: MediaConfig) -> int:
        if cfg.vision_mode == "tiles":
            return self.num_tiles(cfg) * (cfg.video_tokens_per_frame if self.video else cfg.tokens_per_tile)
        return media.image_token_count(*self.grid(cfg))

    def footprint(self, cfg: MediaConfig) -> tuple[int, int]:
        """(patches, tiles) this item takes in a row."""
        if cfg.vision_mode == "tiles":
            return 0, self.num_tiles(cfg)
        return 4 * self.tokens(cfg), 0

    def _decode(self) -> np.ndarray:
        try:
            return vision_preprocessing.decode_image(self.data)
        except ValueError as e:
            raise DataError("corrupt_media", str(e)) from e

    def load_tiles(self, cfg: MediaConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
        """v1: (tiles (n, 3, S, S) float32, (n, rows, cols))."""
        return anyres_tiles(self._decode(), cfg, video=self.video)

    def load(self, cfg: MediaConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
        """(patches (n, 1176) float32 in merge-window order, grid)."""
        img = self._decode()
        lo, hi = self._bounds(cfg)
        try:
            return vision_preprocessing.preprocess_image(img, video=self.video, min_pixels=lo, max_pixels=hi)
        except ValueError as e:
            raise DataError("invalid", str(e)) from e


class VideoItem:
    """A video stored as encoded frames at `fps`; frames kept at `cfg.video_fps`."""

    def __init__(self, frames: Sequence[bytes], fps: float):
        frames = list(frames)
        if not frames:
            raise DataError("missing_field", "video has no frames")
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            raise DataError("wrong_type", f"video fps must be a number, got {fps!r}") from None
        if not fps > 0:
            raise DataError("invalid", f"video fps must be positive, got {fps}")
        self.frames, self.fps = frames, fps

    def frame_items(self, cfg: MediaConfig) -> list[ImageItem]:
        step = self.fps / cfg.video_fps  # stored frames per kept frame
        idx = vision_preprocessing.sample_frame_indices(len(self.frames), step, cfg.video_max_frames)
        return [ImageItem(self.frames[int(i)], video=True) for i in idx]


class AudioItem:
    """Audio from encoded bytes or a waveform (16 kHz unless `rate` says otherwise)."""

    def __init__(self, data: bytes | None = None, *, waveform: np.ndarray | None = None, rate: int = media.SAMPLE_RATE):
        if (data is None) == (waveform is None):
            raise ValueError("give exactly one of data= or waveform=")
        if data is not None and not isinstance(data, (bytes, bytearray)):
            raise DataError("wrong_type", f"audio must be encoded bytes, got {type(data).__name__}")
        self.data = None if data is None else bytes(data)
        self._wave = None if waveform is None else np.asarray(waveform, np.float32)
        self.rate = rate
        self._n: int | None = None

    def num_samples(self) -> int:
        if self._n is None:
            self._n = self._count()
        return self._n

    def _count(self) -> int:
        if self._wave is not None:
            n = len(self._wave)
            return resampling.output_length(n, self.rate, media.SAMPLE_RATE)
        return audio_num_samples(self.data)

    def waveform(self, rate: int = media.SAMPLE_RATE) -> np.ndarray:
        if self._wave is not None:
            return resample(self._wave, self.rate, rate)
        return decode_audio(self.data, rate)

    def chunks(self, chunk_samples: int) -> list[int]:
        return chunk_lengths(self.num_samples(), chunk_samples)

    def tokens(self, chunk_samples: int, pool: int = media.POOL) -> int:
        return sum(chunk_tokens(self.chunks(chunk_samples), pool, chunk_samples))

    def features(self, chunk_samples: int) -> list[np.ndarray]:
        """One (128, valid frames) log-mel matrix per chunk, computed as the release does
        (padded to the chunk buffer before the STFT; valid = min(buffer, n // 160 + 1))."""
        x = self.waveform()
        lens = chunk_lengths(len(x), chunk_samples)
        out = []
        for i, n in enumerate(lens):
            feats, valid = audio_features.release_chunk_features(x[i * chunk_samples:i * chunk_samples + n], chunk_samples)
            out.append(feats[:, :valid])
        return out


class TTSAudio(AudioItem):
    """Speech synthesised on demand through a pluggable TTS (speech_synth.TTS)."""

    def __init__(self, tts: Any, text: str, voice: int):
        self.tts, self.text, self.voice = tts, text, int(voice)
        self.rate = int(getattr(tts, "sample_rate", media.SAMPLE_RATE))
        self.data = None
        self._wave = None
        self._n = None

    def _synth(self) -> np.ndarray:
        if self._wave is None:
            self._wave = np.asarray(self.tts(self.text, self.voice), np.float32)
        return self._wave

    def _count(self) -> int:
        count = getattr(self.tts, "num_samples", None)
        n = int(count(self.text, self.voice)) if count is not None else len(self._synth())
        return n if self.rate == media.SAMPLE_RATE else int(round(n * media.SAMPLE_RATE / self.rate))

    def waveform(self, rate: int = media.SAMPLE_RATE) -> np.ndarray:
        return resample(self._synth(), self.rate, rate)

"""TFDS builders (array_record, no TensorFlow) for every kind of omni training data.

Each builder stores raw media as encoded bytes (PNG/JPEG images and frames, WAV/FLAC
audio) in `tfds.features.Tensor(dtype=object)` features; the pipeline decodes them
(omni_jax/data/media_io.py). Two kinds of configs:

* the embedded default dataset (omni_jax/data/default_dataset.py): configs `shapes`
  (training size) and `shapes_tiny` (tests), generated locally in seconds;
* your own data: `ManifestConfig(name=..., manifest="/data/x/{split}.jsonl")`, one JSON
  object per line with the builder's fields; media fields hold file paths (relative to
  the manifest's directory): WAV/FLAC/images read verbatim as bytes, other audio files and
  `"video": "clip.mp4"` (omni_videos) decoded with PyAV; or a folder of media files
  (`manifest="/data/x/{split}"`) with sidecar texts (builders/media_files.py).

    from omni_jax.data.builders import prepare
    builder = prepare("omni_images/shapes", data_dir)           # generated if missing
    source = builder.as_data_source()["train"]                  # random access records

Builders (features):
  omni_images              id, image, caption, question, answer
  omni_interleaved_images  id, text (with <|image|> markers), images
  omni_videos              id, frames, fps, audio (track, may be empty), audio_transcript,
                           caption, question, answer
  omni_speech              id, audio, transcript, translation, voice
  omni_spoken_qa           id, audio (question), transcript, answer, answer_audio
  omni_interleaved_audio   id, text (with <|audio|> markers), audios, transcripts
  omni_text                id, text
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from omni_jax.data import default_dataset, shared_files

# 1.1.0: the default (training-size) speech train split holds 2400 clips, was 240 (its first 240
# are the same clips); every other subset and split, and the tiny size, as in 1.0.0
VERSION = tfds.core.Version("1.1.0")


def text_feature():
    return tfds.features.Text()


def bytes_feature():
    return tfds.features.Tensor(shape=(), dtype=np.object_)


def bytes_list_feature():
    return tfds.features.Tensor(shape=(None,), dtype=np.object_)


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """The embedded default dataset at one size ("default" or "tiny")."""

    size: str = "default"
    seed: int = 0
    tts: str = "builtin"  # "espeak": real speech from espeak-ng (must be installed)


@dataclasses.dataclass(eq=False)
class ManifestConfig(tfds.core.BuilderConfig):
    """Your data: `manifest` is a JSONL path with `{split}` standing for the split name."""

    manifest: str = ""
    splits: tuple[str, ...] = ("train", "test")
    skip_bad_media: bool = True  # undecodable media files are skipped and counted (media_files.py)


SHAPES_CONFIGS = [ShapesConfig(name="shapes", size="default", version=VERSION,
                               description="embedded default dataset (training size)"),
                  ShapesConfig(name="shapes_tiny", size="tiny", version=VERSION,
                               description="embedded default dataset (test size)")]
# builders with speech also offer a small real-speech variant where espeak-ng is installed
SPEECH_CONFIGS = SHAPES_CONFIGS + [ShapesConfig(name="shapes_espeak", size="tiny", tts="espeak", version=VERSION,
                                                description="embedded dataset spoken by espeak-ng")]


class OmniBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared machinery: FEATURES (name -> feature factory), SUBSET (default-dataset
    generator name), MEDIA (fields that hold file paths in manifests)."""

    VERSION = VERSION
    BUILDER_CONFIGS = SHAPES_CONFIGS
    DEFAULT_CONFIG_NAME = "shapes"
    FEATURES: dict[str, Any] = {}
    SUBSET = ""
    MEDIA: tuple[str, ...] = ()

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({k: f() for k, f in self.FEATURES.items()}),
            description=(self.__class__.__doc__ or "").strip())

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        if isinstance(cfg, ManifestConfig):
            return {s: self._manifest(cfg.manifest.format(split=s)) for s in cfg.splits}
        return {s: self._generated(s, cfg.size, cfg.seed, cfg.tts) for s in ("train", "test")}

    def _generate_examples(self, **kwargs):  # pragma: no cover - splits use the generators below
        raise NotImplementedError

    def _generated(self, split: str, size: str, seed: int, tts: str = "builtin") -> Iterator[tuple[str, dict]]:
        synth = None
        if tts == "espeak":
            from omni_jax.data.espeak import EspeakTTS

            synth = EspeakTTS()
        for key, ex in default_dataset.generate(self.SUBSET, split, size, seed, tts=synth):
            yield key, {k: ex.get(k, _empty(f)) for k, f in self.FEATURES.items()}

    def _manifest(self, path: str) -> Iterator[tuple[str, dict]]:
        from omni_jax.data.builders import media_files
        from omni_jax.data.errors import DataError

        if os.path.isdir(path):
            root, records = path, media_files.folder_records(path, self.name)
        else:
            root = os.path.dirname(os.path.abspath(path))
            records = _jsonl_records(path)
        split = os.path.basename(path).split(".")[0]
        self.skipped = getattr(self, "skipped", {})
        self.skipped.setdefault(split, 0)
        for line_no, rec in records:
            extra = {"video"} if "frames" in self.FEATURES else set()
            unknown = sorted(set(rec) - set(self.FEATURES) - extra)
            if unknown:
                raise ValueError(f"{path}:{line_no + 1}: unknown field(s) {unknown}; "
                                 f"{self.name} has {sorted(self.FEATURES | dict.fromkeys(extra))}")
            try:
                rec = media_files.expand_video(rec, root, self.FEATURES)
                out = {}
                for k, f in self.FEATURES.items():
                    v = rec.get(k, _empty(f))
                    if k in self.MEDIA:
                        read = (lambda p: media_files.read_audio(os.path.join(root, p))) if k in media_files.AUDIO_FIELDS \
                            else (lambda p: _read(root, p))
                        v = [x if isinstance(x, bytes) else read(x) for x in v] if isinstance(v, list) \
                            else (v if isinstance(v, bytes) else (read(v) if v else b""))
                    out[k] = v
            except DataError as e:
                if not getattr(self.builder_config, "skip_bad_media", True):
                    raise
                self.skipped[split] += 1
                logging.warning("%s:%d: skipped (%s)", path, line_no + 1, e)
                continue
            out["id"] = str(rec.get("id") or f"{os.path.basename(path)}:{line_no + 1}")
            yield f"{line_no:09d}", out


def _jsonl_records(path: str) -> Iterator[tuple[int, dict]]:
    with open(path) as f:
        for line_no, line in enumerate(f):
            if line.strip():
                yield line_no, json.loads(line)


def _read(root: str, p: str) -> bytes:
    with open(os.path.join(root, p), "rb") as f:
        return f.read()


def _empty(factory) -> Any:
    if factory is text_feature:
        return ""
    if factory is bytes_feature:
        return b""
    if factory is bytes_list_feature:
        return []
    return 0


# ------------------------------------------------------------------ lookup / preparation
def builder_class(name: str) -> type[OmniBuilder]:
    import importlib

    audio, images, text_mod, videos = (importlib.import_module(f"omni_jax.data.builders.{m}")
                                       for m in ("audio", "images", "text", "videos"))

    classes = {c.name: c for c in (images.OmniImages, images.OmniInterleavedImages, videos.OmniVideos,
                                   audio.OmniSpeech, audio.OmniSpokenQa, audio.OmniInterleavedAudio,
                                   text_mod.OmniText)}
    if name not in classes:
        raise ValueError(f"unknown omni_jax dataset {name!r}; known: {sorted(classes)}")
    return classes[name]


def default_data_dir() -> str:
    return os.environ.get("OMNI_JAX_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "omni_jax", "datasets")


def prepare(spec: str, data_dir: str | None = None, config: tfds.core.BuilderConfig | None = None, *,
            wait: bool = False, wait_timeout_s: float = 3600.0) -> OmniBuilder:
    """The builder for "name[/config]" under `data_dir`, generated if missing.

    No file locks (unreliable on network filesystems): a generating process builds the
    dataset under a private temporary data dir next to it and renames the finished
    version directory into place; if another process got there first, its copy is kept
    and ours discarded. With `wait=True` (processes other than 0 of a run) this process
    does not generate; it waits up to `wait_timeout_s` for process 0's copy."""
    data_dir = data_dir or default_data_dir()
    name, _, cfg_name = spec.partition("/")
    cls = builder_class(name)
    kwargs = {"config": config} if config is not None else {"config": cfg_name or cls.DEFAULT_CONFIG_NAME}
    builder = cls(data_dir=data_dir, file_format="array_record", **kwargs)
    info = os.path.join(builder.data_dir, "dataset_info.json")
    if os.path.exists(info):
        return builder
    if wait:
        shared_files.wait_for(info, wait_timeout_s, f"process 0 prepares {spec}")
        return cls(data_dir=data_dir, file_format="array_record", **kwargs)
    os.makedirs(data_dir, exist_ok=True)
    tmp_root = shared_files.temp_name(os.path.join(data_dir, f"{name}.prepare"))
    try:
        tmp = cls(data_dir=tmp_root, file_format="array_record", **kwargs)
        tfds.disable_progress_bar()
        tmp.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
        os.makedirs(os.path.dirname(builder.data_dir), exist_ok=True)
        try:
            os.rename(tmp.data_dir, builder.data_dir)  # atomic; fails if another process renamed first
        except OSError:
            if not os.path.exists(info):
                raise
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    out = cls(data_dir=data_dir, file_format="array_record", **kwargs)
    if hasattr(tmp, "skipped"):  # what generating skipped (undecodable media files), per split
        out.skipped = dict(tmp.skipped)
    return out

"""Task formats: one record -> one `Sample` in the sequence layout (omni_jax/data/layout.py).

A mixture component names a `format`; the format reads the record's fields (bytes or str
text, encoded media), builds the token sequence with its loss flags and lazy media, and
raises `DataError` for records it cannot use. Formats are deterministic given the
record and the per-record rng (prompt choice, TTS voice), so planning and building a
row produce the same sample.

  format                  sequence (chat: <B_SYS>system<C_Q>user[<audiotext_start>]<C_A>reply<eos>)
  text                    {text}<eos>, all trained (pretraining; over-long docs may be split)
  text_qa                 chat: user {question}, reply {answer} (text-only instructions, e.g. the
                          spoken-QA records typed: fields={"question": "transcript"})
  caption                 chat: user [image][prompt], reply {caption}
  image_qa                chat: user [image]{question}, reply {answer}
  interleaved_image_text  {text ... [image] ... text}<eos>: text trained, images not
  video_caption           chat: user [video][prompt], reply {caption}
  video_qa                chat: user [video]{question}, reply {answer}
  asr                     chat: user [audio][prompt], reply {transcript}
  audio_qa                chat: user [audio (spoken question)][prompt], reply {answer}
  speech_translation      chat: user [audio][prompt], reply {translation}
  speech_qa               chat: user [audio]<audiotext_start>, reply {answer}[speech answer]
                          (text and audio head trained on the reply)
  tts                     {transcript}[speech]<eos>: loss on audio and text except the first
                          text segment (ARCHITECTURE.md 1.8)
  interleaved_text_audio  {text ... [speech] ... text}<eos>: speech in history, no loss on
                          audio segments; text trained
  crossmodal_image        chat: user [image][spoken quarter of the caption][prompt],
                          reply {the remaining caption} (omni_jax/data/crossmodal.py)
  crossmodal_video        the same with a video; its audio track is the audio element when
                          present (the reply is then the caption minus the narration)

Component options (`config.data.mixture.<name>`): `prompts` (replaces the default prompt
list), `system` (replaces config.data.system), `fields` (renames record fields, e.g.
{"caption": "alt_text"}), `split_long` (text only: cut over-long documents into rows).

A format's random choices (which prompt of the list, ...) come from the rng the mixture gives
it, seeded by (seed, component, record) (omni_jax/data/mixture.py `ComponentPlan.rng`): a record
gets the same prompt in every epoch, because the packer plans rows from each record's token
count, measured once. The prompts vary across records, not across a record's epochs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from omni_jax.data import crossmodal
from omni_jax.data.default_dataset import AUDIO_MARKER, IMAGE_MARKER
from omni_jax.data.errors import DataError
from omni_jax.data.layout import Sample, SequenceBuilder
from omni_jax.data.media_io import AudioItem, ImageItem, MediaConfig, TTSAudio, VideoItem

DEFAULT_PROMPTS: dict[str, tuple[str, ...]] = {
    "caption": ("describe the image.", "what is in this picture?", "write a caption for the image."),
    "video_caption": ("describe the video.", "what happens in this video?"),
    "asr": ("transcribe the speech.", "what does the speaker say?"),
    "audio_qa": ("",),
    "speech_translation": ("translate the speech into french.",),
    "crossmodal_image": ("listen and continue the description.", "continue what the speaker says about the picture."),
    "crossmodal_video": ("listen and continue the description.", "continue what the speaker says about the video."),
}


@dataclasses.dataclass
class FormatContext:
    tokenizer: Any
    media: MediaConfig
    chunk_samples: int
    system: str = ""
    prompts: tuple[str, ...] | None = None
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tts: Any = None


# ------------------------------------------------------------------ field access
def _field(rec: Mapping[str, Any], ctx: FormatContext, key: str):
    name = ctx.fields.get(key, key)
    if name not in rec:
        how = (f"the component maps {key!r} to it (fields={{{key!r}: {name!r}}})" if name != key else
               f"if another field holds it, map it with the mixture component's fields={{{key!r}: '<field>'}}")
        raise DataError("missing_field", f"record has no field {name!r} (fields: {sorted(rec)}); {how}")
    return name, rec[name]


def get_text(rec, ctx, key: str, *, required: bool = True) -> str:
    name, v = _field(rec, ctx, key) if (required or ctx.fields.get(key, key) in rec) else (key, "")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, (bytes, bytearray)):
        try:
            v = bytes(v).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError("wrong_type", f"field {name!r} is not UTF-8 text: {e}") from None
    if not isinstance(v, str):
        raise DataError("wrong_type", f"field {name!r} must be text, got {type(v).__name__}")
    if required and not v.strip():
        raise DataError("missing_field", f"field {name!r} is empty")
    return v.strip()


def get_bytes(rec, ctx, key: str, *, required: bool = True) -> bytes:
    name, v = _field(rec, ctx, key) if (required or ctx.fields.get(key, key) in rec) else (key, b"")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if not isinstance(v, (bytes, bytearray)):
        raise DataError("wrong_type", f"field {name!r} must be encoded bytes, got {type(v).__name__}")
    if required and not v:
        raise DataError("missing_field", f"field {name!r} is empty")
    return bytes(v)


def get_list(rec, ctx, key: str) -> list:
    name, v = _field(rec, ctx, key)
    if isinstance(v, np.ndarray):
        v = list(v)
    if not isinstance(v, (list, tuple)):
        raise DataError("wrong_type", f"field {name!r} must be a list, got {type(v).__name__}")
    return list(v)


def get_number(rec, ctx, key: str) -> float:
    name, v = _field(rec, ctx, key)
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise DataError("wrong_type", f"field {name!r} must be a number, got {type(v).__name__}")
    return float(v)


def _prompt(ctx: FormatContext, fmt: str, rng: np.random.Generator) -> str:
    pool = ctx.prompts if ctx.prompts is not None else DEFAULT_PROMPTS.get(fmt, ("",))
    return str(pool[int(rng.integers(0, len(pool)))]) if pool else ""


# ------------------------------------------------------------------ media span helpers
def _image(b: SequenceBuilder, ctx: FormatContext, data: bytes) -> None:
    item = ImageItem(data)
    b.image(item.tokens(ctx.media), item)


def _video(b: SequenceBuilder, ctx: FormatContext, rec) -> None:
    frames = get_list(rec, ctx, "frames")
    for i, f in enumerate(frames):
        if not isinstance(f, (bytes, bytearray)) or not f:
            raise DataError("wrong_type" if not isinstance(f, (bytes, bytearray)) else "corrupt_media",
                            f"video frame {i} is not encoded image bytes")
    items = VideoItem(frames, get_number(rec, ctx, "fps")).frame_items(ctx.media)
    b.video([it.tokens(ctx.media) for it in items], items)


def _audio(b: SequenceBuilder, ctx: FormatContext, item: AudioItem) -> None:
    b.audio(item.tokens(ctx.chunk_samples, ctx.media.audio_pool), item)


def _speech(b: SequenceBuilder, ctx: FormatContext, item: AudioItem, *, train_audio: bool,
            train_start: bool | None = None) -> None:
    b.speech(item.tokens(ctx.chunk_samples, ctx.media.audio_pool), item, train_audio=train_audio,
             train_start=train_start)


def _chat(ctx: FormatContext, rid: str) -> SequenceBuilder:
    b = SequenceBuilder(ctx.tokenizer, rid)
    b.system(ctx.system)
    return b.user()


def _reply(b: SequenceBuilder, text: str, *, speech_reply: bool = False) -> Sample:
    b.assistant(speech_reply=speech_reply)
    b.text(text, train=True)
    return b.eos().build()


def _interleaved(b: SequenceBuilder, text: str, marker: str, items: Sequence[Any], add: Callable) -> Sample:
    pieces = text.split(marker)
    if len(pieces) - 1 != len(items):
        raise DataError("invalid", f"text has {len(pieces) - 1} {marker} marker(s) for {len(items)} media item(s)")
    for i, piece in enumerate(pieces):
        piece = piece.strip()
        if piece:
            b.text(piece if i == 0 else " " + piece, train=True)
        if i < len(items):
            add(items[i])
    return b.eos().build()


def chat_prompt(ctx: FormatContext, text: str, *, images: Sequence[bytes] = (), video_frames: Sequence[bytes] = (),
                video_fps: float = 1.0, audio: Sequence[AudioItem] = (), speech_reply: bool = False,
                rid: str = "prompt") -> Sample:
    """An inference prompt in the training layout: `<B_SYS>system<C_Q>` + images + video + audio +
    text + `[<audiotext_start>]<C_A>`, then one placeholder reply token (eos), so that the sample's
    inputs (`Sample.example`, ids[:-1]) end exactly at `<C_A>`."""
    b = _chat(ctx, rid)
    for data in images:
        _image(b, ctx, data)
    if video_frames:
        _video(b, ctx, {"frames": list(video_frames), "fps": video_fps})
    for item in audio:
        _audio(b, ctx, item)
    if text:
        b.text(text)
    b.assistant(speech_reply=speech_reply)
    return b.eos(train=False).build()


# ------------------------------------------------------------------ formats
def fmt_text(rec, ctx, rng, rid) -> Sample:
    b = SequenceBuilder(ctx.tokenizer, rid)
    return b.text(get_text(rec, ctx, "text"), train=True).eos().build()


def fmt_text_qa(rec, ctx, rng, rid) -> Sample:
    b = _chat(ctx, rid)
    b.text(get_text(rec, ctx, "question"))
    return _reply(b, get_text(rec, ctx, "answer"))


def fmt_caption(rec, ctx, rng, rid) -> Sample:
    b = _chat(ctx, rid)
    _image(b, ctx, get_bytes(rec, ctx, "image"))
    b.text(_prompt(ctx, "caption", rng))
    return _reply(b, get_text(rec, ctx, "caption"))


def fmt_image_qa(rec, ctx, rng, rid) -> Sample:
    b = _chat(ctx, rid)
    _image(b, ctx, get_bytes(rec, ctx, "image"))
    b.text(get_text(rec, ctx, "question"))
    return _reply(b, get_text(rec, ctx, "answer"))


def fmt_interleaved_image_text(rec, ctx, rng, rid) -> Sample:
    images = get_list(rec, ctx, "images")
    b = SequenceBuilder(ctx.tokenizer, rid)
    return _interleaved(b, get_text(rec, ctx, "text"), IMAGE_MARKER, images, lambda x: _image(b, ctx, x))


def fmt_video_caption(rec, ctx, rng, rid) -> Sample:
    b = _chat(ctx, rid)
    _video(b, ctx, rec)
    b.text(_prompt(ctx, "video_caption", rng))
    return _reply(b, get_text(rec, ctx, "caption"))


def fmt_video_qa(rec, ctx, rng, rid) -> Sample:
    b = _chat(ctx, rid)
    _video(b, ctx, rec)
    b.text(get_text(rec, ctx, "question"))
    return _reply(b, get_text(rec, ctx, "answer"))


def _spoken_prompt(prompt: str, answer_field: str):
    """A format: the record's audio, then a text prompt of kind `prompt` (asr, audio_qa, ...),
    answered by the text of `answer_field`."""

    def fmt(rec, ctx, rng, rid) -> Sample:
        b = _chat(ctx, rid)
        _audio(b, ctx, AudioItem(get_bytes(rec, ctx, "audio")))
        b.text(_prompt(ctx, prompt, rng))
        return _reply(b, get_text(rec, ctx, answer_field))

    fmt.__name__ = f"fmt_{prompt}"
    return fmt


fmt_asr = _spoken_prompt("asr", "transcript")
fmt_audio_qa = _spoken_prompt("audio_qa", "answer")
fmt_speech_translation = _spoken_prompt("speech_translation", "translation")


def fmt_speech_qa(rec, ctx, rng, rid) -> Sample:
    b = _chat(ctx, rid)
    _audio(b, ctx, AudioItem(get_bytes(rec, ctx, "audio")))
    b.text(_prompt(ctx, "speech_qa", rng))
    b.assistant(speech_reply=True)
    b.text(get_text(rec, ctx, "answer"), train=True)
    _speech(b, ctx, AudioItem(get_bytes(rec, ctx, "answer_audio")), train_audio=True)
    return b.eos().build()


def fmt_tts(rec, ctx, rng, rid) -> Sample:
    b = SequenceBuilder(ctx.tokenizer, rid)
    b.text(get_text(rec, ctx, "transcript"), train=False)
    _speech(b, ctx, AudioItem(get_bytes(rec, ctx, "audio")), train_audio=True)
    return b.eos().build()


def fmt_interleaved_text_audio(rec, ctx, rng, rid) -> Sample:
    audios = get_list(rec, ctx, "audios")
    b = SequenceBuilder(ctx.tokenizer, rid)
    add = lambda x: _speech(b, ctx, AudioItem(_as_bytes(x)), train_audio=False, train_start=False)
    return _interleaved(b, get_text(rec, ctx, "text"), AUDIO_MARKER, audios, add)


def _as_bytes(x) -> bytes:
    if not isinstance(x, (bytes, bytearray)):
        raise DataError("wrong_type", f"media list entries must be encoded bytes, got {type(x).__name__}")
    return bytes(x)


def _crossmodal(rec, ctx, rng, rid, video: bool) -> Sample:
    fmt = "crossmodal_video" if video else "crossmodal_image"
    caption = get_text(rec, ctx, "caption")
    track = get_bytes(rec, ctx, "audio", required=False) if video else b""
    if track:
        audio = AudioItem(track)
        rest = crossmodal.remaining_after(caption, get_text(rec, ctx, "audio_transcript", required=False))
        if not rest:
            raise DataError("invalid", "the narration says the whole caption; nothing is left to continue")
    else:
        spoken, rest = crossmodal.split_for_speech(caption)
        audio = TTSAudio(ctx.tts, spoken, crossmodal.choose_voice(ctx.tts, rng))
    b = _chat(ctx, rid)
    if video:
        _video(b, ctx, rec)
    else:
        _image(b, ctx, get_bytes(rec, ctx, "image"))
    _audio(b, ctx, audio)
    b.text(_prompt(ctx, fmt, rng))
    return _reply(b, rest)


def fmt_crossmodal_image(rec, ctx, rng, rid) -> Sample:
    return _crossmodal(rec, ctx, rng, rid, video=False)


def fmt_crossmodal_video(rec, ctx, rng, rid) -> Sample:
    return _crossmodal(rec, ctx, rng, rid, video=True)


@dataclasses.dataclass(frozen=True)
class Format:
    fn: Callable[..., Sample]
    needs: frozenset  # modalities: "vision", "audio", "speech"
    splittable: bool = False


FORMATS: dict[str, Format] = {
    "text": Format(fmt_text, frozenset(), splittable=True),
    "text_qa": Format(fmt_text_qa, frozenset()),
    "caption": Format(fmt_caption, frozenset({"vision"})),
    "image_qa": Format(fmt_image_qa, frozenset({"vision"})),
    "interleaved_image_text": Format(fmt_interleaved_image_text, frozenset({"vision"})),
    "video_caption": Format(fmt_video_caption, frozenset({"vision"})),
    "video_qa": Format(fmt_video_qa, frozenset({"vision"})),
    "asr": Format(fmt_asr, frozenset({"audio"})),
    "audio_qa": Format(fmt_audio_qa, frozenset({"audio"})),
    "speech_translation": Format(fmt_speech_translation, frozenset({"audio"})),
    "speech_qa": Format(fmt_speech_qa, frozenset({"audio", "speech"})),
    "tts": Format(fmt_tts, frozenset({"speech"})),
    "interleaved_text_audio": Format(fmt_interleaved_text_audio, frozenset({"speech"})),
    "crossmodal_image": Format(fmt_crossmodal_image, frozenset({"vision", "audio"})),
    "crossmodal_video": Format(fmt_crossmodal_video, frozenset({"vision", "audio"})),
}


def mixture_needs(mixture: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The modalities ("vision", "audio", "speech") the formats of a mixture use, sorted."""
    return sorted(set().union(*[get_format(c["format"], f"mixture.{n}").needs for n, c in dict(mixture).items()]))


def get_format(name: str, where: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"{where}.format={name!r} is not a known format; known: {sorted(FORMATS)}")
    return FORMATS[name]


def record_id(rec: Mapping[str, Any], index: int) -> str:
    v = rec.get("id") if isinstance(rec, Mapping) else None
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v).decode("utf-8", errors="replace")
    return f"{v}" if isinstance(v, str) and v else f"#{index}"

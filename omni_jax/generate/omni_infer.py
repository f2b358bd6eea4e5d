"""Inference with a whole omni model: text, images, a video and audio in; text (and speech) out.

    runner = OmniRunner.load("runs/omni15_tiny")        # an omni_jax workdir (1.5 or v1), or
    runner = OmniRunner.load("Baichuan-Omni-1.5/")      # a release-format directory (1.5)
    reply = runner.respond(Prompt(text="what colour is the shape?", images=[png_bytes]), speech=True)
    reply.text, reply.audio_frames; runner.write_wav("reply.wav", reply)

Input audio from a release directory follows the release's rules (`release_audio_rules`: one
chunk of up to 30 s = 3000 mel frames, longer audio cut into 30 s chunks); a workdir keeps the
chunking its model was trained with (config.data.shapes.mel_frames).

The prompt is built exactly as training builds a sample (omni_jax/data/formats.py `chat_prompt`:
`<B_SYS>system<C_Q>` + images + video + audio + text + `[<audiotext_start>]<C_A>`), its media go
through the data pipeline's decoding and placement (one row sized to fit it), the model merges
the modalities into the prompt embeddings (`input_embeddings`), and the KV-cached loop of
ARCHITECTURE.md 1.7 generates (omni_jax/generate/interleaved.py; the released sampling settings
unless told otherwise). A speech reply's codes go through the audio tokenizer's decoder, the
flow-matching decoder and the vocoder (omni_jax/tasks/omni_eval.py `synthesizer`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from omni_jax.data import formats as formats_lib
from omni_jax.data.media_io import AudioItem, MediaConfig
from omni_jax.data.omni_batch import OmniShapes, empty_rows
from omni_jax.generate.sampling import TEXT_RELEASE, SamplingParams

RELEASE_VOCAB = 152064
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


@dataclasses.dataclass
class Prompt:
    """One user turn. Media are encoded bytes (PNG/JPEG images and frames, WAV/FLAC audio)."""

    text: str = ""
    images: Sequence[bytes] = ()
    video_frames: Sequence[bytes] = ()
    video_fps: float = 1.0  # the rate `video_frames` were sampled at (kept at config.data.media.video_fps)
    audio: Sequence[bytes] = ()
    system: str = ""


@dataclasses.dataclass
class Reply:
    text: str
    tokens: list
    audio_chunks: list  # (frames, 8) int arrays, one per speech chunk
    prompt_tokens: int

    @property
    def audio_frames(self) -> int:
        return int(sum(len(c) for c in self.audio_chunks))


def release_audio_rules(directory: str) -> tuple[int, int]:
    """(chunk seconds, mel frames per chunk) of a release directory's input audio (its config.json
    audio_config; processor_omni.py `split_with_overlap`, `extract_fbank_features`): audio up to
    max_audio_seconds (30 s) is ONE chunk of max_audio_seconds * sampling_rate // hop_length (3000)
    mel frames; longer audio is cut into such chunks without overlap (split_overlap 0), a trailing
    piece shorter than n_fft dropped. Settings this pipeline does not implement are named."""
    with open(os.path.join(directory, "config.json")) as fh:
        a = json.load(fh).get("audio_config", {})
    seconds = int(a.get("max_audio_seconds", 30))
    rate, hop = int(a.get("sampling_rate", 16000)), int(a.get("hop_length", 160))
    supported = (("sampling_rate", 16000), ("hop_length", 160), ("n_fft", 400))
    bad = [f"{k}={a.get(k)} (supported: {v})" for k, v in supported if k in a and a[k] != v]
    if a.get("split_overlap", 0) not in (0, 0.0, None) and a.get("split_overlap", 0) >= 0:
        bad.append(f"split_overlap={a['split_overlap']} (supported: 0, chunks without overlap)")
    if not 0 < seconds * rate // hop <= 3000:
        bad.append(f"max_audio_seconds={seconds} (supported: 1..30)")
    if bad:
        raise ValueError(f"{directory}/config.json audio_config: " + "; ".join(bad))
    return seconds, seconds * rate // hop


class OmniRunner:
    """A loaded omni model (params + model state) and the run settings its inputs need."""

    def __init__(self, config: ml_collections.ConfigDict, params: Any, state: Any):
        from omni_jax.tasks import get_task

        self.config = config
        self.params, self.state = params, state
        self.task = get_task(config)  # the model and its batch fields (shapes are per prompt)
        self.media = MediaConfig.from_dict(config.data.get("media"))
        from omni_jax.data.omni_pipeline import data_tokenizer

        self.tokenizer = data_tokenizer(config, config.data)
        self._synth = None

    # ---- loading ----

    @classmethod
    def load(cls, src: str, *, tokenizer: str | None = None, step: int | None = None,
             vocoder_src: str | None = None, speech: bool = True) -> "OmniRunner":
        """From an omni_jax workdir (its config.json and latest checkpoint, or `step`) or a
        release-format directory (config.json + safetensors [+ vocoder/]; `tokenizer` = the
        release's tokenizer files when they are not in `src`). speech=False skips the vocoder."""
        from omni_jax.convert.omni import is_workdir
        from omni_jax.workdir import is_local

        if is_local(src) and not os.path.isdir(src):
            raise FileNotFoundError(f"{src!r} is neither an omni_jax workdir nor a release directory")
        if is_workdir(src):
            return cls._from_workdir(src, step, tokenizer)
        return cls._from_release(src, tokenizer, vocoder_src, speech)

    @classmethod
    def _from_workdir(cls, workdir: str, step, tokenizer):
        from omni_jax.workdir import workdir_path  # the workdir may be gs://...: epath throughout

        path = workdir_path(workdir) / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{workdir} has checkpoints/ but no config.json (the trainer writes both)")
        config = ml_collections.ConfigDict(json.loads(path.read_text()))
        if config.task not in ("omni", "omni_v1"):
            raise ValueError(f"{workdir} is a run of task {config.task!r}; inference needs an omni model "
                             "(task 'omni' or 'omni_v1')")
        if tokenizer:
            config.data.tokenizer = dict(kind="release", path=tokenizer)
        if config.task == "omni":
            from omni_jax.convert.omni import abstract_variables, import_release

            abstract_params, abstract_state = abstract_variables(config.model)
            params, state = import_release(workdir, config.model, abstract_params, abstract_state, step=step)
        else:
            from omni_jax.convert.workdir import restore_params

            params, state = restore_params(config, workdir, step), None
        return cls(config, params, state)

    @classmethod
    def _from_release(cls, directory: str, tokenizer, vocoder_src, speech):
        from configs import common
        from omni_jax.convert import omni as oc

        if not os.path.exists(os.path.join(directory, "config.json")):
            raise FileNotFoundError(f"{directory} has no config.json: it is neither a release-format directory "
                                    "(config.json + safetensors) nor an omni_jax workdir (config.json + checkpoints/)")
        model = oc.model_config_from_release(directory)
        has_vocoder = vocoder_src or os.path.isdir(os.path.join(directory, oc.VOCODER_DIR))
        if speech and not has_vocoder:
            raise FileNotFoundError(
                f"{directory} has no {oc.VOCODER_DIR}/ for speech replies: pass vocoder_src= (--vocoder_src=) with the "
                "HiFT state dict as safetensors, or speech=False (--nospeech) for text replies")
        params, state, model = oc.load_release(directory, model, vocoder_src=vocoder_src,
                                               exclude=() if has_vocoder else (oc.VOCODER,))
        c = common.base()
        c.task = "omni"
        c.model = model
        seconds, mel_frames = release_audio_rules(directory)
        c.data = common.omni_data(mel_frames=mel_frames)  # not the tiny presets' 600-frame (6 s) buffer
        c.data.media.audio_chunk_seconds = seconds
        tok_dir = tokenizer or (directory if any(os.path.exists(os.path.join(directory, f))
                                                 for f in TOKENIZER_FILES) else None)
        if tok_dir:
            c.data.tokenizer = ml_collections.ConfigDict(dict(kind="release", path=tok_dir))
        elif model.llm.vocab_size >= RELEASE_VOCAB:
            raise FileNotFoundError(f"{directory} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): pass the "
                                    "released tokenizer's directory with tokenizer= (--tokenizer=DIR)")
        return cls(c, params, state)

    # ---- the prompt as one packed row ----

    def prompt_batch(self, prompt: Prompt, *, speech: bool) -> dict[str, np.ndarray]:
        """The prompt as a one-row omni batch sized to fit it (the same fields as training)."""
        from omni_jax.data.errors import DataError
        from omni_jax.data.omni_pipeline import RowCursor, load_media, write_sample

        data = self.config.data
        shapes0 = OmniShapes.from_config(data)
        ctx = formats_lib.FormatContext(tokenizer=self.tokenizer, media=self.media,
                                        chunk_samples=shapes0.chunk_samples,
                                        system=prompt.system or str(data.get("system", "") or ""))
        try:
            sample = formats_lib.chat_prompt(ctx, prompt.text, images=prompt.images, video_frames=prompt.video_frames,
                                             video_fps=prompt.video_fps, audio=[AudioItem(a) for a in prompt.audio],
                                             speech_reply=speech)
            loaded = load_media(sample, ctx) if sample.vision or sample.audio else None
        except DataError as e:
            raise ValueError(f"cannot use this input: {e}") from None
        tiles = self.media.vision_mode == "tiles"
        vision = loaded.vision if loaded else []
        n_patch = sum(len(v[0]) for v in vision)
        n_audio = sum(len(m) for m in loaded.audio) if loaded else 0
        if vision and not shapes0.vision or n_audio and not shapes0.audio:
            raise ValueError("this model was trained without " + ("vision" if vision and not shapes0.vision else "audio")
                             + " inputs (its config.data.shapes budget is 0)")
        # exactly the prompt's media (a modality it lacks has no fields: the model skips its encoder)
        shapes = dataclasses.replace(
            shapes0, seq_len=len(sample.ids) - 1,  # write_sample drops the placeholder reply token
            max_patches=0 if tiles else n_patch, max_tiles=n_patch if tiles else 0, max_vision_items=len(vision),
            max_audio_chunks=n_audio, max_speech_chunks=0, speech_wave_rate=0)
        out = empty_rows(shapes, 1)
        write_sample(out, 0, RowCursor(), sample, loaded, shapes, component=0)
        return out

    def prompt_embeddings(self, prompt: Prompt, *, speech: bool) -> dict:
        """{prompt_embeds (P, D), prompt_ids (P,)}: the merged multimodal prompt."""
        from omni_jax.tasks.omni_eval import prompts_from_rows

        b = self.prompt_batch(prompt, speech=speech)
        batch = {k: jnp.asarray(b[k]) for k in self.task.fields if k in b}  # no speech fields: nothing to encode
        (p,) = prompts_from_rows(self.task, self.params, self.state, batch, self.tokenizer)
        return p

    # ---- generation ----

    def respond(self, prompt: Prompt, *, speech: bool = False, max_new_tokens: int = 512,
                text: SamplingParams = TEXT_RELEASE, seed: int = 0) -> Reply:
        """The model's reply: text, and with speech=True (1.5 only) the speech codes."""
        from omni_jax.generate.interleaved import text_of
        from omni_jax.tasks.omni_eval import generate

        if speech and getattr(self.task.model, "audio_head", None) is None:
            raise ValueError("this model has no speech output (Baichuan-Omni v1): use speech=False (--nospeech)")
        p = self.prompt_embeddings(prompt, speech=speech)
        rows, ids = generate(self.task, self.params, [p], self.tokenizer, max_new=max_new_tokens, speech=speech,
                             seed=seed, text=text, chunked=True)
        r = rows[0]
        return Reply(text=text_of(r.tokens, self.tokenizer, ids).strip(), tokens=list(r.tokens),
                     audio_chunks=[np.asarray(c) for c in r.audio_chunks], prompt_tokens=len(p["prompt_ids"]))

    def write_wav(self, path: str, reply: Reply, seed: int = 0) -> float:
        """Synthesises the reply's speech to a 24 kHz WAV file; returns its length in seconds."""
        from omni_jax.tasks.omni_eval import synthesizer

        if not reply.audio_frames:
            raise ValueError("the reply has no speech (no audio frames were generated)")
        if self._synth is None:
            self._synth = synthesizer(self.task, self.params, self.state)
        wav = self._synth.write_wav(path, reply.audio_chunks, jax.random.PRNGKey(seed))
        return len(wav) / self._synth.sample_rate

    # ---- streaming (omni_jax/generate/streaming.py) ----

    def speech_synthesizer(self):
        """The codes -> 24 kHz Synthesizer `write_wav` uses (pieces of at most 250 codes)."""
        from omni_jax.tasks.omni_eval import synthesizer

        if self._synth is None:
            self._synth = synthesizer(self.task, self.params, self.state)
        return self._synth

    def respond_stream(self, prompt: Prompt, *, speech: bool = True, max_new_tokens: int = 512,
                       text: SamplingParams = TEXT_RELEASE, seed: int = 0, chunk_frames: int = 25,
                       steps_per_call: int = 8):
        """Yields ("text", str) pieces and ("audio", float32 24 kHz samples) chunks while the
        reply is generated, then ("done", Reply). The same loop, keys and pieces as
        `respond(..., speech)` followed by `write_wav`; every `chunk_frames` new codes (25 = 2 s of
        speech) the current piece is decoded again with its state (omni_jax/generate/streaming.py)
        and the samples that became final are yielded. A `chunk_frames` below the decoder's
        receptive field is an error naming the minimum."""
        from omni_jax.generate.interleaved import GenerationConfig, SpecialIds, SpeechModels, text_of
        from omni_jax.generate.sampling import AUDIO_RELEASE
        from omni_jax.generate.streaming import SpeechStream, StepStream
        from omni_jax.tasks.omni_eval import _left_pad

        m = self.task.model
        if speech and getattr(m, "audio_head", None) is None:
            raise ValueError("this model has no speech output (Baichuan-Omni v1): use speech=False (--nospeech)")
        speech_out = SpeechStream(self.speech_synthesizer(), jax.random.PRNGKey(seed),
                                  chunk_frames) if speech else None
        p = self.prompt_embeddings(prompt, speech=speech)
        ids = SpecialIds.from_tokenizer(self.tokenizer)
        cfg = GenerationConfig(max_new_steps=max_new_tokens, text=text, audio=AUDIO_RELEASE, speech=speech)
        key = (speech, max_new_tokens, text)
        if getattr(self, "_stream_key", None) != key:
            self._stream = StepStream(SpeechModels(m.llm, getattr(m, "audio_embed", None), getattr(m, "audio_head", None)),
                                      ids, cfg)
            self._stream_key = key
        pid, mask, emb = _left_pad([p])
        sub = {k: self.params[k] for k in ("llm", "audio_embed", "audio_head") if k in self.params}
        tokens, said, chunks, finished = [], "", [], False
        for part in self._stream.run(sub, pid, mask, jax.random.PRNGKey(seed), jnp.asarray(emb),
                                     steps_per_call=steps_per_call):
            tokens += part["tokens"]
            now = text_of(tokens, self.tokenizer, ids).rstrip("\ufffd")  # an incomplete UTF-8 tail waits
            if len(now) > len(said) and now.startswith(said):
                yield "text", now[len(said):]
                said = now
            for cid, c in zip(part["chunk"], part["codes"]):
                while len(chunks) <= cid:
                    chunks.append([])
                chunks[cid].append(c)
            if speech_out is not None:
                closed = sum(t == ids.audiogen_end for t in tokens)
                for wav in speech_out.push(part["codes"], part["chunk"], closed, part["done"]):
                    yield "audio", wav
            finished = part["finished"]
        if speech_out is not None:
            tail = speech_out.flush()
            if len(tail):
                yield "audio", tail
        now = text_of(tokens, self.tokenizer, ids)
        if len(now) > len(said):
            yield "text", now[len(said):] if now.startswith(said) else now
        # chunk list as split_rows builds it (an audio chunk whose first frame was the end code is empty)
        n_chunks = sum(t == ids.audiogen_start for t in tokens) if speech else 0
        depth = m.audio_head.cfg.depth if speech else 1
        chunks += [[] for _ in range(n_chunks - len(chunks))]
        codes = [np.stack(c) if c else np.zeros((0, depth), np.int32) for c in chunks]
        del finished
        yield "done", Reply(text=now.strip(), tokens=tokens, audio_chunks=codes, prompt_tokens=len(p["prompt_ids"]))

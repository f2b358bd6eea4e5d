"""Pre-training the v1 Whisper encoder on speech recognition with CTC: the task of the from-scratch
v1 stage `audio_encoder_pretrain` (configs/omni_v1/stages.py).

The 7B v1 starts its audio encoder from Whisper-large-v3, a trained recogniser (ARCHITECTURE.md 2);
the from-scratch sizes have no such checkpoint, as they have no Qwen2.5 (`text_pretrain` stands in for
that one). This task stands in for Whisper's own ASR training: the encoder
(omni_jax/models/whisper.py, as `OmniV1.encode_audio_states` runs it) and a linear CTC head,
`v1_audio_ctc_head` (training only: not part of the v1 model, left out of every export,
omni_jax/models/omni_v1.py TRAINING_ONLY), learn the transcript's tokens from the encoder's 20 ms
frames (one label per frame: 50 labels/s against the embedded speech's 10-15 characters/s). Without
it the tiny LLM never learns to read the random encoder's features (README, "Baichuan-Omni v1").

Same model and parameter tree as the `omni_v1` task, plus the head. Batches: global row r reads
record `utterance_of_row(r, seed, N)` of `config.ctc.dataset` / `split` (every record once per pass,
a new order each pass; a pure function of (config, r)), a TFDS dataset of the ASR format's fields
(`audio` bytes, `transcript`; omni_jax/data/builders), opened as the mixture pipeline opens it:

  ctc_mels           f32 (B, n_mels, F)  the clip's log-mel as the omni batches compute it (one chunk,
                                         F = config.data.shapes.mel_frames; zero beyond its frames)
  ctc_mel_lengths    i32 (B,)            its valid frames
  ctc_labels         i32 (B, L)          transcript tokens (config.data.tokenizer, no eos),
                                         L = config.ctc.max_labels
  ctc_label_lengths  i32 (B,)

Loss = CTC negative log-likelihood (blank = the LLM vocabulary size) summed over rows / the batch's
labels (nats per token). A record longer than one chunk, a transcript longer than `max_labels` or than
the clip's encoder frames has no CTC path: it is a data error that names the record and the fix.
`config.ctc.cache_mib` (default 1024; 0 = off) keeps each record's mel and tokens in host memory after
its first read, so the later passes skip decoding and the mel (the same bits; about 0.12 MiB a clip of
the embedded speech, 270 MiB for its 2400 train clips).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.models.omni_v1 import CTC_HEAD
from omni_jax.tasks.audio_tokenizer import CTCHead
from omni_jax.tasks.base import config_section
from omni_jax.tasks.losses import ctc_nll_sum
from omni_jax.tasks.omni_v1 import OmniV1Task

CTC_DEFAULTS = dict(dataset="", split="train", seed=0, max_labels=64, cache_mib=1024)


class OmniV1AudioCTCTask(OmniV1Task):

    def __init__(self, config: Any):
        super().__init__(config)
        self.ctc_cfg = config_section(config, "ctc", CTC_DEFAULTS)
        if not self.ctc_cfg["dataset"]:
            raise ValueError("the omni_v1_audio_ctc task needs config.ctc.dataset (a TFDS dataset with ASR records, "
                             "e.g. 'omni_speech/shapes'; configs/omni_v1/stages.py audio_encoder_pretrain sets it)")
        if int(self.ctc_cfg["max_labels"]) < 1:
            raise ValueError(f"config.ctc.max_labels={self.ctc_cfg['max_labels']}: must be >= 1")
        if int(self.ctc_cfg["cache_mib"]) < 0:
            raise ValueError(f"config.ctc.cache_mib={self.ctc_cfg['cache_mib']}: must be >= 0 (0 = no cache)")
        llm, enc = self.model_cfg.llm, self.model_cfg.audio_encoder
        self.head = CTCHead(llm.vocab_size, 1, enc.dtype, enc.param_dtype)

    def batch_fields(self, s):
        super().batch_fields(s)
        return ("ctc_mels", "ctc_mel_lengths", "ctc_labels", "ctc_label_lengths")

    def init(self, rng):
        out = super().init(rng)
        d = self.model_cfg.audio_encoder.d_model
        out[CTC_HEAD] = self.head.init(jax.random.fold_in(rng, 6), jnp.zeros((1, 1, d)))["params"]
        return out

    def batch_spec(self, global_batch: int):
        b, f, n = global_batch, self.shapes.mel_frames, int(self.ctc_cfg["max_labels"])
        sds = jax.ShapeDtypeStruct
        return {
            "ctc_mels": (sds((b, self.shapes.n_mels, f), jnp.float32),
                         ("activation_batch", "activation_mel", "activation_length")),
            "ctc_mel_lengths": (sds((b,), jnp.int32), ("activation_batch",)),
            "ctc_labels": (sds((b, n), jnp.int32), ("activation_batch", None)),
            "ctc_label_lengths": (sds((b,), jnp.int32), ("activation_batch",)),
        }

    def norms(self, batch):
        return {"labels": jnp.maximum(batch["ctc_label_lengths"].sum(), 1).astype(jnp.float32)}

    def logits(self, params, mels, mel_lengths):
        """(N, n_mels, F) mels + (N,) valid frames -> CTC logits (N, T, vocab + 1) and valid frames (N,)."""
        h, n = self.model.encode_audio_states(params, mels, mel_lengths)
        return self.head.apply({"params": params[CTC_HEAD]}, h).astype(jnp.float32), n

    def loss(self, params, batch, rng, norms):
        del rng
        logits, n = self.logits(params, batch["ctc_mels"], batch["ctc_mel_lengths"])
        count = batch["ctc_label_lengths"]
        ctc = ctc_nll_sum(logits, n, batch["ctc_labels"], count, self.model_cfg.llm.vocab_size) / norms["labels"]
        return ctc, {"loss": ctc, "ctc_loss": ctc, "labels": count.sum().astype(jnp.float32)}

    def make_data(self, stage, *, start_step, process_index, process_count, rows=None):
        from omni_jax.data.iterator import global_rows_iterator

        c, d = self.ctc_cfg, self.config.data
        rows_of = ctc_rows(self.config, c)
        fp = repr(("omni_v1_audio_ctc", c["dataset"], c["split"], int(c["seed"]), int(c["max_labels"]),
                   self.shapes.mel_frames, int(self.config.train.batch_size), d.tokenizer.kind))
        return global_rows_iterator(rows_of, fp, int(self.config.train.batch_size), start_step=start_step,
                                    process_index=process_index, process_count=process_count, rows=rows)


def ctc_rows(config: Any, ctc: dict):
    """make_batch(start, count) for global_rows_iterator: the module docstring's rows."""
    from omni_jax.data.builders import default_data_dir
    from omni_jax.data.errors import DataError
    from omni_jax.data.formats import FormatContext, get_bytes, get_text
    from omni_jax.data.media import encoder_frames
    from omni_jax.data.media_io import AudioItem, MediaConfig
    from omni_jax.data.omni_batch import OmniShapes
    from omni_jax.data.sources import open_source
    from omni_jax.data.tokenizer import make_tokenizer
    from omni_jax.data.tokenizer_data import utterance_of_row

    d = config.data
    shapes = OmniShapes.from_config(d)
    tok = make_tokenizer(d.tokenizer.kind, config.model.llm.vocab_size, d.tokenizer.get("path"))
    source = open_source(ctc["dataset"], ctc["split"], d.get("data_dir") or default_data_dir())
    count, seed, max_labels = len(source), int(ctc["seed"]), int(ctc["max_labels"])
    if count == 0:
        raise DataError("invalid", f"config.ctc.dataset={ctc['dataset']!r} split {ctc['split']!r} has no records")
    chunk, frames = shapes.chunk_samples, shapes.mel_frames
    ctx = FormatContext(tokenizer=tok, media=MediaConfig.from_dict(d.get("media")), chunk_samples=chunk)

    cache, budget = {}, int(ctc["cache_mib"]) << 20  # record -> (its mel frames, tokens)
    used = [0]

    def features(i: int) -> tuple[np.ndarray, list[int]]:
        """Record i's log-mel (its valid frames) and transcript tokens, checked; kept in memory up to
        config.ctc.cache_mib so later passes skip the decoding and the mel (the same arrays)."""
        if i in cache:
            return cache[i]
        rec = source[i]
        where = f"config.ctc.dataset={ctc['dataset']!r} [{ctc['split']}] record {i}"
        try:  # the ASR format's fields, read as the mixture pipeline reads them
            audio, text = get_bytes(rec, ctx, "audio"), get_text(rec, ctx, "transcript")
        except DataError as e:
            raise e.with_record(where) from None
        mels = AudioItem(audio).features(chunk)
        if len(mels) != 1:
            raise DataError("over_long", f"{where} is {len(mels)} chunks of audio; the CTC stage reads one "
                            f"(config.data.shapes.mel_frames={frames}): raise it or cut the record")
        ids = tok.encode(text)
        enc_frames = encoder_frames(mels[0].shape[1])
        if not 0 < len(ids) <= min(max_labels, enc_frames):
            raise DataError("over_long", f"{where}: its transcript is {len(ids)} tokens, the limit is "
                            f"config.ctc.max_labels={max_labels} and the clip's {enc_frames} encoder frames "
                            "(CTC needs a frame per label): raise max_labels or drop the record")
        got = (np.asarray(mels[0], np.float32), ids)
        if used[0] + got[0].nbytes <= budget:
            cache[i] = got
            used[0] += got[0].nbytes
        return got

    def row(i: int) -> dict[str, np.ndarray]:
        mel_i, ids = features(i)
        mel = np.zeros((shapes.n_mels, frames), np.float32)
        mel[:, :mel_i.shape[1]] = mel_i
        labels = np.zeros((max_labels,), np.int32)
        labels[:len(ids)] = ids
        return {"ctc_mels": mel, "ctc_mel_lengths": np.int32(mel_i.shape[1]), "ctc_labels": labels,
                "ctc_label_lengths": np.int32(len(ids))}

    def make_batch(start: int, n: int) -> dict[str, np.ndarray]:
        got = [row(utterance_of_row(r, seed, count)) for r in range(start, start + n)]
        return {k: np.stack([g[k] for g in got]) for k in got[0]}

    return make_batch

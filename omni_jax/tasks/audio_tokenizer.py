"""Training the audio tokenizer with the LLM frozen (ARCHITECTURE.md 1.4, 1.8).

Model (params): audio_encoder (Whisper), audio_bridge (Conv-GMLP + proj_decoder), audio_decoder,
audio_text_adapter (Dense code_dim -> LLM width, training only: not part of the release), llm
(Qwen2LM; the stage rules freeze `llm/.*`) and, when `loss.ctc` > 0, audio_ctc_head (training
only). State (TrainState.model_state): the bridge's RVQ codebooks and EMA statistics,
{"audio_bridge": {"vq_N": {embed, embed_avg, cluster_size}}}.

Per step, on device: Whisper log-mel (the encoder input) and the 80-bin target mel are computed
from the raw waveforms (omni_jax/ops/mel_jax.py); the tokenizer runs in training mode
(AudioTokenizer.train_forward: STE, stage dropout, progressive replacement of continuous by
quantised features with probability ramping from `quant_prob_start` to 1 over
`quant_warmup_steps` stage steps); losses (sums over valid elements / global counts):

  reconstruction  L1 + L2 between the coarse (resampled) and refined mel and the target mel,
                  normalised as (log-mel - target_mean) / target_std (defaults -5.5 / 3.5, the
                  embedded speech's statistics; use 0 / 1 to fine-tune a decoder trained on raw log-mel)
  multi_scale     L1 between refined and target mel average-pooled over time by each of `scales`
  commitment      sum_i ||r_i - sg(q_i)||^2 per code element (pulls the encoder to its codewords)
  transcription   next-token cross entropy of the transcript through the FROZEN LLM, whose input
                  is [adapter(features) for the clip's 12.5 Hz frames | transcript tokens]: the
                  first token is predicted at the last audio frame. It keeps the codes aligned
                  with the LLM's text space (Baichuan-Audio). The release feeds 1.5's LLM summed
                  code embeddings instead (audio_embed); those are trained in a later stage.
  ctc             optional (weight `ctc`, default 0: the release's objective has none): CTC of the
                  transcript tokens (without eos) from the same 12.5 Hz features through a linear
                  head that emits `ctc_labels_per_frame` labels per frame (2: 25 labels/s, more
                  than the synthesiser's 10-15 characters/s), blank = the vocabulary size. Per
                  frame and local, unlike the transcription loss, it asks each code to hold the
                  characters spoken over it (benchmarks/speech_ctc_baseline.py, README #14). A
                  row with more tokens than labels has no CTC path (optax's loss is then ~1e5):
                  raise ctc_labels_per_frame for denser transcripts.

Random draws (stage dropout, restart candidates, which frames are replaced) come from one key per
global row (omni_jax/train/rng.py), so 1 or m microbatches draw the same numbers.

After the gradient step `update_state` applies the EMA codebook update with dead-code restarts
to the statistics of the whole batch (merged over microbatches); `loss.update_codebooks=False`
keeps the codebooks fixed.

Batch fields: omni_jax/data/tokenizer_data.py.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from omni_jax import sharding as shd
from omni_jax.layers import Dense, dtype_of
from omni_jax.models.audio_tokenizer import AudioTokenizer, AudioTokenizerConfig, ema_update, merge_stats
from omni_jax.models.qwen2 import Qwen2Config, Qwen2LM
from omni_jax.ops import mel_jax
from omni_jax.tasks.base import Task, config_section
from omni_jax.tasks.losses import cross_entropy_sum, ctc_nll_sum
from omni_jax.train.rng import ROW_IDS, row_keys

ROWS = ("activation_batch",)
AUDIO_MODULES = ("audio_encoder", "audio_bridge", "audio_decoder")
LOSS_DEFAULTS = dict(reconstruction=1.0, multi_scale=1.0, scales=(2, 4, 8), commitment=0.25, transcription=0.5,
                     quant_prob_start=0.25, quant_warmup_steps=0, stft_impl="matmul", target_log_floor=1e-5,
                     target_mean=-5.5, target_std=3.5, update_codebooks=True, ctc=0.0, ctc_labels_per_frame=2)


class AudioTextAdapter(nn.Module):
    """Quantised code vectors (B, N, pool*d) -> LLM input embeddings (B, N, hidden)."""

    features: int
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        return Dense(self.features, ("mlp", "embed"), use_bias=True, dtype=dtype_of(self.dtype),
                     param_dtype=dtype_of(self.param_dtype), name="proj")(x)


class CTCHead(nn.Module):
    """Quantised code vectors (B, N, code_dim) -> CTC logits (B, N * per_frame, vocab + 1); blank = vocab."""

    vocab: int
    per_frame: int
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        y = Dense(self.per_frame * (self.vocab + 1), ("embed", "vocab"), use_bias=True, dtype=dtype_of(self.dtype),
                  param_dtype=dtype_of(self.param_dtype), name="proj")(x)
        return y.reshape(x.shape[0], x.shape[1] * self.per_frame, self.vocab + 1)


def ctc_greedy(ids, blank: int) -> list[int]:
    """Greedy CTC decoding of one row's per-label argmax ids: repeats merged, then blanks dropped."""
    return [int(i) for j, i in enumerate(ids) if i != blank and (j == 0 or i != ids[j - 1])]


class AudioTokenizerTask(Task):
    row_rng = True  # stage dropout, restart candidates and feature replacement are drawn per global row

    def __init__(self, config: Any):
        super().__init__(config)
        m = config.model
        self.cfg = AudioTokenizerConfig.from_dict(m.audio.to_dict(), "config.model.audio")
        self.llm_cfg = Qwen2Config.from_dict(m.llm.to_dict(), "config.model.llm")
        self.tokenizer = AudioTokenizer(self.cfg)
        self.llm = Qwen2LM(self.llm_cfg)
        self.adapter = AudioTextAdapter(self.llm_cfg.hidden_size, self.cfg.bridge.dtype, self.cfg.bridge.param_dtype)
        self.loss_cfg = loss = config_section(config, "loss", LOSS_DEFAULTS)
        if int(loss["ctc_labels_per_frame"]) < 1:
            raise ValueError(f"config.loss.ctc_labels_per_frame={loss['ctc_labels_per_frame']}: must be >= 1")
        self.ctc_head = (CTCHead(self.llm_cfg.vocab_size, int(loss["ctc_labels_per_frame"]), self.cfg.bridge.dtype,
                                 self.cfg.bridge.param_dtype) if loss["ctc"] > 0 else None)
        d = config.data
        self.samples = int(round(d.chunk_seconds * 16000))
        self.text_len = int(d.max_text_tokens)
        self.mel_frames = self.samples // mel_jax.WHISPER_HOP
        self.target_frames = self.samples // self.cfg.decoder.mel_hop_length
        enc = self.cfg.encoder
        if (self.mel_frames - 1) // enc.stride + 1 > enc.max_source_positions:
            raise ValueError(
                f"config.data.chunk_seconds={d.chunk_seconds} gives {self.mel_frames} mel frames, more than the "
                f"encoder's {enc.max_source_positions} positions allow; raise config.model.audio.encoder.max_source_positions")
        self.frames = -(-((self.mel_frames - 1) // enc.stride + 1) // self.cfg.bridge.pool)  # bridge buffer N

    # ---- parameters and state ----

    def init(self, rng):
        k_tok, k_llm, k_ad = jax.random.split(rng, 3)
        mel = jnp.zeros((1, self.cfg.encoder.num_mel_bins, self.mel_frames))
        v = self.tokenizer.init(k_tok, mel, jnp.full((1,), self.mel_frames, jnp.int32))
        ids = jnp.zeros((1, 4), jnp.int32)
        llm = self.llm.init(k_llm, ids, ids, ids + 1)["params"]
        ad = self.adapter.init(k_ad, jnp.zeros((1, 1, self.cfg.bridge.code_dim)))["params"]
        out = dict(v["params"], audio_text_adapter=ad, llm=llm)
        if self.ctc_head is not None:
            out["audio_ctc_head"] = self.ctc_head.init(jax.random.fold_in(k_ad, 1),
                                                       jnp.zeros((1, 1, self.cfg.bridge.code_dim)))["params"]
        return out

    def init_state(self, rng):
        return self.tokenizer.init(jax.random.fold_in(rng, 7), method=AudioTokenizer.init_codebooks)["vq_stats"]

    def batch_spec(self, global_batch: int):
        i32, f32 = jnp.int32, jnp.float32
        return {
            "waveform": (jax.ShapeDtypeStruct((global_batch, self.samples), f32), ("activation_batch", None)),
            "num_samples": (jax.ShapeDtypeStruct((global_batch,), i32), ROWS),
            "text": (jax.ShapeDtypeStruct((global_batch, self.text_len), i32), ("activation_batch", "activation_length")),
            "text_lengths": (jax.ShapeDtypeStruct((global_batch,), i32), ROWS),
            "stage_step": (jax.ShapeDtypeStruct((global_batch,), i32), ROWS),
        }

    # ---- counts (data only) ----

    def _lengths(self, num_samples):
        frames = self.cfg.code_lengths(mel_jax.whisper_valid_frames(num_samples, self.mel_frames))
        target = jnp.minimum(num_samples // self.cfg.decoder.mel_hop_length, self.target_frames)
        return frames, target

    def norms(self, batch):
        frames, target = self._lengths(batch["num_samples"])
        n_mel = self.cfg.decoder.num_mel_bins
        out = {"mel": jnp.maximum(target.sum() * n_mel, 1).astype(jnp.float32),
               "codes": jnp.maximum(frames.sum() * self.cfg.bridge.code_dim, 1).astype(jnp.float32),
               "text": jnp.maximum(batch["text_lengths"].sum(), 1).astype(jnp.float32),
               "frames": jnp.maximum(frames.sum(), 1).astype(jnp.float32)}
        for s in self.loss_cfg["scales"]:
            out[f"mel_x{s}"] = jnp.maximum((target // s).sum() * n_mel, 1).astype(jnp.float32)
        return out

    # ---- the loss ----

    def loss(self, params, batch, rng, norms):
        raise TypeError("AudioTokenizerTask keeps its RVQ codebooks as model state: the train step calls "
                        "loss_with_state(params, state, batch, rng, norms)")

    def _quant_prob(self, stage_step):
        c = self.loss_cfg
        warm = max(int(c["quant_warmup_steps"]), 1)
        p = c["quant_prob_start"] + (1.0 - c["quant_prob_start"]) * stage_step.astype(jnp.float32) / warm
        return jnp.clip(p, 0.0, 1.0) if c["quant_warmup_steps"] > 0 else jnp.ones_like(p)

    def forward(self, params, state, batch, rng):
        """The tokenizer's training forward on a batch: dict of decoder outputs, targets, statistics."""
        c = self.loss_cfg
        wave, n = batch["waveform"], batch["num_samples"]
        mel, mel_len = mel_jax.whisper_log_mel(wave, n, impl=c["stft_impl"])
        dec = self.cfg.decoder
        target, target_len = mel_jax.target_mel(
            wave, n, n_fft=4 * dec.mel_hop_length, hop=dec.mel_hop_length, n_mels=dec.num_mel_bins,
            sample_rate=dec.mel_sample_rate, log_floor=c["target_log_floor"], impl=c["stft_impl"])
        valid = (jnp.arange(target.shape[1])[None] < target_len[:, None])[..., None]
        target = jnp.where(valid, (target - c["target_mean"]) / c["target_std"], 0.0)
        variables = {"params": {k: params[k] for k in AUDIO_MODULES}, "vq_stats": state}
        out = self.tokenizer.apply(variables, mel, mel_len, rng, self._quant_prob(batch["stage_step"]),
                                   target_len, self.target_frames, method=AudioTokenizer.train_forward)
        return dict(out, target=target, target_lengths=target_len)

    def loss_with_state(self, params, state, batch, rng, norms):
        c = self.loss_cfg
        k_fwd = jax.random.fold_in(rng, 1)
        if ROW_IDS in batch:  # one key per global row: the same draws for any microbatch split
            k_fwd = row_keys(k_fwd, batch[ROW_IDS])
        out = self.forward(params, state, batch, rng=k_fwd)
        target, t_len = out["target"], out["target_lengths"]
        valid = (jnp.arange(self.target_frames)[None] < t_len[:, None])[..., None].astype(jnp.float32)
        metrics, rec = {}, 0.0
        for name in ("coarse_mel", "refined_mel"):
            diff = (out[name].astype(jnp.float32) - target) * valid
            l1, l2 = jnp.abs(diff).sum() / norms["mel"], jnp.square(diff).sum() / norms["mel"]
            metrics[f"{name}_l1"], metrics[f"{name}_l2"] = l1, l2
            rec = rec + l1 + l2
        ms = 0.0
        for s in c["scales"]:
            t = (self.target_frames // s) * s
            pool = lambda x: x[:, :t].reshape(x.shape[0], t // s, s, -1).mean(2)
            keep = (jnp.arange(t // s)[None] < (t_len // s)[:, None])[..., None]
            ms = ms + jnp.where(keep, jnp.abs(pool(out["refined_mel"].astype(jnp.float32)) - pool(target)), 0).sum() / norms[f"mel_x{s}"]
        commit = out["commit_sq_sum"] / norms["codes"]
        ce, acc = self._transcription(params, out, batch, norms)
        obj = (c["reconstruction"] * rec + c["multi_scale"] * ms + c["commitment"] * commit + c["transcription"] * ce)
        if self.ctc_head is not None:
            metrics["ctc"] = self._ctc(params, out, batch, norms)
            obj = obj + c["ctc"] * metrics["ctc"]
        valid_frames = jnp.arange(out["replaced"].shape[1])[None] < out["lengths"][:, None]
        metrics.update(reconstruction=rec, multi_scale=ms, commitment=commit, transcription=ce,
                       transcription_accuracy=acc, loss=rec,
                       quantized_fraction=jnp.sum(out["replaced"] & valid_frames) / norms["frames"])
        return obj, metrics, out["stats"]

    def _transcription(self, params, out, batch, norms):
        b, n = out["lengths"].shape[0], self.frames
        audio = self.adapter.apply({"params": params["audio_text_adapter"]}, out["mixed"])
        text_ids = batch["text"]
        text = self.llm.apply({"params": params["llm"]}, text_ids, method=Qwen2LM.embed)
        x = jnp.concatenate([audio.astype(text.dtype), text], axis=1)
        n_audio, t_len = out["lengths"], batch["text_lengths"]
        a_valid = jnp.arange(n)[None] < n_audio[:, None]
        t_valid = jnp.arange(self.text_len)[None] < t_len[:, None]
        seg = jnp.concatenate([a_valid, t_valid], axis=1).astype(jnp.int32)
        pos = jnp.concatenate([jnp.broadcast_to(jnp.arange(n), (b, n)),
                               n_audio[:, None] + jnp.arange(self.text_len)[None]], axis=1)
        h, _ = self.llm.apply({"params": params["llm"]}, x, pos, seg, method=Qwen2LM.hidden)
        logits = self.llm.apply({"params": params["llm"]}, h, method=Qwen2LM.logits)
        # the last audio frame predicts text[0]; text slot k predicts text[k + 1]
        last = (jnp.arange(n)[None] == (n_audio - 1)[:, None]) & (n_audio[:, None] > 0)
        tgt_audio = jnp.where(last, text_ids[:, :1], 0)
        tgt_text = jnp.concatenate([text_ids[:, 1:], jnp.zeros((b, 1), text_ids.dtype)], axis=1)
        w_text = jnp.arange(self.text_len)[None] + 1 < t_len[:, None]
        targets = jnp.concatenate([tgt_audio, tgt_text], axis=1)
        weights = jnp.concatenate([last, w_text], axis=1).astype(jnp.float32)
        nll, correct = cross_entropy_sum(logits, targets, weights)
        return nll / norms["text"], correct / norms["text"]

    def _ctc(self, params, out, batch, norms):
        """CTC negative log-likelihood of the transcript (eos left out), summed over rows, per text token."""
        logits = self.ctc_head.apply({"params": params["audio_ctc_head"]}, out["mixed"]).astype(jnp.float32)
        n_out = out["lengths"] * self.ctc_head.per_frame
        n_text = jnp.maximum(batch["text_lengths"] - 1, 0)  # the last token is eos: nothing spoken
        return ctc_nll_sum(logits, n_out, batch["text"], n_text, self.llm_cfg.vocab_size) / norms["text"]

    # ---- model state ----

    def merge_stats(self, a, b):
        return merge_stats(a, b)

    def update_state(self, state, stats, rng):
        if not self.loss_cfg["update_codebooks"]:  # e.g. fine-tuning the decoder on fixed codes
            return state, {}
        new, metrics = ema_update(state["audio_bridge"], stats, self.cfg.bridge)
        return {"audio_bridge": new}, metrics

    def make_data(self, stage, *, start_step, process_index, process_count, rows=None):
        from omni_jax.data.tokenizer_data import make_tokenizer_iterator

        return make_tokenizer_iterator(self.config, start_step=start_step, process_index=process_index,
                                       process_count=process_count, rows=rows)

    # ---- PyTorch checkpoints (the release layout) ----

    def _release_state_dict(self, path: str):
        from omni_jax.convert.safetensors_io import load_state_dict

        if self.config.init.get("flavour", "release") != "release":
            raise ValueError("the audio tokenizer imports the release layout only: set config.init.flavour='release'")
        return load_state_dict(path)

    def _warm_start_tree(self, path: str):
        """The latest TrainState saved in an omni_jax workdir (e.g. runs/backbone_tiny), as a tree."""
        from omni_jax.train.checkpoint import Checkpointer

        ck = Checkpointer(os.path.join(path, "checkpoints"))
        step = ck.latest_step()
        if step is None:
            raise ValueError(f"config.init.checkpoint={path!r} is a workdir without checkpoints")
        tree = ck.restore_tree(step)
        ck.close()
        return tree

    @staticmethod
    def _take_matching(saved, init, what: str, path: str):
        from flax import traverse_util

        flat_s = traverse_util.flatten_dict(dict(saved or {}))
        flat_i = traverse_util.flatten_dict(dict(init))
        taken = {k: np.asarray(flat_s[k]).astype(v.dtype) for k, v in flat_i.items()
                 if k in flat_s and tuple(np.shape(flat_s[k])) == tuple(v.shape)}
        if not taken:
            raise ValueError(f"config.init.checkpoint={path!r}: none of its {what} match this model's paths and "
                             "shapes (for the frozen LLM, config.model.llm must equal the backbone run's)")
        logging.getLogger("omni_jax").info("warm start from %s: %d of %d %s tensors taken", path, len(taken),
                                           len(flat_i), what)
        return traverse_util.unflatten_dict({**flat_i, **taken})

    def import_params(self, path, abstract_params):
        """`path` is either an omni_jax workdir (warm start: every parameter with the same path and
        shape is taken from its latest checkpoint, e.g. a trained backbone's `llm/...`; the rest is
        initialised) or a release checkpoint: the audio modules (and the LLM, when present) are
        imported and the adapter (not part of the release) is initialised."""
        from omni_jax.convert import audio as conv
        from omni_jax.convert import qwen2 as qconv
        from omni_jax.convert.mapping import import_params

        init = jax.tree.map(np.asarray, shd.unbox(jax.jit(self.init)(jax.random.PRNGKey(self.config.train.seed))))
        if os.path.isdir(os.path.join(path, "checkpoints")):
            return self._take_matching(self._warm_start_tree(path).get("params"), init, "parameter", path)
        sd = self._release_state_dict(path)
        abstract_state = jax.eval_shape(lambda: shd.unbox(self.init_state(jax.random.PRNGKey(0))))
        abstract = {"params": {k: abstract_params[k] for k in AUDIO_MODULES}, "vq_stats": {"audio_bridge": abstract_state["audio_bridge"]}}
        tok = conv.import_tokenizer(sd, self.cfg, abstract, ignore=[r"(?!audio_tokenizer\.(audio_model|audio_bridge_model|audio_decoder)\.).*"],
                                    source=path)
        out = dict(init, **tok["params"])
        if any(k.startswith("model.layers.") for k in sd):
            out["llm"] = import_params(sd, qconv.rules(self.llm_cfg, "release"), abstract_params["llm"],
                                       ignore=[r"(?!model\.(layers|embed_tokens|norm)\.|lm_head\.).*", *qconv.IGNORE],
                                       source=path)
        return out

    def import_state(self, path, abstract_state):
        from omni_jax.convert import audio as conv

        if os.path.isdir(os.path.join(path, "checkpoints")):
            saved = self._warm_start_tree(path).get("model_state")
            if not saved:
                return None  # e.g. a backbone run: initialise the codebooks
            init = jax.tree.map(np.asarray, shd.unbox(jax.jit(self.init_state)(jax.random.PRNGKey(self.config.train.seed))))
            return self._take_matching(saved, init, "codebook", path)
        sd = self._release_state_dict(path)
        abstract_params = jax.eval_shape(lambda: shd.unbox(self.init(jax.random.PRNGKey(0))))
        abstract = {"params": {"audio_bridge": abstract_params["audio_bridge"]}, "vq_stats": abstract_state}
        out = conv.import_tokenizer(sd, self.cfg, abstract, modules=("audio_bridge",),
                                    ignore=[r"(?!audio_tokenizer\.audio_bridge_model\.).*"], source=path)
        return out["vq_stats"]

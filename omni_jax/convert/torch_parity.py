"""JAX vs the exported PyTorch models on random inputs (fp32): what launch.convert --mode=export_torch
prints after writing, and what the export tests assert.

  v1_cases(cfg, token_ids)                 prompts with text only, image tiles, video frames, audio chunks
  v1_jax_logits(params, cfg, cases, ids)   OmniV1 (omni_jax/models/omni_v1.py) -> {case: (T, vocab)}
  v1_torch_logits(model, case)             the remote-code OmniV1ForCausalLM on the same prompt
  v1_jax_greedy(params, cfg, case, n, eos) greedy continuation with the KV cache (omni_jax/models/qwen2.py)
  check_v1(directory, params, cfg, ids)    {case: max abs logit diff}, the model loaded with
                                           AutoModelForCausalLM(trust_remote_code=True)
  check_part(directory, part, params, cfg) max abs output diff of one part against its transformers class
  check_written(loaded, part, dir, dtype)  the check of one written export (what launch.convert prints);
                                           a lower-precision export is compared with JAX on the rounded
                                           weights, both sides in fp32

Placeholders follow the data pipeline (omni_jax/data/omni_batch.py, vision_mode "tiles"): tile k's
j-th token at k * tile_slot + j of the vision buffer, audio chunk a's k-th token at a * TPS + k.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def _ids(rs, n, vocab, avoid):
    x = rs.randint(0, vocab, n)
    while np.isin(x, avoid).any():
        bad = np.isin(x, avoid)
        x[bad] = rs.randint(0, vocab, int(bad.sum()))
    return x.tolist()


def v1_cases(cfg, token_ids: Mapping[str, int], seed: int = 0, mel_frames: int = 64) -> dict[str, dict]:
    """{name: prompt}: text; 2 image tiles; 2 video frames; 2 audio chunks (one partial); all together.
    A prompt: ids (T,), tiles (K, 3, S, S), is_video (K,), mels (A, n_mels, F), lengths (A,)."""
    rs = np.random.RandomState(seed)
    p, enc, rate = cfg.v1_projector, cfg.audio_encoder, cfg.v1_audio_projector.rate
    s = cfg.siglip.image_size
    avoid = [v for v in token_ids.values() if v is not None]
    text = lambda n: _ids(rs, n, cfg.llm.vocab_size, avoid)
    img = rs.randn(2, 3, s, s).astype(np.float32)
    vid = rs.randn(2, 3, s, s).astype(np.float32)
    mels = rs.randn(2, enc.num_mel_bins, mel_frames).astype(np.float32)
    lengths = np.array([mel_frames, mel_frames * 5 // 8], np.int32)
    audio_tokens = int(sum(enc.output_lengths(int(n)) // rate for n in lengths))
    I, V, A = [token_ids["image"]] * (2 * p.image_tokens), [token_ids["video"]] * (2 * p.video_tokens), \
        [token_ids["audio"]] * audio_tokens
    none = dict(tiles=None, is_video=None, mels=None, lengths=None)
    cases = {
        "text": dict(none, ids=text(12)),
        "image": dict(none, ids=text(3) + I + text(4), tiles=img, is_video=np.zeros(2, bool)),
        "video": dict(none, ids=text(3) + V + text(4), tiles=vid, is_video=np.ones(2, bool)),
        "audio": dict(none, ids=text(3) + A + text(4), mels=mels, lengths=lengths),
        "all": dict(ids=text(2) + I + text(2) + V + text(2) + A + text(3), tiles=np.concatenate([img, vid]),
                    is_video=np.array([0, 0, 1, 1], bool), mels=mels, lengths=lengths),
    }
    for c in cases.values():
        c["ids"] = np.asarray(c["ids"], np.int64)
    return cases


def v1_batch(cfg, cases, token_ids: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Prompts as one OmniV1 batch, a row each, padded to common shapes (padding: segment 0, zero
    tiles / chunks that no placeholder points at), so one compiled forward serves every prompt."""
    from omni_jax.models.omni_v1 import OmniV1

    cases = list(cases)
    n, t = len(cases), max(len(c["ids"]) for c in cases)
    p, enc, rate = cfg.v1_projector, cfg.audio_encoder, cfg.v1_audio_projector.rate
    s = cfg.siglip.image_size
    k = max([1] + [len(c["tiles"]) for c in cases if c["tiles"] is not None])
    f = max([1] + [c["mels"].shape[-1] for c in cases if c["mels"] is not None])
    a = max([1] + [len(c["mels"]) for c in cases if c["mels"] is not None])
    slot, tps = OmniV1(cfg).tile_slot, enc.output_lengths(f) // rate
    b = {"tokens": np.zeros((n, t), np.int32), "positions": np.zeros((n, t), np.int32),
         "segment_ids": np.zeros((n, t), np.int32), "vision_tiles": np.zeros((n, k, 3, s, s), np.float32),
         "vision_tile_video": np.zeros((n, k), bool), "vision_token_index": np.full((n, t), -1, np.int32),
         "audio_mels": np.zeros((n, a, enc.num_mel_bins, f), np.float32), "audio_mel_lengths": np.full((n, a), f, np.int32),
         "audio_token_index": np.full((n, t), -1, np.int32)}
    for r, c in enumerate(cases):
        ids = np.asarray(c["ids"])
        m = len(ids)
        b["tokens"][r, :m], b["positions"][r, :m], b["segment_ids"][r, :m] = ids, np.arange(m), 1
        if c["tiles"] is not None:
            b["vision_tiles"][r, :len(c["tiles"])], b["vision_tile_video"][r, :len(c["tiles"])] = c["tiles"], c["is_video"]
            for flag, tid, per in ((False, token_ids["image"], p.image_tokens), (True, token_ids["video"], p.video_tokens)):
                tiles = np.nonzero(c["is_video"] == flag)[0]
                b["vision_token_index"][r, np.nonzero(ids == tid)[0]] = (tiles[:, None] * slot + np.arange(per)).reshape(-1)
        if c["mels"] is not None:
            mels, lengths = c["mels"], c["lengths"]
            b["audio_mels"][r, :len(mels), :, :mels.shape[-1]], b["audio_mel_lengths"][r, :len(mels)] = mels, lengths
            per = [enc.output_lengths(int(x)) // rate for x in lengths]
            b["audio_token_index"][r, np.nonzero(ids == token_ids["audio"])[0]] = np.concatenate(
                [i * tps + np.arange(q) for i, q in enumerate(per)])
    return b


def v1_jax_logits(params, cfg, cases: Mapping[str, Mapping], token_ids) -> dict[str, np.ndarray]:
    """{name: (T, vocab) logits} of OmniV1 for every prompt (one jitted forward over padded rows)."""
    from omni_jax.models.omni_v1 import OmniV1

    m = OmniV1(cfg)

    @jax.jit
    def run(params, batch):
        h, _ = m.hidden(params, None, batch)
        return m.logits(params, h)

    out = np.asarray(run(params, v1_batch(cfg, cases.values(), token_ids)))
    return {name: out[r, :len(c["ids"])] for r, (name, c) in enumerate(cases.items())}


def _torch_kwargs(case):
    import torch

    kw = {"input_ids": torch.from_numpy(case["ids"])[None]}
    if case["tiles"] is not None:
        v = case["is_video"]
        if (~v).any():
            kw["pixel_values"] = torch.from_numpy(case["tiles"][~v])
        if v.any():
            kw["video_frames"] = torch.from_numpy(case["tiles"][v])
    if case["mels"] is not None:
        kw["audio_features"] = torch.from_numpy(case["mels"])
        kw["audio_feature_lengths"] = torch.from_numpy(case["lengths"])
    return kw


def v1_torch_logits(model, case) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(**_torch_kwargs(case)).logits[0].float().numpy()


def v1_torch_greedy(model, case, max_new: int) -> list[int]:
    out = model.generate(**_torch_kwargs(case), max_new_tokens=max_new, do_sample=False)
    return out[0, len(case["ids"]):].tolist()


def v1_jax_greedy(params, cfg, case, token_ids, max_new: int, eos: int | None = None) -> list[int]:
    """Greedy tokens after the prompt: the merged prompt prefilled into the KV cache, then one token a step."""
    from omni_jax.models.omni_v1 import OmniV1
    from omni_jax.models.qwen2 import Qwen2LM, init_kv_cache

    m = OmniV1(cfg)
    batch = {k: jnp.asarray(v) for k, v in v1_batch(cfg, [case], token_ids).items()}
    x = jax.jit(lambda p, b: m.input_embeddings(p, None, b)[0])(params, batch)
    t = x.shape[1]
    p = {"params": params["llm"]}
    cache = init_kv_cache(cfg.llm, 1, t + max_new)

    @jax.jit
    def step(cache, x, pos, index):
        h, cache = m.llm.apply(p, x, pos, jnp.ones(pos.shape, jnp.int32), cache, index, method=Qwen2LM.hidden)
        return m.llm.apply(p, h[:, -1:], method=Qwen2LM.logits)[:, 0].argmax(-1), cache

    nxt, cache = step(cache, x, batch["positions"], 0)
    out = []
    for i in range(t, t + max_new):
        out.append(int(nxt[0]))
        if eos is not None and out[-1] == eos:
            break
        x = m.llm.apply(p, nxt[:, None].astype(jnp.int32), method=Qwen2LM.embed)
        nxt, cache = step(cache, x, jnp.asarray([[i]], jnp.int32), i)
    return out


def load_v1_torch(directory: str):
    """The exported directory through transformers' auto class (remote code, offline), fp32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.path.abspath(directory), trust_remote_code=True,
                                                dtype=torch.float32, local_files_only=True).eval()


def check_v1(directory: str, params, cfg, token_ids: Mapping[str, int], model=None) -> dict[str, float]:
    """{case: max abs logit diff} between OmniV1 (JAX, these params) and the exported model."""
    model = load_v1_torch(directory) if model is None else model
    cases = v1_cases(cfg, token_ids)
    ours = v1_jax_logits(params, cfg, cases, token_ids)
    return {name: float(np.abs(ours[name] - v1_torch_logits(model, case)).max()) for name, case in cases.items()}


# ---------------------------------------------------------------------------------------
# Parts.
# ---------------------------------------------------------------------------------------


def load_part_torch(directory: str, part: str):
    import torch
    import transformers
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cls = {"llm": transformers.Qwen2ForCausalLM, "vision": Qwen2VisionTransformerPretrainedModel,
           "siglip": transformers.SiglipVisionModel, "audio_encoder": WhisperEncoder}[part]
    return cls.from_pretrained(directory, dtype=torch.float32).eval()


def part_outputs(part: str, params, part_cfg, model, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(JAX output, transformers output) of one part on a random input."""
    import torch

    rs = np.random.RandomState(seed)
    with torch.no_grad():
        if part == "llm":
            from omni_jax.models.qwen2 import Qwen2LM

            ids = rs.randint(0, part_cfg.vocab_size, (2, 16)).astype(np.int32)
            pos = np.broadcast_to(np.arange(16, dtype=np.int32), ids.shape)
            ours = jax.jit(Qwen2LM(part_cfg).apply)({"params": params}, ids, pos, np.ones_like(ids))
            return np.asarray(ours), model(torch.from_numpy(ids).long()).logits.numpy()
        if part == "siglip":
            from omni_jax.models.siglip import Siglip

            s = part_cfg.image_size
            px = rs.randn(2, part_cfg.num_channels, s, s).astype(np.float32)
            ours = jax.jit(Siglip(part_cfg).apply)({"params": params}, px.transpose(0, 2, 3, 1))[0]
            return np.asarray(ours), model(pixel_values=torch.from_numpy(px)).last_hidden_state.numpy()
        if part == "audio_encoder":
            from omni_jax.models.whisper import WhisperEncoder

            t = 2 * part_cfg.max_source_positions  # transformers' WhisperEncoder takes full-length input only
            mel = rs.randn(1, part_cfg.num_mel_bins, t).astype(np.float32)
            ours = jax.jit(WhisperEncoder(part_cfg).apply)({"params": params}, mel, np.full((1,), t, np.int32))[0]
            return np.asarray(ours), model(torch.from_numpy(mel)).last_hidden_state.numpy()
        if part == "vision":
            from omni_jax.models.navit import VisionTower

            grids = [(1, 4, 6), (1, 6, 4)]  # two images, patches in the Qwen2-VL processor's order
            n = sum(t * h * w for t, h, w in grids)
            patches = rs.randn(n, part_cfg.patch_dim).astype(np.float32)
            from omni_jax.data import vision_preprocessing as vp

            items, start = [], 0
            for g in grids:
                k = g[0] * g[1] * g[2]
                items.append((patches[start:start + k], g))
                start += k
            b = vp.pack_vision_batch([items], n)
            ours = np.asarray(jax.jit(VisionTower(part_cfg).apply)({"params": params}, b["patches"], b["positions"],
                                                                   b["segment_ids"]))[0]
            ours = ours[b["token_item"][0] >= 0]
            theirs = model(torch.from_numpy(patches), grid_thw=torch.tensor(grids)).pooler_output.numpy()
            return ours, theirs
    raise ValueError(f"unknown part {part!r}")


def check_part(directory: str, part: str, params, part_cfg) -> float:
    ours, theirs = part_outputs(part, params, part_cfg, load_part_torch(directory, part))
    if ours.shape != theirs.shape:
        raise AssertionError(f"{part}: JAX output {ours.shape} vs transformers {theirs.shape}")
    return float(np.abs(ours - theirs).max())


# ---------------------------------------------------------------------------------------
# After an export (launch.convert --mode=export_torch).
# ---------------------------------------------------------------------------------------


def rounded(params, dtype: str | None):
    """The params as an export in `dtype` holds them, back in float32."""
    if not dtype or dtype == "float32":
        return params
    return jax.tree.map(lambda x: np.asarray(jnp.asarray(x).astype(dtype).astype(jnp.float32)), params)


def check_written(loaded, part: str, directory: str, dtype: str | None) -> tuple[float, str]:
    """(max abs diff, a line saying what was compared) for one written part of `loaded`
    (omni_jax/convert/export_torch.py Loaded)."""
    from omni_jax.convert import export_torch as et

    if part == "model":
        d = check_v1(directory, rounded(loaded.params, dtype), loaded.cfg, et.token_ids_of(loaded.config))
        return max(d.values()), ("parity vs JAX (random prompts, fp32 logits), max abs diff: "
                                 + ", ".join(f"{k} {v:.2e}" for k, v in d.items()))
    if part == "release":  # the release's modeling code is not in transformers: read the export back
        from omni_jax.convert import omni as oc

        back = oc.load_release(directory, exclude=() if oc.VOCODER in loaded.params else (oc.VOCODER,))
        want = rounded({c: loaded.params[c] for c in back.params}, dtype or "bfloat16")
        d = max(float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())
                for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(back.params)))
        return d, f"release layout read back into JAX: max abs diff to the exported weights {d:.2e}"
    params, cfg = et.part_params(loaded, part)
    d = check_part(directory, part, rounded(params, dtype), cfg)
    return d, f"parity vs JAX (random input, fp32 outputs): max abs diff {d:.2e}"

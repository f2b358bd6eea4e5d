"""The public API of omni_jax/models/omni.py that mirrors the release's forward:
`forward_release_style` equals the batch path on the same content (placements, positions and the
vision layout written here by hand), and equals an independent PyTorch re-typing of the release's
`OmniForCausalLM.forward` (modeling_omni.py: audio tokenizer -> `audios_tokens`, summed code
embeddings, Qwen2-VL vision, `get_multimodal_embed`, the LLM) on the exported release weights.
Two rows, three media kinds, the k-th placeholder of the BATCH (row-major) taking the k-th item."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs.common import omni15_model
from omni_jax.convert import omni as oc
from omni_jax.data.audio_features import release_chunk_features
from omni_jax.data.vision_preprocessing import PATCH_DIM, pack_vision_row
from omni_jax.models.omni import Omni15, Omni15Config
from omni_jax.models.release_inputs import RELEASE_PLACEHOLDERS, valid_codes

AUDIO, IMAGE, VIDEO = 380, 381, 382  # placeholder ids in the tiny (byte-sized) vocabulary
PH = dict(audio=AUDIO, image=IMAGE, video=VIDEO)
CLIP_SECONDS = (2.3, 4.1)  # one 30 s chunk each: 231 / 411 valid mel frames -> 29 / 51 codes
GRIDS = {"image": [(1, 4, 6), (1, 4, 4)], "video": [(1, 2, 4), (1, 2, 4)]}  # row 0: image 0; row 1: the rest


@pytest.fixture(scope="module")
def setup():
    cfg = Omni15Config.from_config(omni15_model("tiny"))
    ap, ast = oc.abstract_variables(cfg)
    rs = np.random.RandomState(0)
    params = jax.tree.map(lambda a: (0.05 * rs.randn(*a.shape)).astype(a.dtype), ap)
    state = jax.tree.map(lambda a: (0.05 * rs.randn(*a.shape)).astype(a.dtype), ast)  # on the features' scale
    m = Omni15(cfg)
    mels, lengths = [], []
    for k, sec in enumerate(CLIP_SECONDS):
        t = np.arange(int(sec * 16000)) / 16000
        x = 0.3 * np.sin(2 * np.pi * (200 + 150 * k) * t * (1 + t)) + 0.05 * np.random.RandomState(k).randn(len(t))
        f, n = release_chunk_features(x)
        mels.append(f)
        lengths.append(n)
    mels, lengths = np.stack(mels), np.array(lengths, np.int32)
    codes, clen = jax.jit(m.encode_audio)(params, state, mels, lengths)
    patches = {k: [rs.randn(t * h * w, PATCH_DIM).astype(np.float32) for t, h, w in g] for k, g in GRIDS.items()}
    return dict(cfg=cfg, m=m, params=params, state=state, mels=mels, lengths=lengths, codes=np.asarray(codes),
                clen=np.asarray(clen), patches=patches)


def _rows(s):
    """Two rows of ids (row 0: text, audio 0, text, image 0; row 1: image 1, audio 1, 2 video frames)
    with the per-row placeholder counts of the release's rules."""
    rs = np.random.RandomState(1)
    n_audio = [int(n) for n in s["clen"]]
    tok = lambda g: g[0] * g[1] * g[2] // 4
    text = lambda n: list(rs.randint(1, 300, n))
    r0 = text(5) + [AUDIO] * n_audio[0] + text(3) + [IMAGE] * tok(GRIDS["image"][0]) + text(4)
    r1 = (text(2) + [IMAGE] * tok(GRIDS["image"][1]) + text(2) + [AUDIO] * n_audio[1] + text(1)
          + sum(([VIDEO] * tok(g) + text(1) for g in GRIDS["video"]), []) + text(3))
    t = max(len(r0), len(r1))
    return np.array([r0 + text(t - len(r0)), r1 + text(t - len(r1))], np.int32)


def _release_media(s):
    cat = lambda k: np.concatenate(s["patches"][k])
    return dict(audio_codes=valid_codes(s["codes"], s["clen"]), images=cat("image"), grid=np.array(GRIDS["image"]),
                videos=cat("video"), video_grid=np.array(GRIDS["video"]), placeholders=PH)


def _jitted(fn, media):
    """fn(params, state, ids, **media) under jit (media are constants: their grids are host values)."""
    return jax.jit(lambda p, st, ids: fn(p, st, ids, **media))


def test_release_length_rules(setup):
    s = setup
    assert s["lengths"].tolist() == [231, 411]  # min(3000, n // 160 + 1)
    assert s["clen"].tolist() == [((231 - 1) // 2 + 1) // 4, ((411 - 1) // 2 + 1) // 4] == [29, 51]
    states, enc_len = jax.jit(s["m"].encode_audio_states)(s["params"], s["state"], s["mels"], s["lengths"])
    assert enc_len.tolist() == [116, 206] and states.shape == (2, 1500, s["cfg"].audio.encoder.d_model)
    assert not s["codes"][0, 29:].any() and valid_codes(s["codes"], s["clen"]).shape == (80, 8)
    v = valid_codes(s["codes"], s["clen"])
    assert len(np.unique(v, axis=0)) > 10 and len(np.unique(v[:, 0])) > 3  # informative codes


def test_forward_release_style_equals_the_batch_path(setup):
    s, m = setup, setup["m"]
    ids = _rows(s)
    b, t = ids.shape
    # the batch layout (omni_jax/data/omni_batch.py), built by hand from the rows
    idx = lambda row, pad, start=0: np.where(row == pad, np.cumsum(row == pad) - 1 + start, -1)
    items = [[(s["patches"]["image"][0], GRIDS["image"][0])],
             [(s["patches"]["image"][1], GRIDS["image"][1])]
             + [(p, g) for p, g in zip(s["patches"]["video"], GRIDS["video"])]]
    vis = [pack_vision_row(it, 32) for it in items]
    n_img1 = GRIDS["image"][1][1] * GRIDS["image"][1][2] // 4
    batch = dict(
        tokens=ids, positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)), segment_ids=np.ones((b, t), np.int32),
        audio_mels=s["mels"][:, None], audio_mel_lengths=s["lengths"][:, None],
        audio_token_index=np.stack([idx(ids[0], AUDIO), idx(ids[1], AUDIO)]),
        vision_patches=np.stack([v["patches"] for v in vis]), vision_positions=np.stack([v["positions"] for v in vis]),
        vision_segment_ids=np.stack([v["segment_ids"] for v in vis]),
        vision_token_index=np.stack([idx(ids[0], IMAGE),
                                     np.maximum(idx(ids[1], IMAGE), idx(ids[1], VIDEO, n_img1))]))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    h_batch, _ = jax.jit(m.hidden)(s["params"], s["state"], batch)
    media = _release_media(s)
    both = lambda p, st, ids, **kw: (m.hidden_release_style(p, st, ids, **kw),
                                     m.forward_release_style(p, st, ids, **kw))
    h, logits = _jitted(both, media)(s["params"], s["state"], ids)
    d_h = float(jnp.abs(h - h_batch).max())
    d_l = float(jnp.abs(logits - m.logits(s["params"], h_batch)).max())
    print(f"forward_release_style vs batch path: hidden max abs diff {d_h:.3e}, logits {d_l:.3e}")
    assert d_h <= 1e-6 and d_l <= 1e-6  # measured 6.0e-8 / 3.7e-8 here


def test_counts_that_differ_are_named(setup):
    s, m = setup, setup["m"]
    ids = _rows(s)
    media = _release_media(s)
    with pytest.raises(ValueError, match=r"audio: input_ids hold 80 placeholders \(id 380\) but 79 audio embeddings"):
        m.forward_release_style(s["params"], s["state"], ids, **dict(media, audio_codes=media["audio_codes"][:-1]))
    with pytest.raises(ValueError, match=r"video: input_ids hold 4 placeholders \(id 382\) but 0 video embeddings"):
        m.forward_release_style(s["params"], s["state"], ids, **dict(media, videos=None, video_grid=None))
    with pytest.raises(ValueError, match=r"vision: the grids \[\(1, 4, 6\)\] hold 24 patches but 40 patches"):
        m.forward_release_style(s["params"], s["state"], ids, **dict(media, grid=np.array(GRIDS["image"][:1])))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['img'\]"):
        m.forward_release_style(s["params"], s["state"], ids, **dict(media, placeholders={"img": 1}))
    assert RELEASE_PLACEHOLDERS == {"audio": 151678, "image": 151681, "video": 151694}


# ------------------------------------------------------------------ independent PyTorch reference


def _torch_release_forward(s, ids):
    """The release's forward re-typed in torch on the exported release state dict (names as
    released; tests/audio_reference.py for the audio tokenizer, transformers for Qwen2-VL vision
    and the Qwen2 LLM with W_pack split into q/k/v)."""
    from transformers import Qwen2Config as HFQwen2Config
    from transformers import Qwen2ForCausalLM
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    from tests.audio_reference import ReleaseBridge, ReleaseEncoder

    cfg = s["cfg"]
    sd = {k: torch.tensor(np.asarray(v, np.float32) if v.dtype.kind == "f" else np.asarray(v))
          for k, v in oc.export_release(s["params"], s["state"], cfg).items()}
    sub = lambda prefix: {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    e, br = cfg.audio.encoder, cfg.audio.bridge
    enc = ReleaseEncoder(e.num_mel_bins, e.d_model, e.num_heads, e.ffn_dim, e.num_layers, e.max_source_positions)
    enc.load_state_dict(sub("audio_tokenizer.audio_model."), strict=True)
    bridge = ReleaseBridge(br.d_model, br.pool, br.codebook_sizes)
    bridge.load_state_dict(sub("audio_tokenizer.audio_bridge_model."), strict=False)  # + decoder-only buffers
    v, l = cfg.vision, cfg.llm
    vision = Qwen2VisionTransformerPretrainedModel._from_config(Qwen2VLVisionConfig(
        depth=v.depth, embed_dim=v.embed_dim, hidden_size=v.out_hidden_size, num_heads=v.num_heads,
        mlp_ratio=v.mlp_dim // v.embed_dim), attn_implementation="eager").eval()
    vision.load_state_dict({**sub("model.visual_model."), **{"merger." + k: x for k, x in
                                                             sub("model.visual_bridge_model.").items()}}, strict=True)
    lm = Qwen2ForCausalLM(HFQwen2Config(
        vocab_size=l.vocab_size, hidden_size=l.hidden_size, intermediate_size=l.intermediate_size,
        num_hidden_layers=l.num_layers, num_attention_heads=l.num_heads, num_key_value_heads=l.num_kv_heads,
        head_dim=l.head_dim, rope_theta=l.rope_theta, rms_norm_eps=l.rms_norm_eps, tie_word_embeddings=False,
        attn_implementation="eager")).eval()
    llm = {}
    q, kv = l.num_heads * l.head_dim, l.num_kv_heads * l.head_dim
    for k, x in sd.items():
        if k.startswith("model.layers.") and ".W_pack." in k:
            for part, y in zip("qkv", torch.split(x, [q, kv, kv], dim=0)):
                llm[k.replace("W_pack", f"{part}_proj")] = y
        elif k.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.")):
            llm[k] = x
    lm.load_state_dict(llm, strict=True)
    embed_tables = [sd[f"model.audio_embed_layers.{i}.weight"] for i in range(len(br.codebook_sizes))]

    with torch.no_grad():
        # audios_tokens: each chunk's valid frames -> encoder -> bridge_length codes, concatenated
        codes = torch.cat([bridge(h, h.shape[0] // br.pool) for h in
                           (enc(torch.tensor(mel[:, :n])) for mel, n in zip(s["mels"], s["lengths"]))])
        audio_embs = sum(tab[codes[:, i]] for i, tab in enumerate(embed_tables))
        visual = vision(torch.tensor(np.concatenate(s["patches"]["image"] + s["patches"]["video"])),
                        grid_thw=torch.tensor(GRIDS["image"] + GRIDS["video"])).pooler_output
        n_img = sum(t * h * w for t, h, w in GRIDS["image"]) // 4
        input_ids = torch.tensor(ids, dtype=torch.long)
        x = lm.model.embed_tokens(input_ids)
        for pad, emb in ((AUDIO, audio_embs), (IMAGE, visual[:n_img]), (VIDEO, visual[n_img:])):
            # get_multimodal_embed: cumsum over the flattened batch picks the k-th embedding
            mask = input_ids == pad
            assert int(mask.sum()) == emb.shape[0]
            k = torch.where(mask, torch.cumsum(mask.view(-1).long(), 0).view(mask.shape) - 1, input_ids)
            picked = torch.embedding(emb, k * mask)
            x = (1 - mask.to(x)).unsqueeze(-1) * x + mask.to(x).unsqueeze(-1) * picked
        pos = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
        hidden = lm.model(inputs_embeds=x, position_ids=pos).last_hidden_state
        logits = lm.lm_head(hidden)
    return codes.numpy(), hidden.numpy(), logits.numpy()


def test_forward_release_style_matches_a_torch_retyping_of_the_release(setup):
    s, m = setup, setup["m"]
    ids = _rows(s)
    want_codes, want_h, want = _torch_release_forward(s, ids)
    got_codes = valid_codes(s["codes"], s["clen"])
    assert np.array_equal(got_codes, want_codes)  # exact code agreement, release length rules
    both = lambda p, st, ids, **kw: (m.hidden_release_style(p, st, ids, **kw),
                                     m.forward_release_style(p, st, ids, **kw))
    h, got = (np.asarray(a) for a in _jitted(both, _release_media(s))(s["params"], s["state"], ids))
    d_h, d = float(np.abs(h - want_h).max()), float(np.abs(got - want).max())
    print(f"forward_release_style vs torch release forward: codes identical ({len(got_codes)} frames), hidden max "
          f"abs diff {d_h:.3e} (scale {np.abs(want_h).max():.2f}), logits {d:.3e} (scale {np.abs(want).max():.2f})")
    assert d_h <= 1e-6 and d <= 1e-6  # measured 9.3e-8 hidden, 3.4e-8 logits here


def test_release_placeholder_ids_are_the_special_token_table():
    """models/ may not import data/: release_inputs keeps the three ids; they must agree."""
    from omni_jax.data.special_tokens import RELEASE_IDS

    assert RELEASE_PLACEHOLDERS == {"audio": RELEASE_IDS["audio_pad"], "image": RELEASE_IDS["img_pad"],
                                    "video": RELEASE_IDS["video_place"]}

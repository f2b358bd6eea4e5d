"""omni_jax/data/omni_batch.py + omni_pipeline.py: row buffers, gather indices, counts."""

import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import common
from omni_jax.data import media
from omni_jax.data.audio_features import release_chunk_features, decode_wav, encode_wav
from omni_jax.data.media_io import frames_to_tokens
from omni_jax.data.omni_batch import OmniShapes, field_specs
from omni_jax.data.omni_pipeline import OmniPipeline, make_omni_iterator
from omni_jax.data.sources import register_memory_source
from omni_jax.data.tokenizer import ByteTokenizer
from omni_jax.data.vision_preprocessing import CLIP_MEAN, CLIP_STD
from omni_jax.models.navit import patch_positions


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def tone(seconds: float, f: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def config(mixture, seq_len=256, batch=4, **shapes):
    c = ml_collections.ConfigDict()
    c.train = ml_collections.ConfigDict(dict(batch_size=batch))
    budgets = dict(max_patches=64, max_vision_items=4, max_audio_chunks=4, max_speech_chunks=4, mel_frames=300)
    budgets.update(shapes)
    c.data = common.omni_data(seq_len=seq_len, **budgets)
    c.data.mixture = ml_collections.ConfigDict(mixture)
    return c


@pytest.fixture(scope="module")
def image_rows():
    rng = np.random.default_rng(0)
    recs = []
    for k, (h, w) in enumerate([(56, 56), (56, 84), (84, 56), (56, 112)]):
        recs.append({"id": f"img{k}", "image": png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
                     "caption": f"caption {k}.", "question": "q?", "answer": "a."})
    register_memory_source("test_images", recs)
    c = config({"cap": dict(dataset="memory:test_images", format="caption", weight=1.0)}, seq_len=128, batch=2)
    pipe = OmniPipeline(c)
    return recs, pipe, pipe.build_rows(range(4))


def test_vision_patches_positions_and_gather_indices(image_rows):
    recs, pipe, b = image_rows
    tok = ByteTokenizer()
    img_pad = tok.special("img_pad")
    seen = 0
    for row in range(len(b["tokens"])):
        for seg in range(1, b["segment_ids"][row].max() + 1):
            # find the record by its caption in the trained targets
            m = (b["segment_ids"][row] == seg) & (b["loss_mask"][row] > 0)
            cap = tok.decode(b["targets"][row][m]).replace("<|endoftext|>", "")
            rec = recs[int(cap.split()[1].rstrip("."))]
            img = np.asarray(Image.open(io.BytesIO(rec["image"])).convert("RGB"), np.float32)
            norm = ((img / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)
            pads = np.flatnonzero((b["segment_ids"][row] == seg) & (b["tokens"][row] == img_pad))
            idx = b["vision_token_index"][row][pads]
            assert np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))  # in order, contiguous
            item = b["vision_segment_ids"][row][4 * idx[0]]
            h, w = img.shape[:2]
            assert b["vision_grids"][row][item - 1].tolist() == [1, h // 14, w // 14]
            assert len(idx) == media.image_token_count(1, h // 14, w // 14)
            for j in idx:  # every merged token's 4 patches are this image's pixels at (h, w)
                for p in range(4 * j, 4 * j + 4):
                    assert b["vision_segment_ids"][row][p] == item
                    ph, pw = b["vision_positions"][row][p]
                    want = norm[:, ph * 14:(ph + 1) * 14, pw * 14:(pw + 1) * 14]
                    got = b["vision_patches"][row][p].reshape(3, 2, 14, 14)
                    np.testing.assert_allclose(got[:, 0], want, atol=1e-5)
                    np.testing.assert_array_equal(got[:, 0], got[:, 1])
            seen += 1
    assert seen >= 4  # 4 rows span more than one epoch of the 4 records
    assert (b["vision_token_index"][b["tokens"] != img_pad] == -1).all()
    # padding patches are zero with segment id 0
    unused = b["vision_segment_ids"] == 0
    assert (b["vision_patches"][unused] == 0).all()


def test_merge_window_order_matches_qwen2_vl():
    """transformers' Qwen2-VL rot_pos_emb position ids (written out from its source)."""
    import torch

    h, w, m = 4, 6, 2
    hpos = torch.arange(h).unsqueeze(1).expand(-1, w).reshape(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()
    wpos = torch.arange(w).unsqueeze(0).expand(h, -1).reshape(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()
    ref = torch.stack([hpos, wpos], -1).numpy()
    assert np.array_equal(patch_positions((1, h, w), m), ref)
    assert np.array_equal(patch_positions((3, h, w), m), np.tile(ref, (3, 1)))  # each temporal patch alike


@pytest.fixture(scope="module")
def audio_batch():
    recs = [{"id": "a0", "audio": encode_wav(tone(0.7)), "transcript": "short.", "answer": "x.",
             "answer_audio": encode_wav(tone(0.5, 300))},
            {"id": "a1", "audio": encode_wav(tone(2.5, 600)), "transcript": "long clip.", "answer": "y.",
             "answer_audio": encode_wav(tone(1.2, 200))}]
    register_memory_source("test_audio", recs)
    c = config({"sqa": dict(dataset="memory:test_audio", format="speech_qa", weight=1.0)}, seq_len=256, batch=2,
               max_patches=0, max_vision_items=0, mel_frames=100)
    pipe = OmniPipeline(c)
    return recs, pipe, pipe.build_rows(range(2))


def test_audio_chunks_mels_and_indices(audio_batch):
    recs, pipe, b = audio_batch
    tps = pipe.shapes.tokens_per_chunk
    assert tps == frames_to_tokens(100) == 12  # ((100 - 1) // 2 + 1) // 4
    tok = ByteTokenizer()
    pad = tok.special("audio_pad")
    # 1 s chunks: the 0.7 s clip takes one audio slot, the 2.5 s clip three; find each sample
    rows = {}
    for row in range(2):
        for seg in range(1, b["segment_ids"][row].max() + 1):
            m = b["segment_ids"][row] == seg
            ans = tok.decode(b["targets"][row][m & (b["loss_mask"][row] > 0)])
            rows["a0" if ans.startswith("x.") else "a1"] = (row, seg)
    for rid, clip_s in (("a0", 0.7), ("a1", 2.5)):
        row, seg = rows[rid]
        m = b["segment_ids"][row] == seg
        idx = b["audio_token_index"][row][m & (b["audio_token_index"][row] >= 0)]
        n = int(clip_s * 16000)
        chunks = [min(16000, n - s) for s in range(0, n, 16000)]
        want = np.concatenate([s * tps + np.arange(frames_to_tokens(min(100, c // 160 + 1))) for s, c in enumerate(chunks)])
        slots = sorted(set((idx // tps).tolist()))
        valid = [min(100, c // 160 + 1) for c in chunks]  # the release's valid mel frames
        base = np.concatenate([s * tps + np.arange(frames_to_tokens(v)) for s, v in zip(slots, valid)])
        assert np.array_equal(idx, base) and len(idx) == len(want)
        assert len(idx) == media.audio_token_count(n) or clip_s > 1  # 30 s chunks agree for short clips
        wav = decode_wav(recs[0 if rid == "a0" else 1]["audio"])
        for s, c, v in zip(slots, chunks, valid):
            assert b["audio_mel_lengths"][row][s] == v
            ref, ref_valid = release_chunk_features(wav[slots.index(s) * 16000:][:c], 16000)
            assert ref_valid == v
            np.testing.assert_array_equal(b["audio_mels"][row][s][:, :v], ref[:, :v])
            assert (b["audio_mels"][row][s][:, v:] == 0).all()
        # every <audio_pad> of the input span (not of the speech reply) has an index
        pads = m & (b["tokens"][row] == pad) & (b["speech_token_index"][row] < 0)
        assert (b["audio_token_index"][row][pads] >= 0).all()


def test_speech_reply_fields(audio_batch):
    recs, pipe, b = audio_batch
    tok = ByteTokenizer()
    start = tok.special("audiogen_start")
    for row in range(2):
        for s in np.flatnonzero(b["tokens"][row] == start):
            # frames of the span in order, targets shifted by one, end at the last pad
            n = 0
            while b["speech_token_index"][row][s + 1 + n] >= 0:
                n += 1
            frames = b["speech_token_index"][row][s + 1:s + 1 + n]
            assert b["speech_target_index"][row][s] == frames[0]
            assert np.array_equal(b["speech_target_index"][row][s + 1:s + n], frames[1:])
            assert b["speech_target_index"][row][s + n] == -1 and b["speech_target_end"][row][s + n] == 1
            assert b["speech_target_end"][row][s:s + n].sum() == 0
            assert (b["speech_loss_mask"][row][s:s + n + 1] == 1).all()
            assert b["loss_mask"][row][s - 1] == 1  # the text head learns to start speaking
            assert (b["loss_mask"][row][s:s + n] == 0).all()  # ... but not the pads or <audiogen_end>
            assert b["tokens"][row][s + n + 1] == tok.special("audiogen_end")
    assert b["speech_loss_mask"].sum() > 0


def test_specs_and_shapes():
    s = OmniShapes(seq_len=64, max_patches=32, max_vision_items=2, max_audio_chunks=1, max_speech_chunks=1,
                   mel_frames=3000, speech_wave_rate=24000)
    f = field_specs(s, 3)
    assert f["vision_patches"][0] == (3, 32, 1176) and f["audio_mels"][0] == (3, 1, 128, 3000)
    assert f["speech_waves"][0] == (3, 1, 720000)
    assert s.tokens_per_chunk == 375 and s.chunk_samples == 480000
    d = ml_collections.ConfigDict(dict(seq_len=8, shapes=dict(max_audio_chunks=1), media=dict(audio_pool=2)))
    assert OmniShapes.from_config(d).tokens_per_chunk == 750  # v1 Conv-GMLP with downsampling 2
    assert set(field_specs(OmniShapes(seq_len=8), 1)) == {"tokens", "targets", "loss_mask", "segment_ids",
                                                         "positions", "component"}
    with pytest.raises(ValueError, match="multiple of 4"):
        OmniShapes(seq_len=8, max_patches=6, max_vision_items=1)
    with pytest.raises(ValueError, match="both be 0"):
        OmniShapes(seq_len=8, max_patches=8)


def test_format_needing_absent_media_is_refused():
    register_memory_source("test_images_2", [{"id": "x", "image": b"", "caption": "c."}])
    c = config({"cap": dict(dataset="memory:test_images_2", format="caption", weight=1.0)},
               max_patches=0, max_vision_items=0)
    with pytest.raises(ValueError, match=r"format 'caption' needs \['vision'\] but config.data.shapes.max_patches is 0"):
        OmniPipeline(c)


def test_omni_batch_shards_on_the_mesh(image_rows):
    """The schema's logical axes place batch rows on the data axes of the 8-device mesh."""
    import jax
    from flax import linen as nn

    from omni_jax import sharding as shd
    from omni_jax.data.omni_batch import batch_spec

    recs, pipe, _ = image_rows
    c = config({"cap": dict(dataset="memory:test_images", format="caption", weight=1.0)}, seq_len=128, batch=8)
    it = make_omni_iterator(c, pipeline=pipe)
    local = next(it)
    mesh = shd.make_mesh({"data": 4, "fsdp": 2})
    spec = batch_spec(pipe.shapes, 8)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        for k, (abstract, axes) in spec.items():
            sh = shd.logical_sharding(axes, mesh)
            arr = jax.make_array_from_process_local_data(sh, local[k], abstract.shape)
            assert arr.shape == abstract.shape and arr.dtype == abstract.dtype
            assert arr.sharding.spec[0] == ("data", "fsdp")


def test_anyres_grid_matches_llava_next():
    from transformers.image_processing_utils import select_best_resolution

    from omni_jax.data.media_io import MediaConfig, select_grid

    grids = MediaConfig().anyres_grids
    for hw in [(384, 384), (300, 900), (900, 300), (1000, 800), (50, 60), (768, 1500), (2000, 500)]:
        want = select_best_resolution(hw, [(r * 384, c * 384) for r, c in grids])
        r, c = select_grid(*hw, 384, grids)
        assert (r * 384, c * 384) == tuple(want), hw


def test_v1_tiles_mode():
    """SigLIP AnyRes tiles (v1): global view + crops per image, one tile per video frame."""
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, (28, 56, 3), dtype=np.uint8)  # fits a 1x2 grid of 28 px tiles exactly
    frames = [png(np.full((40, 40, 3), v, np.uint8)) for v in (10, 200)]
    register_memory_source("tiles_img", [{"id": "w", "image": png(wide), "caption": "wide."}])
    register_memory_source("tiles_vid", [{"id": "v", "frames": frames, "fps": np.float32(1.0),
                                          "caption": "two frames."}])
    c = config({"cap": dict(dataset="memory:tiles_img", format="caption", weight=1.0),
                "vid": dict(dataset="memory:tiles_vid", format="video_caption", weight=1.0)}, seq_len=96, batch=2,
               max_patches=0, max_vision_items=4, max_tiles=6, max_audio_chunks=0, max_speech_chunks=0)
    c.data.media.update(vision_mode="tiles", tile_size=28, tokens_per_tile=4, video_tokens_per_frame=2,
                        min_image_area=1)
    pipe = OmniPipeline(c)
    b = pipe.build_rows([0, 1])
    assert "vision_patches" not in b and b["vision_tiles"].shape == (2, 6, 3, 28, 28)
    comp = {pipe.plans[k].comp.name: k for k in range(2)}
    img_row = 0 if pipe.rows[0][0] == comp["cap"] else 1
    vid_row = 1 - img_row
    x = wide.astype(np.float32) / 255.0
    norm = ((x - 0.5) / 0.5).transpose(2, 0, 1)
    t = b["vision_tiles"][img_row]
    np.testing.assert_allclose(t[1], norm[:, :, :28], atol=1e-6)  # crops, row-major
    np.testing.assert_allclose(t[2], norm[:, :, 28:], atol=1e-6)
    glob = np.asarray(Image.fromarray(wide).resize((28, 28), Image.BICUBIC), np.float32) / 255.0
    np.testing.assert_allclose(t[0], ((glob - 0.5) / 0.5).transpose(2, 0, 1), atol=1e-6)
    assert b["vision_tile_items"][img_row].tolist() == [1, 1, 1, 0, 0, 0]
    assert b["vision_grids"][img_row][0].tolist() == [3, 1, 2]
    idx = b["vision_token_index"][img_row]
    assert idx[idx >= 0].tolist() == [k * 4 + j for k in range(3) for j in range(4)]
    # video: one global-view tile per frame, 2 tokens each, flagged as video
    assert b["vision_tile_video"][vid_row].tolist() == [1, 1, 0, 0, 0, 0]
    assert b["vision_tile_items"][vid_row].tolist() == [1, 2, 0, 0, 0, 0]
    idx = b["vision_token_index"][vid_row]
    assert idx[idx >= 0].tolist() == [0, 1, 4, 5]
    np.testing.assert_allclose(b["vision_tiles"][vid_row][1], (200 / 255.0 - 0.5) / 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="needs config.data.media.vision_mode='tiles'"):
        OmniShapes(seq_len=8, max_tiles=2)


def test_speech_waveforms_for_the_speech_stages():
    from omni_jax.data.media_io import decode_audio

    wav = encode_wav(tone(0.6, 330))
    register_memory_source("waves", [{"id": "w", "transcript": "say it.", "audio": wav}])
    c = config({"tts": dict(dataset="memory:waves", format="tts", weight=1.0)}, seq_len=64, batch=1,
               max_patches=0, max_vision_items=0, max_audio_chunks=0, max_speech_chunks=1, speech_wave_rate=24000)
    b = OmniPipeline(c).build_rows([0])
    n = int(round(0.6 * 16000 * 24000 / 16000))
    assert b["speech_waves"].shape == (1, 1, 300 * 160 * 24000 // 16000)
    assert b["speech_wave_lengths"][0, 0] == n
    np.testing.assert_array_equal(b["speech_waves"][0, 0, :n], decode_audio(wav, 24000))
    assert b["speech_mel_lengths"][0, 0] == 9600 // 160 + 1  # release: valid frames n // 160 + 1

"""Shared config pieces: run defaults and model size presets.

Experiment files start from `base()` and a model preset, then set their stages.
"""

from __future__ import annotations

import ml_collections


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "lm"
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, context=1))
    c.train = ml_collections.ConfigDict(dict(
        steps=100,  # default length of single-stage configs (stages reference it)
        batch_size=8,  # global batch, rows
        microbatches=1,  # gradient accumulation: the batch is scanned in this many pieces
        seed=0,
        log_every=10,
        progress_bar=True,
    ))
    c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3, async_save=True))
    c.init = ml_collections.ConfigDict(dict(checkpoint="", flavour="hf"))  # safetensors to start from
    c.stages = ml_collections.ConfigDict()
    c.stage_order = ()
    return c


def qwen2(size: str) -> ml_collections.ConfigDict:
    """Backbone presets: tiny (CI), small (~100M, benchmarks), 7b (the release shape)."""
    presets = {
        "tiny": dict(vocab_size=384, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
        "small": dict(vocab_size=32768, hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4,
                      head_dim=64, intermediate_size=2048),
        "7b": dict(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                   head_dim=128, intermediate_size=18944),
    }
    if size not in presets:
        raise ValueError(f"unknown backbone size {size!r}; use one of {sorted(presets)}")
    return ml_collections.ConfigDict(dict(
        presets[size], rms_norm_eps=1e-6, rope_theta=1e6, qkv_bias=True, padding_idx=0,
        initializer_range=0.02, dtype="float32", param_dtype="float32", remat_policy="none",
        scan_unroll=1, attention_impl="xla", attention_block_size=512,
    ))


def text_data(seq_len: int = 128) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        seq_len=seq_len, seed=0, corpus_seed=0, num_documents=4000,
        tokenizer=ml_collections.ConfigDict(dict(kind="byte", path="")),
    ))


def omni_data(seq_len: int = 512, **shapes) -> ml_collections.ConfigDict:
    """The omni pipeline's config (omni_jax/data/omni_pipeline.py). `mixture` starts empty:
    fill it per run or per stage (omni_jax/data/stage_mixtures.py has one per stage of
    ARCHITECTURE.md 1.8 and 2). `shapes` are the per-row media budgets; the defaults suit the
    embedded default dataset with tiny models."""
    budgets = dict(max_patches=256, max_vision_items=16, max_audio_chunks=4, max_speech_chunks=4, mel_frames=600,
                   n_mels=128, speech_wave_rate=0)
    budgets.update(shapes)
    return ml_collections.ConfigDict(dict(
        seq_len=seq_len, seed=0, data_dir="",  # "" = $OMNI_JAX_DATA_DIR or ~/.cache/omni_jax/datasets
        tokenizer=ml_collections.ConfigDict(dict(kind="byte", path="")),
        system="",
        shapes=ml_collections.ConfigDict(budgets),
        media=ml_collections.ConfigDict(dict(video_fps=1.0, video_max_frames=32)),
        errors=ml_collections.ConfigDict(dict(max_fraction=0.01, max_count=0, min_samples=100, log_first=5)),
        packing=ml_collections.ConfigDict(dict(open_rows=8)),
        tts=ml_collections.ConfigDict(dict(kind="builtin", num_voices=44, seed=0)),
        validate="header", num_threads=1, prefetch=2,
        mixture=ml_collections.ConfigDict(),
    ))
def flow_matching(size: str) -> ml_collections.ConfigDict:
    """Flow-matching mel decoder presets: tiny (CI) and release (Baichuan-Omni-1.5's)."""
    release = dict(
        n_mels=80, prenet_in_dim=1280, prenet_d_model=512, prenet_heads=8, prenet_ffn_dim=2048, prenet_layers=12,
        prenet_max_positions=5000, prenet_length_ratio=1.0, channels=(256,), num_heads=8, attention_head_dim=64,
        n_blocks=4, num_mid_blocks=12, ff_mult=4, chunk_size=100, time_scale=1000.0, sigma_min=1e-6,
        t_scheduler="cosine", training_cfg_rate=0.2, inference_cfg_rate=0.7, n_timesteps=10, reg_loss_type="l1",
        loss_weight=1.0, prior_loss_weight=1.0, prior_loss_type="l1", initializer_range=0.02, dtype="float32",
        param_dtype="float32", remat_policy="none",
    )
    presets = {
        "release": {},
        "tiny": dict(prenet_in_dim=64, prenet_d_model=64, prenet_heads=4, prenet_ffn_dim=128, prenet_layers=2,
                     prenet_max_positions=128, channels=(64,), num_heads=2, attention_head_dim=32, n_blocks=1,
                     num_mid_blocks=2, chunk_size=16),
    }
    if size not in presets:
        raise ValueError(f"unknown flow-matching size {size!r}; use one of {sorted(presets)}")
    return ml_collections.ConfigDict({**release, **presets[size]})


def hift(size: str) -> ml_collections.ConfigDict:
    """HiFT vocoder presets: tiny (CI; same 480-sample hop) and release (CosyVoice 2, 24 kHz)."""
    release = dict(
        n_mels=80, base_channels=512, nb_harmonics=8, sampling_rate=24000, nsf_alpha=0.1, nsf_sigma=0.003,
        nsf_voiced_threshold=10.0, upsample_rates=(8, 5, 3), upsample_kernel_sizes=(16, 11, 7), istft_n_fft=16,
        istft_hop=4, resblock_kernel_sizes=(3, 7, 11), resblock_dilations=((1, 3, 5),) * 3,
        source_resblock_kernel_sizes=(7, 7, 11), source_resblock_dilations=((1, 3, 5),) * 3, lrelu_slope=0.1,
        audio_limit=0.99, f0_channels=512, f0_layers=5, dtype="float32", param_dtype="float32",
    )
    presets = {
        "release": {},
        "tiny": dict(base_channels=64, f0_channels=32, f0_layers=2, resblock_kernel_sizes=(3,),
                     resblock_dilations=((1, 3),), source_resblock_dilations=((1,), (1,), (1,))),
    }
    if size not in presets:
        raise ValueError(f"unknown vocoder size {size!r}; use one of {sorted(presets)}")
    return ml_collections.ConfigDict({**release, **presets[size]})

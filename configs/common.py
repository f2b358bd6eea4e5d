"""Shared config pieces: run defaults and model size presets.

Experiment files start from `base()` and a model preset, then set their stages.
"""

from __future__ import annotations

import ml_collections


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "lm"
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, context=1))
    # multi-slice TPU / multi-node GPU: slices (nodes) along data / fsdp over the data-center network;
    # the sizes above are then per slice (omni_jax/sharding.py)
    c.mesh.update(dcn_data=1, dcn_fsdp=1)
    c.train = ml_collections.ConfigDict(dict(
        steps=100,  # default length of single-stage configs (stages reference it)
        batch_size=8,  # global batch, rows
        microbatches=1,  # gradient accumulation: the batch is scanned in this many pieces
        seed=0,
        log_every=10,
        progress_bar=True,
    ))
    # lease_timeout_s: another run may take over this run's workdir lease after that long without renewal
    # hashes: a sha256 of every saved array in the checkpoint's meta, verified on restore (omni_jax/train/integrity.py)
    c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3, async_save=True, lease_timeout_s=600.0,
                                                  hashes=True))
    c.init = ml_collections.ConfigDict(dict(checkpoint="", flavour="hf"))  # safetensors to start from
    # a jax.profiler trace of global steps [start_step, start_step + num_steps) in <workdir>/profile
    c.profile = ml_collections.ConfigDict(dict(start_step=-1, num_steps=0))
    c.stages = ml_collections.ConfigDict()
    c.stage_order = ()
    return c


# ---------------------------------------------------------------------------------
# Stage configs (configs/omni15/stages.py, configs/omni_v1/stages.py)
# ---------------------------------------------------------------------------------

STAGE_SIZES = ("tiny", "small", "7b")  # plus "test": tiny models, shorter rows, for the test suite
# learning rate = published (or, where unpublished, our 7b choice) x LR_SCALE, at most LR_CAP
LR_SCALE = {"tiny": 30.0, "small": 10.0, "7b": 1.0}
LR_CAP = {"tiny": 3e-3, "small": 1e-3, "7b": 1.0}
WARMUP = {"tiny": 10, "small": 50, "7b": 100}


# the 7B runs never materialise the (tokens x 152k) fp32 logits: the LM-head loss in 512-token
# pieces (omni_jax/tasks/losses.py); a run setting, not part of the model preset (config.json)
LOSS_TOKEN_CHUNK_7B = 512


def stage_base(size: str, task: str, model_preset, seq: dict, small_shapes: dict,
               large_shapes: dict, bf16_parts: tuple[str, ...], speech_reply: bool) -> ml_collections.ConfigDict:
    """The run defaults every stage config of an omni model shares: the model (`model_preset(size)`,
    tiny for "test"), data shapes (`small_shapes` for tiny/test, `large_shapes` for small/7b, whose
    tokenizer is bytes for small and the release's for 7b), sequence length seq[size], batch size,
    bf16 compute for every part and full remat for `bf16_parts` at 7b, checkpointing and the
    end-of-run evaluation."""
    if size not in STAGE_SIZES + ("test",):
        raise ValueError(f"unknown size {size!r}; use one of {STAGE_SIZES}")
    c = base()
    c.task = task
    c.model = model_preset("tiny" if size == "test" else size)
    small = size in ("tiny", "test")
    c.data = omni_data(seq_len=seq[size], **(small_shapes if small else large_shapes))
    if not small:
        c.data.tokenizer.kind = "byte" if size == "small" else "release"
    else:  # CPU sizes: 128-token blocks skip the causal and cross-sample block pairs and store no
        # (tokens x tokens) probabilities for the backward: image_text_2's step 0.60 -> 0.38 s
        # (benchmarks/README.md, "Where the omni stages' step time went")
        c.model.llm.update(attention_impl="blockwise", attention_block_size=128)
    c.train.update(batch_size={"tiny": 8, "test": 8, "small": 32, "7b": 256}[size], log_every=10)
    if size == "7b":  # every component computes in bf16; `bf16_parts` also rematerialise their layers
        bf16_compute(c.model, remat=bf16_parts)
        c.model.llm.loss_token_chunk = LOSS_TOKEN_CHUNK_7B
        c.mesh.update(data=1, fsdp=-1)
    c.checkpoint.update(every=100, keep=2)
    # every_steps: the periodic evaluation (trainer `_PeriodicEval`; 0 = off), periodic_samples per set
    # num_samples: 30 = the smallest test split of the default dataset (videos, spoken QA), so no sample repeats
    c.evaluate = ml_collections.ConfigDict(dict(at_end=False, num_samples=30, max_new_tokens=48,
                                                dataset=dataset_config(size), speech_reply=speech_reply,
                                                every_steps=0, periodic_samples=4))
    c.size = size
    return c


def dataset_config(size: str) -> str:
    """The embedded dataset's builder config for a stage size."""
    return "shapes_tiny" if size == "test" else "shapes"


def partition(groups: dict[str, tuple[str, ...]], components: tuple[str, ...]) -> list[tuple[str, str]]:
    """Rules giving every component exactly one group: the named ones, the rest `frozen`.
    Entries are top-level component names or `name/sub-regex` patterns."""
    rules, named = [], set()
    for group, comps in groups.items():
        pats = [c if "/" in c else f"{c}/.*" for c in comps]
        rules.append((f"(?:{'|'.join(pats)})", group))
        named |= {c.split("/")[0] for c in comps}
    rest = [c for c in components if c not in named]
    if rest:
        rules.append((f"(?:{'|'.join(rest)})/.*", "frozen"))
    return rules


def stage_group(lr: float, size: str, **kw) -> dict:
    """An optimizer group: the rate scaled for the from-scratch sizes, cosine schedule."""
    size = "tiny" if size == "test" else size
    return dict(lr=min(lr * LR_SCALE[size], LR_CAP[size]), schedule="cosine", warmup_steps=WARMUP[size],
                weight_decay=0.0, min_lr_ratio=0.1, **kw)


def from_scratch_mixture(c, mixture_name: str, weights: dict[str, float]) -> dict | None:
    """tiny / test (trained from scratch): the stage's published mixture components `weights` names,
    reweighted (a stage may drop components); None at the other sizes, which keep the published
    mixture. With `set_stage_lr`, how a pipeline gives a from-scratch stage its own rate and data."""
    if c.size not in ("tiny", "test"):
        return None
    from omni_jax.data.stage_mixtures import mixture

    full = mixture(mixture_name, dataset_config(c.size))
    return {k: dict(full[k], weight=w) for k, w in weights.items()}


def set_stage_lr(stage: ml_collections.ConfigDict, lr: float) -> None:
    """Every group of `stage` at learning rate `lr`."""
    for group in stage.groups.values():
        group.lr = lr


def stage_entry(c, steps: int, groups: dict, rates: dict, mix: dict, components: tuple[str, ...]) -> ml_collections.ConfigDict:
    """A stage of an omni task: its regex groups and rates, its data mixture, and (task_config)
    the modalities its batches carry, so the step skips the encoders of media the stage lacks."""
    from omni_jax.data.formats import mixture_needs

    return ml_collections.ConfigDict(dict(
        steps=steps, rules=partition(groups, components), grad_clip_norm=1.0,
        groups={g: stage_group(rates[g], c.size) for g in groups},
        data=dict(mixture=mix), task_config=dict(modalities=mixture_needs(mix)),
        warm_start="",  # comma-separated names, e.g. "audio_embed_from_tokenizer": omni_jax/train/warm_start.py
    ))


def pipeline(c: ml_collections.ConfigDict, stage_fns: dict, order, steps: dict) -> ml_collections.ConfigDict:
    """A multi-stage run: every stage of `order` with steps[name] > 0 (stage_fns[name](c, steps)
    adds config.stages.<name>), trained in one run and evaluated at the end. `c.size == "test"`
    (a few steps per stage for the test suite) logs every step and evaluates 2 short samples.
    Every stage gets `eval_every` (-1: the periodic evaluation every `config.evaluate.every_steps`)."""
    order = [n for n in order if steps[n] > 0]
    for name in order:
        stage_fns[name](c, steps[name])
        c.stages[name].eval_every = -1  # -1: config.evaluate.every_steps; 0: no periodic evaluation here
    c.stage_order = tuple(order)
    c.train.steps = sum(steps[n] for n in order)
    c.evaluate.at_end = True
    if c.size == "test":
        c.evaluate.update(num_samples=2, max_new_tokens=8)
        c.train.update(log_every=1, progress_bar=False)
        c.checkpoint.every = 1000
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
        dict(loss_token_chunk=0, loss_vocab_chunk=0, z_loss=0.0, loss_per_shard=True),  # omni_jax/tasks/losses.py
        **presets[size], rms_norm_eps=1e-6, rope_theta=1e6, qkv_bias=True, padding_idx=0,
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
    budgets = dict(max_patches=256, max_vision_items=16, max_audio_chunks=4, max_speech_chunks=4, max_speech_frames=0,
                   mel_frames=600, n_mels=128, speech_wave_rate=0)
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


def navit(size: str, llm_hidden: int) -> ml_collections.ConfigDict:
    """NaViT vision encoder + PatchMerger presets (omni_jax/models/navit.py)."""
    presets = {
        "release": dict(embed_dim=1280, depth=32, num_heads=16, mlp_dim=5120),
        "small": dict(embed_dim=384, depth=6, num_heads=6, mlp_dim=1536),
        "tiny": dict(embed_dim=64, depth=2, num_heads=4, mlp_dim=128),
    }
    if size not in presets:
        raise ValueError(f"unknown vision size {size!r}; use one of {sorted(presets)}")
    return ml_collections.ConfigDict(dict(presets[size], out_hidden_size=llm_hidden, dtype="float32",
                                          param_dtype="float32", remat_policy="none", attention_impl="xla"))


def audio_tokenizer(size: str) -> ml_collections.ConfigDict:
    """Baichuan-Audio-Tokenizer presets (encoder / bridge / decoder; omni_jax/models/audio_tokenizer.py).
    The encoder's positions cover the omni pipeline's mel buffers (`omni_data` mel_frames)."""
    if size == "release":
        return ml_collections.ConfigDict(dict(encoder={}, bridge={}, decoder={}))  # dataclass defaults
    d, heads, ffn, layers = {"tiny": (64, 4, 128, 2), "small": (256, 4, 1024, 4)}[size]
    books = (128, 64, 64, 32, 32, 32, 32, 32) if size == "tiny" else (1024, 512, 256, 128, 128, 128, 128, 128)
    return ml_collections.ConfigDict(dict(
        encoder=dict(d_model=d, num_layers=layers, num_heads=heads, ffn_dim=ffn, max_source_positions=1500),
        bridge=dict(d_model=d, pool=4, codebook_sizes=books, ema_decay=0.95, dead_code_threshold=0.05,
                    restart_candidates=256, stage_dropout=0.3, min_stages=1),
        decoder=dict(d_model=d, num_layers=layers, num_heads=heads, ffn_dim=ffn, max_positions=3000,
                     postnet_channels=(d, d, d, d)),
    ))


def audio_head(llm_hidden: int, codebook_sizes, head_dim: int, ffn_mult: int = 2) -> ml_collections.ConfigDict:
    """Audio embedding + depth-transformer audio head (omni_jax/models/audio_head.py)."""
    return ml_collections.ConfigDict(dict(hidden_size=llm_hidden, codebook_sizes=tuple(codebook_sizes),
                                          num_layers=3, head_dim=head_dim, ffn_mult=ffn_mult, dtype="float32",
                                          param_dtype="float32"))


def bf16_compute(model: ml_collections.ConfigDict, remat: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """Every component of a model config computes in bfloat16 (parameters stay fp32; norms,
    softmax and losses run in fp32 inside the models); the components named in `remat` (which
    must have a `remat_policy`) recompute their layers in the backward pass ("full").
    Nested component groups (the audio tokenizer's encoder / bridge / decoder) are set too."""
    for name in model.keys():
        part = model[name]
        subs = [part[k] for k in ("encoder", "bridge", "decoder") if k in part] or [part]
        for sub in subs:
            sub.dtype = "bfloat16"
        if name in remat:
            part.remat_policy = "full"
    return model


def omni_llm(size: str) -> ml_collections.ConfigDict:
    """The omni models' LLM: the backbone preset, except that `small` (byte tokenizer, ~100M
    omni model for benchmarks) keeps 8 layers and a byte-sized vocabulary."""
    llm = qwen2(size)
    if size == "small":
        llm.update(vocab_size=512, num_layers=8)
    return llm


def omni15_model(size: str) -> ml_collections.ConfigDict:
    """Baichuan-Omni-1.5 model config: tiny (CI), small (~120M, benchmarks), 7b (the release).

    Keys = the omni parameter tree's components: llm, vision (visual + visual_bridge), audio
    (audio_encoder + audio_bridge + audio_decoder), audio_head (audio_embed + audio_head),
    flow_matching, vocoder.
    """
    llm = omni_llm(size)
    sub = {"tiny": "tiny", "small": "small", "7b": "release"}[size]
    audio = audio_tokenizer(sub)
    books = audio.bridge.get("codebook_sizes", (8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024))
    audio_d = audio.encoder.get("d_model", 1280)
    fm = flow_matching("release" if size == "7b" else "tiny")
    fm.prenet_in_dim = audio_d
    return ml_collections.ConfigDict(dict(
        llm=llm,
        vision=navit(sub, llm.hidden_size),
        audio=audio,
        audio_head=audio_head(llm.hidden_size, books, llm.head_dim, ffn_mult=1 if size == "small" else 2),
        flow_matching=fm,
        vocoder=hift("release" if size == "7b" else "tiny"),
    ))


def omni_v1_model(size: str) -> ml_collections.ConfigDict:
    """Baichuan-Omni (v1) model config (omni_jax/models/omni_v1.py): tiny (CI), small (~100M),
    7b (the report's shape: the 1.5 backbone, SigLIP so400m/14 at 384 px, Whisper-large-v3).

    Keys = the v1 tree's components: llm, siglip, v1_projector (+ v1_video_projector),
    audio_encoder, v1_audio_projector. The data side must agree (configs/omni_v1/stages.py
    sets it from these): tile_size = siglip.image_size, tokens_per_tile = prod(pool_grid),
    video_tokens_per_frame = prod(video_pool_grid), audio_pool = v1_audio_projector.rate.
    """
    if size not in ("tiny", "small", "7b"):
        raise ValueError(f"unknown v1 model size {size!r}; use one of ['7b', 'small', 'tiny']")
    llm = omni_llm(size)
    h = llm.hidden_size
    run = dict(dtype="float32", param_dtype="float32")
    siglip = {
        "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=56),
        "small": dict(hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=6, image_size=224),
        "7b": dict(hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16, image_size=384),
    }[size]
    grid = siglip["image_size"] // 14
    pools = {"tiny": ((2, 2), (3, 3)), "small": ((8, 8), (12, 12)), "7b": ((14, 13), (21, 26))}[size]
    whisper = {"tiny": dict(d_model=64, num_layers=2, num_heads=4, ffn_dim=128),
               "small": dict(d_model=256, num_layers=4, num_heads=4, ffn_dim=1024),
               "7b": dict(d_model=1280, num_layers=32, num_heads=20, ffn_dim=5120)}[size]
    return ml_collections.ConfigDict(dict(
        llm=llm,
        siglip=dict(siglip, patch_size=14, hidden_act="gelu_pytorch_tanh", use_head=False, remat_policy="none",
                    attention_impl="xla", **run),
        v1_projector=dict(vision_width=siglip["hidden_size"], llm_width=h, vision_grid=grid, pool_grid=pools[0],
                          video_kernel=2, video_pool_grid=pools[1], **run),
        audio_encoder=dict(whisper, num_mel_bins=128, max_source_positions=1500, remat_policy="none",
                           attention_impl="xla", **run),
        v1_audio_projector=dict(d_model=whisper["d_model"], llm_hidden_size=h, rate=4, shortcut="linear", **run),
    ))

r"""Train a tiny Baichuan-Audio-Tokenizer (Whisper encoder + Conv-GMLP + 8-stage RVQ + mel decoder)
on the embedded speech (corpus sentences spoken by the built-in synthesiser, 44 voices), with a
tiny frozen LLM for the transcription loss.

  python -m launch.train --config=configs/audio_tokenizer_tiny.py --workdir=runs/audio_tokenizer_tiny

`--config=configs/audio_tokenizer_tiny.py:runlocal` shrinks everything for smoke tests.
Stage rules: `llm/.*` is frozen; everything audio (encoder, bridge, decoder, the transcription
adapter) trains. The RVQ codebooks are not parameters: they follow the EMA update (model state).

The frozen LLM is random unless you start from a trained one: train the backbone first and
warm-start from its workdir (parameters with the same path and shape are taken, e.g. `llm/...`):

  python -m launch.train --config=configs/backbone_tiny.py --workdir=runs/backbone_tiny
  python -m launch.train --config=configs/audio_tokenizer_tiny.py --workdir=runs/audio_tokenizer_tiny \
      --config.init.checkpoint=runs/backbone_tiny

`--config.init.checkpoint=DIR` with the release's safetensors instead imports its audio
tokenizer (and its LLM) for fine-tuning (config.model.audio must then be the release preset).
"""

import ml_collections

from configs import common


def audio(size: str = "tiny") -> ml_collections.ConfigDict:
    """Audio tokenizer presets: tiny (CI) and release (Baichuan-Omni-1.5's shapes)."""
    if size == "release":
        return ml_collections.ConfigDict(dict(encoder={}, bridge={}, decoder={}))  # dataclass defaults
    d, heads, ffn = 64, 4, 128
    return ml_collections.ConfigDict(dict(
        encoder=dict(d_model=d, num_layers=2, num_heads=heads, ffn_dim=ffn, max_source_positions=200),
        bridge=dict(d_model=d, pool=4, codebook_sizes=(128, 64, 64, 32, 32, 32, 32, 32), ema_decay=0.95,
                    dead_code_threshold=0.05, restart_candidates=256, stage_dropout=0.3, min_stages=1),
        decoder=dict(d_model=d, num_layers=2, num_heads=heads, ffn_dim=ffn, max_positions=400,
                     postnet_channels=(64, 64, 64, 64)),
    ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base()
    c.task = "audio_tokenizer"
    # the backbone_tiny shape, so that a trained backbone can be the frozen LLM (see the docstring)
    c.model = ml_collections.ConfigDict(dict(audio=audio("tiny"), llm=common.qwen2("tiny")))
    c.data = ml_collections.ConfigDict(dict(
        chunk_seconds=4.0, max_text_tokens=56, num_utterances=512, num_voices=44, seed=0, corpus_seed=0,
        tokenizer=ml_collections.ConfigDict(dict(kind="byte", path="")),
    ))
    c.loss = ml_collections.ConfigDict(dict(
        reconstruction=1.0, multi_scale=1.0, scales=(2, 4, 8), commitment=0.25, transcription=0.5,
        quant_prob_start=0.25, quant_warmup_steps=150, stft_impl="fft", target_log_floor=1e-5,
        target_mean=-5.5, target_std=3.5, ctc=0.0, ctc_labels_per_frame=2,
    ))
    c.init.flavour = "release"
    c.train.update(steps=300, batch_size=8, log_every=10)
    c.checkpoint.every = 100
    c.stages.tokenizer = ml_collections.ConfigDict(dict(
        steps=c.train.get_ref("steps"),
        rules=[(r"llm/.*", "frozen"), (r"audio_.*", "audio")],
        groups=dict(audio=dict(lr=2e-3, schedule="cosine", warmup_steps=20, weight_decay=0.0, min_lr_ratio=0.1)),
        grad_clip_norm=1.0,
    ))
    c.stage_order = ("tokenizer",)
    if arg == "runlocal":
        c.model.audio.bridge.codebook_sizes = (32, 16, 16, 8, 8, 8, 8, 8)
        c.model.audio.bridge.restart_candidates = 64
        c.data.update(chunk_seconds=2.0, num_utterances=16, max_text_tokens=40)
        c.model.audio.encoder.max_source_positions = 100
        c.model.audio.decoder.max_positions = 200
        c.loss.quant_warmup_steps = 4
        c.model.llm.update(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64)
        c.stages.tokenizer.groups.audio.update(lr=3e-3, warmup_steps=0)
        c.train.update(steps=6, batch_size=4, log_every=1, progress_bar=False)
        c.checkpoint.every = 3
    return c

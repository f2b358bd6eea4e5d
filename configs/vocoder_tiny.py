r"""A tiny HiFT vocoder (same 480-sample hop as the release) learning synthetic voiced segments.

  python -m launch.train --config=configs/vocoder_tiny.py --workdir=runs/vocoder_tiny

Generator losses only (mel L1 x45, multi-resolution STFT, f0 L1); no discriminators.
`:runlocal` shrinks everything for smoke tests; `:release` uses the released generator shape.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base()
    c.task = "vocoder"
    c.model = ml_collections.ConfigDict(dict(vocoder=common.hift("release" if arg == "release" else "tiny")))
    c.data = ml_collections.ConfigDict(dict(frames=16, seed=0))
    c.loss = ml_collections.ConfigDict(dict(mel_loss_weight=45.0, stft_loss_weight=1.0, f0_loss_weight=1.0,
                                            resolutions=((512, 128), (1024, 256), (256, 64))))
    c.train.steps = 300
    c.train.batch_size = 8
    c.train.log_every = 20
    c.checkpoint.every = 100
    c.stages.vocoder = ml_collections.ConfigDict(dict(
        steps=c.train.get_ref("steps"),
        rules=[(r"vocoder/.*", "voc")],
        groups=dict(voc=dict(lr=2e-3, schedule="cosine", warmup_steps=10, weight_decay=0.0, b1=0.8, b2=0.99)),
        grad_clip_norm=10.0,
    ))
    c.stage_order = ("vocoder",)
    if arg == "runlocal":
        c.data.frames = 8
        c.train.update(steps=3, batch_size=2, log_every=1, progress_bar=False)
        c.checkpoint.every = 3
    return c

r"""A tiny flow-matching mel decoder (prenet + causal U-Net, CFM) learning a synthetic mel set.

  python -m launch.train --config=configs/flow_matching_tiny.py --workdir=runs/flow_matching_tiny

The condition stands in for the audio decoder's hidden states (omni_jax/data/synthetic_speech.py).
The prenet's stored position table is frozen (the release never uses it).
`--config=configs/flow_matching_tiny.py:runlocal` shrinks everything for smoke tests;
`:release` uses the released decoder shape.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base()
    c.task = "flow_matching"
    c.model = ml_collections.ConfigDict(dict(flow_matching=common.flow_matching("release" if arg == "release" else "tiny")))
    c.data = ml_collections.ConfigDict(dict(max_frames=48, num_units=12, corpus_seed=0, seed=0))
    c.train.steps = 300
    c.train.batch_size = 16
    c.train.log_every = 20
    c.checkpoint.every = 100
    c.stages.flow_matching = ml_collections.ConfigDict(dict(
        steps=c.train.get_ref("steps"),
        rules=[(r"flow_matching/prenet/positional_embedding", "frozen"),
               (r"flow_matching/(?!prenet/positional_embedding).*", "fm")],
        groups=dict(fm=dict(lr=2e-3, schedule="cosine", warmup_steps=20, weight_decay=0.0, min_lr_ratio=0.1)),
        grad_clip_norm=1.0,
    ))
    c.stage_order = ("flow_matching",)
    if arg == "runlocal":
        c.data.max_frames = 16
        c.train.update(steps=4, batch_size=4, log_every=1, progress_bar=False)
        c.checkpoint.every = 2
    return c

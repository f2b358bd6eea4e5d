r"""A tiny Qwen2.5-shaped backbone learning the embedded text corpus (the README's main job).

  python -m launch.train --config=configs/backbone_tiny.py --workdir=runs/backbone_tiny

Overrides, e.g.: --config.train.steps=50 --config.mesh.fsdp=2
`--config=configs/backbone_tiny.py:runlocal` shrinks everything for smoke tests.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base()
    c.task = "lm"
    c.model = ml_collections.ConfigDict(dict(llm=common.qwen2("tiny")))
    c.data = common.text_data(seq_len=128)
    c.train.steps = 300
    c.train.batch_size = 16
    c.train.log_every = 20
    c.checkpoint.every = 100
    c.stages.pretrain = ml_collections.ConfigDict(dict(
        steps=c.train.get_ref("steps"),
        rules=[(r"llm/.*", "llm")],
        groups=dict(llm=dict(lr=3e-3, schedule="cosine", warmup_steps=20, weight_decay=0.1, min_lr_ratio=0.1)),
        grad_clip_norm=1.0,
    ))
    c.stage_order = ("pretrain",)
    if arg == "runlocal":
        c.model.llm.update(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64)
        c.data.seq_len, c.data.num_documents = 32, 200
        c.train.update(steps=6, batch_size=8, log_every=1, progress_bar=False)
        c.checkpoint.every = 3
    return c

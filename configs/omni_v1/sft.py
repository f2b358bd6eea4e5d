r"""Baichuan-Omni v1 stage `sft`: Supervised fine-tuning on omni instructions, packed with per-sample attention isolation.

  python -m launch.train --config=configs/omni_v1/sft.py:tiny --workdir=runs/omni_v1_sft

Sizes: tiny (CI / CPU), small (~100M), 7b (the report's shape; published learning rates where
the report gives them). configs/omni_v1/pipeline.py runs every stage in one command.
"""

from configs.omni_v1 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("sft", arg or "tiny", steps=500)

r"""Baichuan-Omni v1 stage `image_language_1`: The visual projector only, on captions (lr 1e-3).

  python -m launch.train --config=configs/omni_v1/image_language_1.py:tiny --workdir=runs/omni_v1_image_language_1

Sizes: tiny (CI / CPU), small (~100M), 7b (the report's shape; published learning rates where
the report gives them). configs/omni_v1/pipeline.py runs every stage in one command.
"""

from configs.omni_v1 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("image_language_1", arg or "tiny", steps=500)

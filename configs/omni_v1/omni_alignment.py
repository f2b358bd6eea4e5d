r"""Baichuan-Omni v1 stage `omni_alignment`: Everything, on image, video, audio and text together.

  python -m launch.train --config=configs/omni_v1/omni_alignment.py:tiny --workdir=runs/omni_v1_omni_alignment

Sizes: tiny (CI / CPU), small (~100M), 7b (the report's shape; published learning rates where
the report gives them). configs/omni_v1/pipeline.py runs every stage in one command.
"""

from configs.omni_v1 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("omni_alignment", arg or "tiny", steps=500)

r"""Baichuan-Omni v1 stage `video_language`: The video projector only (lr 4e-6), images first then video (the mixture keeps captions).

  python -m launch.train --config=configs/omni_v1/video_language.py:tiny --workdir=runs/omni_v1_video_language

Sizes: tiny (CI / CPU), small (~100M), 7b (the report's shape; published learning rates where
the report gives them). configs/omni_v1/pipeline.py runs every stage in one command.
"""

from configs.omni_v1 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("video_language", arg or "tiny", steps=500)

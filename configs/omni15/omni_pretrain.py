r"""Baichuan-Omni-1.5 stage `omni_pretrain`: Omni pre-training on image-audio-text and video-audio-text data (4e-6).

  python -m launch.train --config=configs/omni15/omni_pretrain.py:tiny --workdir=runs/omni15_omni_pretrain

Sizes: tiny (CI / CPU), small (~100M), 7b (the release shape; published learning rates).
To continue from an earlier stage's run, add --config.init.checkpoint=<release-format dir>
or run configs/omni15/pipeline.py, which goes through every stage in one command.
"""

from configs.omni15 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("omni_pretrain", arg or "tiny", steps=500)

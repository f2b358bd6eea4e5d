r"""Baichuan-Omni-1.5 stage `image_text_1`: Visual bridge warm-up on image captions; vision encoder and LLM frozen (published lr 1e-3).

  python -m launch.train --config=configs/omni15/image_text_1.py:tiny --workdir=runs/omni15_image_text_1

Sizes: tiny (CI / CPU), small (~100M), 7b (the release shape; published learning rates).
To continue from an earlier stage's run, add --config.init.checkpoint=<release-format dir>
or run configs/omni15/pipeline.py, which goes through every stage in one command.
"""

from configs.omni15 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("image_text_1", arg or "tiny", steps=200)

r"""Baichuan-Omni-1.5 stage `image_text_2`: LLM + bridge at 1e-5 and the vision encoder at 1e-6, on interleaved image-text, captions, QA and 40% text.

  python -m launch.train --config=configs/omni15/image_text_2.py:tiny --workdir=runs/omni15_image_text_2

Sizes: tiny (CI / CPU), small (~100M), 7b (the release shape; published learning rates). tiny
trains both groups at 2e-3 on captions and image QA only, under which the from-scratch LLM learns
to read the picture (configs/omni15/stages.py TINY_IMAGE_TEXT_2).
To continue from an earlier stage's run, add --config.init.checkpoint=<release-format dir>
or run configs/omni15/pipeline.py, which goes through every stage in one command.
"""

from configs.omni15 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("image_text_2", arg or "tiny", steps=1000)

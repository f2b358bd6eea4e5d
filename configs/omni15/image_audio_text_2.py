r"""Baichuan-Omni-1.5 stage `image_audio_text_2`: Everything but the vision encoder and the audio tokenizer; audio 0.2 / image 0.4 / text 0.4 (1e-5).

  python -m launch.train --config=configs/omni15/image_audio_text_2.py:tiny --workdir=runs/omni15_image_audio_text_2

Sizes: tiny (CI / CPU), small (~100M), 7b (the release shape; published learning rates).
To continue from an earlier stage's run, add --config.init.checkpoint=<release-format dir>
or run configs/omni15/pipeline.py, which goes through every stage in one command.
"""

from configs.omni15 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("image_audio_text_2", arg or "tiny", steps=500)

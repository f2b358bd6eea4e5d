r"""Baichuan-Omni-1.5 stage `sft_1`: Omni instruction tuning: vision encoder, bridge, audio embedding, LLM; audio head frozen.

  python -m launch.train --config=configs/omni15/sft_1.py:tiny --workdir=runs/omni15_sft_1

Sizes: tiny (CI / CPU), small (~100M), 7b (the release shape; published learning rates).
To continue from an earlier stage's run, add --config.init.checkpoint=<release-format dir>
or run configs/omni15/pipeline.py, which goes through every stage in one command.
"""

from configs.omni15 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("sft_1", arg or "tiny", steps=500)

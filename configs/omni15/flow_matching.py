r"""Baichuan-Omni-1.5 stage `flow_matching`: The flow-matching mel decoder in its own stage.

  python -m launch.train --config=configs/omni15/flow_matching.py:tiny --workdir=runs/omni15_flow_matching

Sizes: tiny (CI / CPU), small (~100M), 7b (the release shape; published learning rates).
To continue from an earlier stage's run, add --config.init.checkpoint=<release-format dir>
or run configs/omni15/pipeline.py, which goes through every stage in one command.
"""

from configs.omni15 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("flow_matching", arg or "tiny", steps=200)

r"""Baichuan-Omni v1 stage `audio_boundary`: the audio-boundary head only (streaming input: where the
user's speech starts and ends), everything else frozen.

  python -m launch.train --config=configs/omni_v1/audio_boundary.py:tiny --workdir=runs/omni_v1_audio_boundary

Sizes: tiny (CI / CPU), small (~100M), 7b. configs/omni_v1/pipeline.py runs it last, after SFT.
"""

from configs.omni_v1 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("audio_boundary", arg or "tiny", steps=150)

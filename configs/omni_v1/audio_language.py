r"""Baichuan-Omni v1 stage `audio_language`: Whisper encoder + Conv-GMLP projector with the LLM frozen, on audio-text data.

  python -m launch.train --config=configs/omni_v1/audio_language.py:tiny --workdir=runs/omni_v1_audio_language

Sizes: tiny (CI / CPU), small (~100M), 7b (the report's shape; published learning rates where
the report gives them). configs/omni_v1/pipeline.py runs every stage in one command.
"""

from configs.omni_v1 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("audio_language", arg or "tiny", steps=500)

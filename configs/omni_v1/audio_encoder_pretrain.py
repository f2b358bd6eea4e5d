r"""Baichuan-Omni v1 stage `audio_encoder_pretrain` (from-scratch sizes): the Whisper encoder and a
training-only CTC head learn the embedded speech's transcripts, everything else frozen; the stand-in
for the Whisper-large-v3 weights the 7B starts from.

  python -m launch.train --config=configs/omni_v1/audio_encoder_pretrain.py:tiny --workdir=runs/omni_v1_audio_ctc

Sizes: tiny (CI / CPU), small (~100M); 7b starts from Whisper-large-v3 instead
(--config.init.checkpoint=DIR with audio_encoder/). configs/omni_v1/pipeline.py runs it before
audio-language.
"""

from configs.omni_v1 import stages


def get_config(arg: str | None = None):
    return stages.single_stage("audio_encoder_pretrain", arg or "tiny", steps=800)

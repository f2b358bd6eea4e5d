r"""Baichuan-Omni (v1) from scratch, every stage of ARCHITECTURE.md 2 in one command.

  python -m launch.train --config=configs/omni_v1/pipeline.py --workdir=runs/omni_v1_tiny

Stages, in order, in one run and one checkpoint line (a checkpoint at every stage end;
re-running resumes): text pre-training (tiny/small only), image-language 1, 2, 3,
video-language, the Whisper encoder's ASR pre-training with a CTC head (tiny/small only: the 7B
starts from Whisper-large-v3), audio-language, omni-alignment (`:tiny` then runs a curriculum block
of it on ASR, image QA and video QA rows, `asr_block`, configs/omni_v1/stages.py), SFT, then the audio-boundary head (streaming
input: it predicts where the user's speech starts and ends; everything else frozen). At the end the model answers held-out
image questions and transcribes held-out speech, and prints its accuracy (v1 has no speech
output). `:tiny` (default) runs on a 2-core CPU, `:test` is a few steps per stage for the test
suite, `:small` and `:7b` are for accelerators (7b: start the parts from Hugging Face with
--config.init.checkpoint=DIR holding llm/, siglip/, audio_encoder/; omni_jax/convert/omni_v1.py).
"""

from configs import common
from configs.omni_v1 import stages

ORDER = ("text_pretrain", "image_language_1", "image_language_2", "image_language_3", "video_language",
         "audio_encoder_pretrain", "audio_language", "omni_alignment", "asr_block", "sft", "audio_boundary")
STEPS = {
    "test": dict(dict.fromkeys(ORDER, 2), asr_block=0),
    "tiny": dict(text_pretrain=200, image_language_1=40, image_language_2=60, image_language_3=450,
                 video_language=40, audio_encoder_pretrain=800, audio_language=120, omni_alignment=100,
                 asr_block=1000, sft=150, audio_boundary=150),
    "small": dict(text_pretrain=4000, image_language_1=500, image_language_2=2000, image_language_3=3000,
                  video_language=1000, audio_encoder_pretrain=4000, audio_language=3000, omni_alignment=2000,
                  asr_block=0, sft=2000, audio_boundary=1000),
    "7b": dict(text_pretrain=0, image_language_1=2000, image_language_2=10000, image_language_3=20000,
               video_language=5000, audio_encoder_pretrain=0, audio_language=20000, omni_alignment=10000,
               asr_block=0, sft=5000, audio_boundary=2000),
}


def get_config(arg: str | None = None):
    size = arg or "tiny"
    return common.pipeline(stages.base(size), {**stages.STAGES, **stages.BLOCK_FNS}, ORDER, STEPS[size])

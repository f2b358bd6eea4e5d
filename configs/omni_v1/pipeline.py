r"""Baichuan-Omni (v1) from scratch, every stage of ARCHITECTURE.md 2 in one command.

  python -m launch.train --config=configs/omni_v1/pipeline.py --workdir=runs/omni_v1_tiny

Stages, in order, in one run and one checkpoint line (a checkpoint at every stage end;
re-running resumes): text pre-training (tiny/small only), image-language 1, 2, 3,
video-language, audio-language, omni-alignment, SFT, then the audio-boundary head (streaming
input: it predicts where the user's speech starts and ends; everything else frozen). At the end the model answers held-out
image questions and transcribes held-out speech, and prints its accuracy (v1 has no speech
output). `:tiny` (default) runs on a 2-core CPU, `:test` is a few steps per stage for the test
suite, `:small` and `:7b` are for accelerators (7b: start the parts from Hugging Face with
--config.init.checkpoint=DIR holding llm/, siglip/, audio_encoder/; omni_jax/convert/omni_v1.py).
"""

from configs import common
from configs.omni_v1 import stages

ORDER = ("text_pretrain", "image_language_1", "image_language_2", "image_language_3", "video_language",
         "audio_language", "omni_alignment", "sft", "audio_boundary")
STEPS = {
    "test": dict.fromkeys(ORDER, 2),
    "tiny": dict(text_pretrain=200, image_language_1=40, image_language_2=60, image_language_3=450,
                 video_language=40, audio_language=120, omni_alignment=100, sft=150, audio_boundary=150),
    "small": dict(text_pretrain=4000, image_language_1=500, image_language_2=2000, image_language_3=3000,
                  video_language=1000, audio_language=3000, omni_alignment=2000, sft=2000, audio_boundary=1000),
    "7b": dict(text_pretrain=0, image_language_1=2000, image_language_2=10000, image_language_3=20000,
               video_language=5000, audio_language=20000, omni_alignment=10000, sft=5000, audio_boundary=2000),
}


def get_config(arg: str | None = None):
    size = arg or "tiny"
    return common.pipeline(stages.base(size), stages.STAGES, ORDER, STEPS[size])

r"""Baichuan-Omni-1.5 from scratch to speech, every stage in one command (the README's main job).

  python -m launch.train --config=configs/omni15/pipeline.py --workdir=runs/omni15_tiny

Stages, in order, in one run and one checkpoint line (a checkpoint is kept at every stage end;
re-running the command resumes): text pre-training (tiny/small only: no pretrained Qwen2.5
here), the audio tokenizer, the flow-matching decoder, the vocoder, then the seven stages of
ARCHITECTURE.md 1.8: image-text 1 and 2, image-audio-text 1 and 2, omni pre-training, SFT 1
and 2; `:tiny` runs a curriculum block of image-audio-text 2 on ASR, image QA and video QA rows
just after that stage (`asr_block`, configs/omni15/stages.py). At the end the model answers
held-out image questions, transcribes held-out speech and answers a spoken question in speech (WAV
files under <workdir>/eval/), and prints its accuracy.

`:tiny` (default) runs on a 2-core CPU; `:test` is a few steps per stage for the test suite;
`:small` (~100M) and `:7b` (release shape, published learning rates) are for accelerators.
Override any stage's length, e.g. --config.stages.sft_1.steps=500.
"""

from configs import common
from configs.omni15 import stages

ORDER = ("text_pretrain", "audio_tokenizer", "flow_matching", "vocoder", "image_text_1", "image_text_2",
         "image_audio_text_1", "image_audio_text_2", "asr_block", "omni_pretrain", "sft_1", "sft_2")
STEPS = {
    "test": dict(dict.fromkeys(ORDER, 2), asr_block=0),
    "tiny": dict(text_pretrain=150, audio_tokenizer=800, flow_matching=300, vocoder=400, image_text_1=40,
                 image_text_2=400, image_audio_text_1=100, image_audio_text_2=100, asr_block=800, omni_pretrain=100,
                 sft_1=150, sft_2=100),
    "small": dict(text_pretrain=4000, audio_tokenizer=3000, flow_matching=2000, vocoder=2000, image_text_1=500,
                  image_text_2=3000, image_audio_text_1=2000, asr_block=0, image_audio_text_2=2000,
                  omni_pretrain=2000, sft_1=2000, sft_2=1000),
    "7b": dict(text_pretrain=0, audio_tokenizer=20000, flow_matching=20000, vocoder=0, image_text_1=2000,
               image_text_2=20000, image_audio_text_1=10000, asr_block=0, image_audio_text_2=10000,
               omni_pretrain=10000, sft_1=10000, sft_2=5000),
}


def get_config(arg: str | None = None):
    size = arg or "tiny"
    return common.pipeline(stages.base(size), {**stages.STAGES, **stages.BLOCK_FNS}, ORDER, STEPS[size])

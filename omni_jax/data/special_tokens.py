"""Special tokens of Baichuan-Omni-1.5 (ARCHITECTURE.md 1.6) and their ids.

`RELEASE_IDS` are the released tokenizer's ids (vocab 152064). Tiny models use the
byte tokenizer, which gives the same names small ids (omni_jax/data/tokenizer.py); code
always looks tokens up by name through the tokenizer, never by literal id.
"""

from __future__ import annotations

RELEASE_IDS: dict[str, int] = {
    "eos": 151643,  # <|endoftext|>, also the text pad token
    "b_sys": 151665,  # <B_SYS>
    "c_q": 151667,  # <C_Q>
    "c_a": 151668,  # <C_A>
    "audio_start": 151676,
    "audio_end": 151677,
    "audio_pad": 151678,
    "img_start": 151679,
    "img_end": 151680,
    "img_pad": 151681,
    "video_place": 151694,  # <video_palce_baichuan> (sic)
    "video_start": 151695,
    "video_end": 151696,
    "audiotext_start": 151697,  # "answer in speech"
    "audiogen_start": 151700,
    "audiogen_end": 151701,
}

RELEASE_STRINGS: dict[str, str] = {
    "eos": "<|endoftext|>",
    "b_sys": "<B_SYS>",
    "c_q": "<C_Q>",
    "c_a": "<C_A>",
    "audio_start": "<audio_start_baichuan>",
    "audio_end": "<audio_end_baichuan>",
    "audio_pad": "<audio_pad_baichuan>",
    "img_start": "<img_start_baichuan>",
    "img_end": "<img_end_baichuan>",
    "img_pad": "<img_pad_baichuan>",
    "video_place": "<video_palce_baichuan>",
    "video_start": "<video_start_baichuan>",
    "video_end": "<video_end_baichuan>",
    "audiotext_start": "<audiotext_start_baichuan>",
    "audiogen_start": "<audiogen_start_baichuan>",
    "audiogen_end": "<audiogen_end_baichuan>",
}

NAMES = tuple(RELEASE_IDS)

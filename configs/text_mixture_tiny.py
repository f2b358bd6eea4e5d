r"""A tiny backbone on a multi-dataset text mixture through the omni data pipeline.

  python -m launch.train --config=configs/text_mixture_tiny.py --workdir=runs/text_mixture_tiny

The `lm` task consumes the text fields of omni batches (omni_jax/data/omni_pipeline.py):
the generated corpus, the embedded text dataset, image captions and speech transcripts
read as plain text, mixed 0.4 / 0.3 / 0.2 / 0.1 by rows, packed with segment ids.
`--config=configs/text_mixture_tiny.py:runlocal` shrinks everything for smoke tests.
"""

import ml_collections

from configs import backbone_tiny, common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = backbone_tiny.get_config(arg)
    size = "shapes_tiny" if arg == "runlocal" else "shapes"
    d = common.omni_data(seq_len=c.data.seq_len, max_patches=0, max_vision_items=0, max_audio_chunks=0,
                         max_speech_chunks=0)
    d.mixture = ml_collections.ConfigDict(dict(
        corpus=dict(dataset="text_corpus", format="text", weight=0.4, split_long=True,
                    num_documents=c.data.num_documents),
        text=dict(dataset=f"omni_text/{size}", format="text", weight=0.3, split_long=True),
        captions=dict(dataset=f"omni_images/{size}", format="text", weight=0.2, fields=dict(text="caption"),
                      split_long=True),
        transcripts=dict(dataset=f"omni_speech/{size}", format="text", weight=0.1, fields=dict(text="transcript"),
                         split_long=True),
    ))
    c.data = d
    return c

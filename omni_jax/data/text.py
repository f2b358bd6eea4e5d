"""The text pipeline of the backbone configs: the generated corpus -> packed rows -> batches.

A one-component case of the mixture pipeline (omni_jax/data/mixture.py,
omni_pipeline.py): `config.data` of `configs/common.text_data` (seq_len, seed,
corpus_seed, num_documents, tokenizer) becomes a mixture with the generated text corpus
as its only component, packed sequentially (one open row, like `packing.pack`), documents
longer than a row cut into row-sized pieces. Epoch e packs the documents in the order of a
permutation seeded by (seed, e); the global batch at step s is rows [s*B, (s+1)*B) of that
endless stream, and every process builds only its rows (`rows`, or its contiguous share).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from omni_jax.data.iterator import StepIndexedIterator


def corpus_data_config(d: Any) -> ml_collections.ConfigDict:
    """`text_data` keys -> the omni pipeline's config with one text-corpus component."""
    return ml_collections.ConfigDict(dict(
        seq_len=int(d.seq_len), seed=int(d.seed), tokenizer=ml_collections.ConfigDict(d.tokenizer.to_dict()),
        packing=dict(open_rows=1), shapes=dict(),
        mixture=dict(corpus=dict(dataset="text_corpus", format="text", weight=1.0, split_long=True,
                                 num_documents=int(d.num_documents), corpus_seed=int(d.corpus_seed))),
    ))


def make_text_iterator(config: Any, *, start_step: int, process_index: int, process_count: int,
                       rows: Any = None) -> StepIndexedIterator:
    from omni_jax.data.omni_batch import TEXT_FIELDS
    from omni_jax.data.omni_pipeline import OmniPipeline, make_omni_iterator

    pipe = OmniPipeline(config, data=corpus_data_config(config.data), process_index=process_index,
                        process_count=process_count)
    return make_omni_iterator(config, start_step=start_step, process_index=process_index,
                              process_count=process_count, fields=TEXT_FIELDS, pipeline=pipe, rows=rows)

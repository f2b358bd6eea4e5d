"""Warm starts: parameters set from other trained parameters when a stage begins.

A stage may name transforms in `config.stages.<name>.warm_start` (comma-separated); the trainer
applies them to the run's parameters when it ENTERS the stage (not when it resumes inside it: the
checkpoint already holds their result), before the stage's optimizer state is built. Each is a
pure function of the parameters and the model state, so a resumed run and an uninterrupted one
stay bit-identical.

  audio_embed_from_tokenizer
      Baichuan-Omni-1.5's LLM hears audio as the SUM of 8 code embeddings (ARCHITECTURE.md 1.5,
      `audio_embed`), tables that start random in a from-scratch run. The audio tokenizer stage
      trains a linear adapter (omni_jax/tasks/audio_tokenizer.py `AudioTextAdapter`: Dense code_dim
      -> LLM width, with bias) that feeds the frozen LLM the QUANTISED feature of each frame, which
      is the sum of the frame's 8 chosen codewords. By linearity
          adapter(sum_k codebook_k[c_k]) = sum_k codebook_k[c_k] @ W  + b,
      so setting row j of table k to codebook_k[j] @ W (and adding b to every row of table 0, which
      every frame uses once) makes the summed code embedding equal to what the tokenizer's
      transcription loss trained the LLM to read, instead of a sum of 8 random vectors. The end-of-
      audio row of each table (its last) keeps its value. Only for runs that train the tokenizer
      and the omni model from scratch in one pipeline: a release checkpoint brings trained tables.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def audio_embed_from_tokenizer(params: dict, model_state: dict | None) -> dict:
    """{"audio_embed": new tables} (module docstring); errors name what is missing or mismatched."""
    where = "warm_start audio_embed_from_tokenizer"
    missing = [k for k in ("audio_embed", "audio_text_adapter") if k not in params]
    if missing:
        raise ValueError(f"{where}: the run's parameters have no {missing} (it needs the omni model's audio "
                         "embedding and the audio tokenizer stage's transcription adapter in one run)")
    books = (model_state or {}).get("audio_bridge")
    if not books:
        raise ValueError(f"{where}: the model state has no audio_bridge codebooks (vq_N)")
    kernel = params["audio_text_adapter"]["proj"]["kernel"]
    bias = params["audio_text_adapter"]["proj"]["bias"]
    tables = params["audio_embed"]
    names = sorted(tables, key=lambda n: int(n.rsplit("_", 1)[1]))
    if len(names) != len(books):
        raise ValueError(f"{where}: {len(names)} audio embedding tables but {len(books)} codebooks")
    out = {}
    for i, name in enumerate(names):
        table = tables[name]["embedding"]
        embed = books[f"vq_{i}"]["embed"]
        if embed.shape[0] + 1 != table.shape[0] or embed.shape[1] != kernel.shape[0] or table.shape[1] != kernel.shape[1]:
            raise ValueError(f"{where}: codebook vq_{i} {tuple(embed.shape)}, adapter kernel {tuple(kernel.shape)} and "
                             f"audio_embed/{name} {tuple(table.shape)} do not fit (want (K, code_dim), (code_dim, "
                             "hidden), (K + 1, hidden))")
        rows = jnp.matmul(embed.astype(jnp.float32), kernel.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
        if i == 0:
            rows = rows + bias.astype(jnp.float32)
        out[name] = {"embedding": jnp.asarray(table).at[:-1].set(rows.astype(table.dtype))}
    return {"audio_embed": out}


WARM_STARTS: dict[str, Callable[[dict, Any], dict]] = {"audio_embed_from_tokenizer": audio_embed_from_tokenizer}


def check_names(stage: str, names) -> tuple[str, ...]:
    """`config.stages.<stage>.warm_start` (a comma-separated string or a sequence) as a tuple of known names."""
    if isinstance(names, str):
        names = [n for n in (x.strip() for x in names.split(",")) if n]
    names = tuple(str(n) for n in names)
    unknown = [n for n in names if n not in WARM_STARTS]
    if unknown:
        raise ValueError(f"config.stages.{stage}.warm_start: unknown {unknown}; known: {sorted(WARM_STARTS)}")
    return names


def apply(names, params: dict, model_state: Any) -> dict:
    """params with every named warm start applied in order (jitted; each result keeps the sharding
    of the parameters it replaces)."""
    for name in names:
        fn = WARM_STARTS[name]
        shapes = jax.eval_shape(fn, params, model_state)
        shardings = {k: jax.tree.map(lambda x: x.sharding, params[k]) for k in shapes}
        new = jax.jit(fn, out_shardings=shardings)(params, model_state)
        params = dict(params, **new)
    return params

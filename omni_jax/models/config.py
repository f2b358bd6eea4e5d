"""Model configs: building them from config dicts, and the fields every model config repeats.

  config_from_dict(cls, d, where)  a frozen config dataclass from a dict; unknown keys are an
                                   error naming them and listing the valid ones; runs `validate()`
  ModelConfig                      dtype (compute) and param_dtype as strings ("float32",
                                   "bfloat16"; omni_jax.layers.dtype_of), `from_dict`
  LayerStackConfig                 + remat_policy (omni_jax/models/remat.py), scan_unroll (> 1
                                   unrolls the layer scan), attention_impl ("xla" | "blockwise" |
                                   "splash" | "cudnn" | "ring", omni_jax/layers/attention.py)
                                   and attention_block_size

A branch config subclasses one of them and sets WHERE, the config path its errors name
(`config.model.llm`, ...). The base fields are keyword-only, so a branch's own fields keep their
positions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping


def _like(value: Any, default: Any) -> Any:
    """`value` shaped like a tuple-valued default: lists become (nested) tuples, int leaves ints."""
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(_like(v, default[0] if default else None) for v in value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, (int, float)):
        return int(value)
    return value


def config_from_dict(cls, d: Mapping[str, Any], where: str):
    """Builds a frozen config dataclass, naming unknown keys and the valid ones. Values of
    tuple-valued fields (`channels`, `codebook_sizes`, ...) may come as lists (JSON, ConfigDict)."""
    d = dict(d)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown}. Valid keys: {sorted(fields)}"
        )
    d = {k: _like(v, fields[k].default) if isinstance(fields[k].default, tuple) else v for k, v in d.items()}
    cfg = cls(**d)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The compute and parameter dtypes of a module, and `from_dict`."""

    WHERE: ClassVar[str] = "config.model"

    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str | None = None):
        return config_from_dict(cls, d, cls.WHERE if where is None else where)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerStackConfig(ModelConfig):
    """A ModelConfig of a module with a scanned stack of attention layers."""

    remat_policy: str = "none"  # see omni_jax/models/remat.py
    scan_unroll: int = 1  # >1 unrolls the layer scan (cost analysis counts every layer)
    # "xla" | "blockwise" | "splash" (TPU) | "cudnn" (GPU) | "ring" (context > 1): omni_jax/layers/attention.py
    attention_impl: str = "xla"
    attention_block_size: int = 512


def xla_attention(cfg):
    """`cfg` with the reference attention kernel: for initialising parameters on dummy inputs that
    are too short for the splash / blockwise / ring blocks (the parameters do not depend on the kernel)."""
    return dataclasses.replace(cfg, attention_impl="xla") if hasattr(cfg, "attention_impl") else cfg

"""Runs whose stages train different tasks over ONE parameter tree.

A stage may name its own task (`config.stages.<s>.task`, default `config.task`) and replace
top-level config keys for it (`config.stages.<s>.task_config`, e.g. its own `data` and
`loss`): the audio tokenizer, the flow-matching decoder and the vocoder train in their own
stages of the omni pipeline, each with its own batches, while the checkpoint holds one tree.

The run's parameters (and model state) are the union of the stage tasks' trees, merged at
the top level (`llm`, `visual`, `audio_bridge`, ...). A component defined by several tasks
must have identical shapes, dtypes and logical axes in all of them (they read the same
`config.model` keys); otherwise the run stops with the differing paths. Each component is
initialised by the first task (main task first, then stage order) that defines it, from its own
key (omni_jax/train/rng.py), so adding a component leaves the others' initial values unchanged.
"""

from __future__ import annotations

from typing import Any, Container, Mapping, Sequence

import jax
import ml_collections
from flax import linen as nn

from omni_jax.tasks import get_task
from omni_jax.tasks.base import Task
from omni_jax.train.rng import stream
from omni_jax.train.step import abstract_init, jitted_init


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    """`config` as the task of stage `stage` sees it (its task name and task_config keys)."""
    sc = config.stages[stage]
    task_name = sc.get("task", None) or config.task
    overrides = sc.get("task_config", None)
    if task_name == config.task and not overrides:
        return config
    c = ml_collections.ConfigDict(config.to_dict())  # an unlocked, reference-free copy
    c.task = task_name
    for k, v in (overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides or {})).items():
        c[k] = v
    return c


class StageTasks:
    """The task of every stage (tasks with equal effective configs are shared)."""

    def __init__(self, config: ml_collections.ConfigDict, stage_names: Sequence[str]):
        self.main = get_task(config)
        self._by_stage: dict[str, Task] = {}
        cache: dict[str, Task] = {config.to_json_best_effort(sort_keys=True): self.main}
        for s in stage_names:
            sc = stage_config(config, s)
            key = sc.to_json_best_effort(sort_keys=True)
            if key not in cache:
                cache[key] = get_task(sc)
            self._by_stage[s] = cache[key]
        self.unique: list[Task] = list(cache.values())  # main task first, then stage order

    def __getitem__(self, stage: str) -> Task:
        return self._by_stage[stage]


def _describe(tree: Any) -> dict[str, tuple]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]:
        names = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else None
        v = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
        out[jax.tree_util.keystr(path)] = (tuple(v.shape), str(v.dtype), names)
    return out


def union_trees(named: Sequence[tuple[str, Mapping[str, Any] | None]], what: str = "parameters") -> dict | None:
    """Top-level union of several tasks' (boxed, abstract) trees; equal components required."""
    out: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for label, tree in named:
        if tree is None:
            continue
        for k, sub in dict(tree).items():
            if k not in out:
                out[k], owner[k] = sub, label
                continue
            a, b = _describe(out[k]), _describe(sub)
            if a != b:
                diff = sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p))
                raise ValueError(
                    f"the {what} component {k!r} differs between task {owner[k]} and task {label} at "
                    f"{diff[:10]}: both read it from config.model, so give their stages the same model config")
    return out or None


def init_union(tasks: Sequence[Task], layout: Any, seed: int, params_or_state: str = "params",
               skip: Container[str] = ()) -> Any:
    """Every component of the union tree but those in `skip` (e.g. imported ones), born sharded,
    from the first task defining it. Only the wanted components are compiled (the rest of a
    task's init is dead code to XLA), so importing a checkpoint never materialises a random copy.
    Component k is initialised from its own key stream(seed, "params"|"model_state", k)
    (omni_jax/train/rng.py): adding a component never changes another's initial values."""
    shardings = layout.param_shardings if params_or_state == "params" else layout.model_state_shardings
    what = "params" if params_or_state == "params" else "model_state"
    if shardings is None:
        return None
    out: dict[str, Any] = {}
    for task in tasks:
        fn = jitted_init(task, params_or_state)  # traced once for the shapes and every component below
        shapes = abstract_init(task, params_or_state)
        want = [k for k in (shapes or {}) if k not in out and k not in skip]
        if not want:
            continue
        made = jax.jit(lambda: {k: nn.unbox(fn(stream(seed, what, k)))[k] for k in want},
                       out_shardings={k: shardings[k] for k in want})()
        out.update(made)
    return out

"""Stage-aware optimisation: a regex table assigns every parameter to exactly one group.

A stage (config) names its groups and rules, e.g. ARCHITECTURE.md 1.8 "image-text 2":

    rules = [(r"llm/.*", "llm"), (r"visual_bridge/.*", "llm"), (r"visual/.*", "vision"),
             (r"(audio_.*)/.*", "frozen")]
    groups = {"llm": {"lr": 1e-5}, "vision": {"lr": 1e-6}}

* Every parameter path ('/'-joined, e.g. 'llm/layers/mlp/up_proj/kernel') must
  `re.fullmatch` exactly ONE rule; unmatched or doubly matched parameters are an error
  that lists the paths (big_vision's freezing table, made strict).
* The group name "frozen" is reserved: `optax.set_to_zero()`, so those parameters have
  no optimizer state, and the train step leaves them bit-identical.
* Each other group gets AdamW (or SGD) with its own learning-rate schedule, combined
  with `optax.multi_transform` (= optax.partition) after global-norm clipping.
* Adam keeps a step count PER PARAMETER (`scale_by_adam_per_param`), so when the next
  stage rebuilds the optimizer, `transfer_state` keeps mu, nu and the count of every
  parameter that stays trainable, and new parameters start with fresh bias correction.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from omni_jax.train import warm_start

FROZEN = "frozen"
_SCHEDULES = ("constant", "cosine", "linear", "rsqrt")
_OPTIMIZERS = ("adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class GroupConfig:
    lr: float
    optimizer: str = "adamw"
    schedule: str = "cosine"  # constant | cosine | linear | rsqrt (after linear warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # final lr / peak lr for cosine and linear
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    mu_dtype: str | None = None  # e.g. "bfloat16" to halve the first moment's memory
    no_decay: str = r".*/(scale|bias)"  # paths excluded from weight decay (norms, biases)


@dataclasses.dataclass(frozen=True)
class StageConfig:
    name: str
    steps: int
    rules: tuple[tuple[str, str], ...]
    groups: Mapping[str, GroupConfig]
    grad_clip_norm: float | None = 1.0
    warm_start: tuple[str, ...] = ()  # omni_jax/train/warm_start.py, applied when the stage begins


def stage_from_config(name: str, c: Mapping[str, Any]) -> StageConfig:
    """Parses config.stages.<name> with errors that name the offending key."""
    where = f"config.stages.{name}"
    c = dict(c)
    allowed = {"steps", "rules", "groups", "grad_clip_norm", "data", "task", "task_config", "eval_every", "warm_start"}
    unknown = sorted(set(c) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key in ("steps", "rules", "groups"):
        if key not in c:
            raise ValueError(f"{where}: missing required key '{key}'")
    rules = tuple((str(r), str(g)) for r, g in c["rules"])
    groups = {}
    fields = {f.name for f in dataclasses.fields(GroupConfig)}
    for g, gc in dict(c["groups"]).items():
        gc = dict(gc)
        bad = sorted(set(gc) - fields)
        if bad:
            raise ValueError(f"{where}.groups.{g}: unknown key(s) {bad}; allowed: {sorted(fields)}")
        if "lr" not in gc:
            raise ValueError(f"{where}.groups.{g}: missing 'lr'")
        gcfg = GroupConfig(**gc)
        if gcfg.schedule not in _SCHEDULES:
            raise ValueError(f"{where}.groups.{g}.schedule={gcfg.schedule!r}; use one of {_SCHEDULES}")
        if gcfg.optimizer not in _OPTIMIZERS:
            raise ValueError(f"{where}.groups.{g}.optimizer={gcfg.optimizer!r}; use one of {_OPTIMIZERS}")
        groups[g] = gcfg
    if FROZEN in groups:
        raise ValueError(f"{where}.groups: '{FROZEN}' is reserved (no optimizer); do not configure it")
    used = {g for _, g in rules}
    undefined = sorted(used - set(groups) - {FROZEN})
    if undefined:
        raise ValueError(f"{where}.rules use group(s) {undefined} that {where}.groups does not define")
    unused = sorted(set(groups) - used)
    if unused:
        raise ValueError(f"{where}.groups defines {unused} but no rule assigns parameters to them")
    clip = c.get("grad_clip_norm", 1.0)
    return StageConfig(name=name, steps=int(c["steps"]), rules=rules, groups=groups,
                       grad_clip_norm=None if clip is None else float(clip),
                       warm_start=warm_start.check_names(name, c.get("warm_start", ()) or ()))


def assign_groups(params: Mapping[str, Any], rules: Sequence[tuple[str, str]], stage: str = "?") -> Any:
    """Tree of group names (same structure as params). Exactly one rule per parameter."""
    compiled = [(re.compile(r), g, r) for r, g in rules]
    flat = traverse_util.flatten_dict(dict(params))
    labels, unmatched, multi = {}, [], []
    for key in flat:
        path = "/".join(key)
        hits = [(r, g) for rx, g, r in compiled if rx.fullmatch(path)]
        if not hits:
            unmatched.append(path)
        elif len(hits) > 1:
            multi.append(f"{path} <- {[r for r, _ in hits]}")
        else:
            labels[key] = hits[0][1]
    if unmatched or multi:
        msg = [f"stage '{stage}': every parameter must match exactly one rule of config.stages.{stage}.rules."]
        if unmatched:
            msg.append(f"{len(unmatched)} unmatched: " + ", ".join(unmatched[:50]))
        if multi:
            msg.append(f"{len(multi)} matched by several rules: " + "; ".join(multi[:50]))
        raise ValueError("\n".join(msg))
    return traverse_util.unflatten_dict(labels)


def make_schedule(g: GroupConfig, steps: int) -> Callable[[Any], Any]:
    """Linear warmup to g.lr, then the named decay over the rest of the stage."""
    peak, warm = g.lr, g.warmup_steps
    decay_steps = max(steps - warm, 1)
    end = peak * g.min_lr_ratio
    if g.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif g.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=g.min_lr_ratio)
    elif g.schedule == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    else:  # rsqrt
        after = lambda s: peak * jax.lax.rsqrt(1.0 + s.astype(jnp.float32) / max(warm, 1))
    if warm <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


def learning_rates(stage: StageConfig, stage_step: int) -> dict[str, float]:
    """Host-side learning rate of every group at a stage-local step (for logging)."""
    return {g: float(make_schedule(c, stage.steps)(jnp.asarray(stage_step))) for g, c in stage.groups.items()}


class PerParamAdamState(NamedTuple):
    count: Any  # int32 scalar per parameter
    mu: Any
    nu: Any


def scale_by_adam_per_param(b1: float, b2: float, eps: float, mu_dtype: Any = None) -> optax.GradientTransformation:
    """optax.scale_by_adam with one bias-correction count per parameter."""

    def init(params):
        return PerParamAdamState(
            count=jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
            mu=jax.tree.map(lambda p: jnp.zeros(p.shape, mu_dtype or p.dtype), params),
            nu=jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), params),
        )

    def update(grads, state, params=None):
        del params
        count = jax.tree.map(lambda c: c + 1, state.count)
        mu = jax.tree.map(lambda m, g: (b1 * m + (1 - b1) * g).astype(m.dtype), state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)

        def step(m, v, c):
            c = c.astype(jnp.float32)
            m_hat = m.astype(jnp.float32) / (1 - b1 ** c)
            v_hat = v / (1 - b2 ** c)
            return m_hat / (jnp.sqrt(v_hat) + eps)

        updates = jax.tree.map(step, mu, nu, count)
        return updates, PerParamAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def _group_tx(g: GroupConfig, steps: int, decay_mask: Any) -> optax.GradientTransformation:
    sched = make_schedule(g, steps)
    mu_dtype = None if g.mu_dtype is None else jnp.dtype(g.mu_dtype)
    if g.optimizer == "adamw":
        parts = [scale_by_adam_per_param(g.b1, g.b2, g.eps, mu_dtype)]
    else:
        parts = [optax.trace(decay=g.momentum, accumulator_dtype=mu_dtype)]
    if g.weight_decay:
        parts.append(optax.add_decayed_weights(g.weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(sched))
    return optax.chain(*parts)


@dataclasses.dataclass
class StageOptimizer:
    stage: StageConfig
    tx: optax.GradientTransformation
    labels: Any  # tree of group names
    trainable: Any  # tree of bools

    def trainable_paths(self) -> list[str]:
        flat = traverse_util.flatten_dict(self.trainable)
        return ["/".join(k) for k, v in flat.items() if v]


def build_optimizer(stage: StageConfig, params: Mapping[str, Any]) -> StageOptimizer:
    """The stage's optax transform over the full params tree (frozen -> set_to_zero)."""
    labels = assign_groups(params, stage.rules, stage.name)
    txs = {FROZEN: optax.set_to_zero()}
    for name, g in stage.groups.items():
        rx = re.compile(g.no_decay)
        decay_mask = jax.tree_util.tree_map_with_path(
            lambda path, _: not rx.fullmatch("/".join(k.key for k in path)), params)
        txs[name] = _group_tx(g, stage.steps, decay_mask)
    tx = optax.multi_transform(txs, labels)
    if stage.grad_clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(stage.grad_clip_norm), tx)
    trainable = jax.tree.map(lambda l: l != FROZEN, labels)
    return StageOptimizer(stage, tx, labels, trainable)


# ---------------------------------------------------------------------------------
# Moving between stages.
# ---------------------------------------------------------------------------------


def _state_key(path) -> tuple[str, tuple[str, ...]] | None:
    """(field name, param path) of an optimizer-state leaf that mirrors a parameter."""
    keys = list(path)
    tail = []
    while keys and isinstance(keys[-1], jax.tree_util.DictKey):
        tail.append(str(keys.pop().key))
    if not tail:
        return None
    field = None
    for k in reversed(keys):
        if isinstance(k, jax.tree_util.GetAttrKey):
            field = k.name
            break
    return (field or "?", tuple(reversed(tail)))


def transfer_state(old_state: Any, new_state: Any) -> tuple[Any, int]:
    """Copies every per-parameter leaf (mu, nu, count, momentum...) of `old_state` into
    the leaf of `new_state` with the same field and parameter path and shape.
    Returns (state, number of leaves carried over). Schedule counters are not
    per-parameter and therefore restart with the new stage."""
    old = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(old_state)[0]:
        k = _state_key(path)
        if k is not None:
            old[k] = leaf
    carried = 0

    def pick(path, leaf):
        nonlocal carried
        k = _state_key(path)
        if k is not None and k in old and old[k].shape == leaf.shape and old[k].dtype == leaf.dtype:
            carried += 1
            return old[k]
        return leaf

    out = jax.tree_util.tree_map_with_path(pick, new_state)
    return out, carried


def opt_state_shardings(abstract_opt: Any, abstract_params: Any, param_shardings: Any, replicated: Any) -> Any:
    """Shardings for an optimizer state: a leaf that mirrors a parameter (same path and
    shape) takes the parameter's sharding; everything else (counters) is replicated."""
    flat_p = {tuple(k): v for k, v in traverse_util.flatten_dict(dict(abstract_params)).items()}
    flat_s = {tuple(k): v for k, v in traverse_util.flatten_dict(dict(param_shardings)).items()}

    def pick(path, leaf):
        k = _state_key(path)
        if k is not None and k[1] in flat_p and flat_p[k[1]].shape == leaf.shape:
            return flat_s[k[1]]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def count_state_elements(opt_state: Any) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(opt_state))

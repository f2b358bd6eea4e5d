"""Rule-table weight conversion between omni_jax params and PyTorch state dicts.

MaxText's per-model conversion maps (checkpoint_conversion/utils/param_mapping.py) in a
small form. A model's conversion is a list of `Rule`s, each tying one of our parameters
(a '/'-joined path) to one or more PyTorch tensor names plus a pair of transforms:

    Rule("layers/mlp/gate_proj/kernel", "model.layers.{i}.mlp.gate_proj.weight",
         to_theirs=lambda w: w.T, to_ours=lambda w: w.T)

Placeholders `{i}`, `{j}`, ... in the PyTorch name mark stacked parameters: our array
has one leading axis per placeholder (in order of appearance), e.g. nn.scan's layer
axis. Transforms see one slice and must only use array methods (`.T`, `.reshape`,
`.transpose`, indexing) and the `concat` / `split` helpers here, so the same rules run
on numpy arrays (real conversion, no copies through devices) and on abstract arrays
under `jax.eval_shape` (name/shape listings of a 7B model without materialising it).

`import_params` checks everything and reports all problems at once: missing tensors,
tensors with the wrong shape (name, got, expected), unexpected tensors, and our
parameters no rule produces. Round trips are bit-exact: transforms only permute and
reshape; dtype casts happen only where the caller asks for one.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp


def concat(arrays: Sequence[Any], axis: int = 0):
    return _xp(arrays[0]).concatenate(list(arrays), axis=axis)


def stack(arrays: Sequence[Any], axis: int = 0):
    return _xp(arrays[0]).stack(list(arrays), axis=axis)


def split(x, sizes: Sequence[int], axis: int = 0) -> list:
    """Splits `x` into consecutive pieces of the given sizes along `axis`."""
    if sum(sizes) != x.shape[axis]:
        raise ValueError(f"split sizes {list(sizes)} do not add up to dim {axis} = {x.shape[axis]}")
    out, start = [], 0
    for s in sizes:
        idx = [slice(None)] * x.ndim
        idx[axis] = slice(start, start + s)
        out.append(x[tuple(idx)])
        start += s
    return out


def _identity(x):
    return x


def _transpose(x):
    return x.T


@dataclasses.dataclass(frozen=True)
class Rule:
    """One of our parameters <-> one or more PyTorch tensors.

    ours: '/'-joined path inside the params collection, e.g. 'layers/self_attn/o_proj/kernel'.
    theirs: a PyTorch name, or a tuple of names when one parameter is fused from several
        (then to_theirs returns a tuple in the same order and to_ours takes one).
    """

    ours: str
    theirs: str | tuple[str, ...]
    to_theirs: Callable[..., Any] = _identity
    to_ours: Callable[..., Any] = _identity

    @property
    def names(self) -> tuple[str, ...]:
        return (self.theirs,) if isinstance(self.theirs, str) else tuple(self.theirs)

    @property
    def placeholders(self) -> tuple[str, ...]:
        seen: list[str] = []
        for n in self.names:
            for p in _PLACEHOLDER.findall(n):
                if p not in seen:
                    seen.append(p)
        return tuple(seen)


def same(ours: str, theirs: str) -> Rule:
    """Identical layout (norm weights, biases, embeddings, conv weights stored alike)."""
    return Rule(ours, theirs)


def linear(ours: str, theirs: str) -> Rule:
    """A torch.nn.Linear weight (out, in) <-> our (in, out) kernel."""
    return Rule(ours, theirs, _transpose, _transpose)


def _conv_to_torch(k):
    return k.transpose(2, 1, 0)


def _conv_transpose_to_torch(k):
    return k.transpose(1, 2, 0)


def _conv_transpose_to_ours(w):
    return w.transpose(2, 0, 1)


def conv1d(ours: str, theirs: str) -> Rule:
    """A torch.nn.Conv1d weight (out, in, k) <-> our kernel (k, in, out) (omni_jax/layers/conv1d.py)."""
    return Rule(ours, theirs, _conv_to_torch, _conv_to_torch)


def conv_transpose1d(ours: str, theirs: str) -> Rule:
    """A torch.nn.ConvTranspose1d weight (in, out, k) <-> our kernel (k, in, out)."""
    return Rule(ours, theirs, _conv_transpose_to_torch, _conv_transpose_to_ours)


def conv_layouts(transposed: bool = False) -> tuple:
    """(to_theirs, to_ours) of a Conv1d (or ConvTranspose1d) kernel, for rules that wrap them."""
    return (_conv_transpose_to_torch, _conv_transpose_to_ours) if transposed else (_conv_to_torch, _conv_to_torch)


def prefixed(rules: Iterable[Rule], ours: str = "", theirs: str = "") -> list[Rule]:
    """The same rules under a parent module: our path prefix and/or a PyTorch name prefix."""
    out = []
    for r in rules:
        names = tuple(theirs + n for n in r.names)
        out.append(dataclasses.replace(
            r, ours=ours + r.ours, theirs=names[0] if isinstance(r.theirs, str) else names))
    return out


class ConversionError(ValueError):
    """Raised with every problem found (missing / wrong shape / unexpected / uncovered)."""


def _flatten(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(params)).items()}


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _index_sets(rule: Rule, shape: Sequence[int]) -> list[dict[str, int]]:
    ph = rule.placeholders
    if len(shape) < len(ph):
        raise ConversionError(f"{rule.ours}: shape {tuple(shape)} has fewer dims than placeholders {ph}")
    ranges = [range(shape[k]) for k in range(len(ph))]
    return [dict(zip(ph, combo)) for combo in itertools.product(*ranges)]


def _as_tuple(x, n: int):
    if n == 1:
        return (x,)
    if not isinstance(x, (tuple, list)) or len(x) != n:
        raise ConversionError(f"a fused rule's to_theirs must return {n} arrays")
    return tuple(x)


def _groups(rules: Sequence[Rule]) -> list[list[Rule]]:
    """Consecutive rules with the same placeholders: exported index-major (layer 0's
    tensors, then layer 1's ...), the order PyTorch modules register them in."""
    groups: list[list[Rule]] = []
    for r in rules:
        if groups and groups[-1][0].placeholders == r.placeholders and r.placeholders:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def export_params(params: Mapping[str, Any], rules: Sequence[Rule], dtype: Any = None) -> dict[str, Any]:
    """Our params -> {PyTorch name: array}, in the rules' (module registration) order.

    Works on numpy / jax arrays, and on tracers under jax.eval_shape (see export_shapes).
    `dtype` optionally casts every tensor (e.g. 'bfloat16' for the release format).
    """
    flat = _flatten(params)
    _check_covered(flat, rules)
    out: dict[str, Any] = {}
    for group in _groups(rules):
        shape = flat[group[0].ours].shape
        for idx in _index_sets(group[0], shape):
            for rule in group:
                x = flat[rule.ours]
                sl = tuple(idx[p] for p in rule.placeholders)
                x = x[sl] if sl else x
                arrays = _as_tuple(rule.to_theirs(x), len(rule.names))
                for name, a in zip(rule.names, arrays):
                    if not isinstance(a, jax.core.Tracer):
                        a = np.asarray(a)
                    if dtype is not None:
                        a = a.astype(jnp.dtype(dtype))
                    out[name.format(**idx)] = a
    return out


def export_shapes(abstract_params: Mapping[str, Any], rules: Sequence[Rule], dtype: Any = None) -> dict[str, tuple]:
    """{PyTorch name: shape} for abstract params (jax.ShapeDtypeStruct leaves), no memory used."""
    order: list[str] = []

    def run(p):
        out = export_params(p, rules, dtype)
        order.extend(out)  # jax sorts dict keys on the way out; keep registration order
        return out

    shaped = jax.eval_shape(run, abstract_params)
    return {k: tuple(shaped[k].shape) for k in order}


def _check_covered(flat: Mapping[str, Any], rules: Sequence[Rule]) -> None:
    produced = {r.ours for r in rules}
    uncovered = sorted(set(flat) - produced)
    unknown = sorted(produced - set(flat))
    if uncovered or unknown:
        msg = []
        if uncovered:
            msg.append(f"our parameters no conversion rule produces: {uncovered}")
        if unknown:
            msg.append(f"rules name parameters the model does not have: {unknown}")
        raise ConversionError("; ".join(msg) + ". The rule table and the model disagree.")


def import_params(
    state_dict: Mapping[str, Any],
    rules: Sequence[Rule],
    abstract_params: Mapping[str, Any],
    *,
    ignore: Sequence[str] = (),
    cast: bool = True,
    source: str = "checkpoint",
) -> dict[str, Any]:
    """{PyTorch name: array} -> our params (numpy), checked against `abstract_params`.

    abstract_params: our params tree with ShapeDtypeStruct (or array) leaves, e.g. from
        jax.eval_shape(model.init, ...). It fixes the expected shapes and, with cast=True,
        the dtypes (a bf16 checkpoint into fp32 params is cast; exact for bf16 -> fp32).
    ignore: regexes of PyTorch names that may be present and are not used (buffers).
    Raises ConversionError listing every missing, misshapen, unexpected and uncovered tensor.
    """
    flat_abs = _flatten(abstract_params)
    _check_covered(flat_abs, rules)
    expected = export_shapes(abstract_params, rules)
    missing, wrong, used = [], [], set()
    for name, shp in expected.items():
        if name not in state_dict:
            missing.append(f"  {name} (expected shape {shp})")
        elif tuple(state_dict[name].shape) != shp:
            wrong.append(f"  {name}: got {tuple(state_dict[name].shape)}, expected {shp}")
        used.add(name)
    unexpected = [n for n in state_dict if n not in used and not any(re.fullmatch(p, n) for p in ignore)]
    if missing or wrong or unexpected:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensor(s) with the wrong shape (does the model config match the {source}?):\n" + "\n".join(wrong[:40]))
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing from the {source}:\n" + "\n".join(missing[:40]))
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) in the {source} (wrong model, or add them to `ignore`):\n"
                         + "\n".join(f"  {n} {tuple(state_dict[n].shape)}" for n in unexpected[:40]))
        raise ConversionError(f"cannot import {source}:\n" + "\n".join(parts))

    out = {}
    for rule in rules:
        target = flat_abs[rule.ours]
        lead = tuple(target.shape[: len(rule.placeholders)])
        slices = []
        for idx in _index_sets(rule, target.shape):
            arrays = [np.asarray(state_dict[n.format(**idx)]) for n in rule.names]
            slices.append(np.asarray(rule.to_ours(arrays[0] if len(arrays) == 1 else tuple(arrays))))
        x = slices[0] if not lead else np.stack(slices).reshape(lead + slices[0].shape)
        if tuple(x.shape) != tuple(target.shape):
            raise ConversionError(f"{rule.ours}: rule produced shape {x.shape}, model expects {target.shape}")
        if cast and x.dtype != np.dtype(target.dtype):
            x = x.astype(target.dtype)
        out[rule.ours] = x
    return _unflatten(out)

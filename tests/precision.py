"""Which dtype each operation of a traced function computes in (for the bf16 tests).

`low_precision_ops(fn, *args)` walks the jaxpr of `fn` (through scan, remat, custom_vjp, jit
and every other sub-jaxpr) and lists the operations that must stay fp32 under bf16 compute
but do not: the normalisers' `rsqrt`, the softmax / log-sum-exp `exp` and `log`, and
`reduce_max` (softmax and loss maxima). `ops_by_dtype` counts operations per (name, dtype),
e.g. to check that the matmuls really run in bf16. `demote_fp32` builds the wrong variants
that these checks must reject."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp



def _subjaxprs(eqn):
    for v in eqn.params.values():
        vals = v if isinstance(v, (list, tuple)) else [v]
        for x in vals:
            if isinstance(x, jax.extend.core.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jax.extend.core.Jaxpr):
                yield x


# elementwise activations may compute in bf16 (their exp, e.g. in gelu's derivative, is not a
# softmax): operations traced inside these jax.nn functions are not checked
ACTIVATIONS = frozenset({"gelu", "silu", "swish", "sigmoid", "softplus", "elu", "selu", "celu", "mish"})


def _frames(eqn) -> frozenset:
    tb = eqn.source_info.traceback
    return frozenset(f.function_name for f in tb.frames) if tb is not None else frozenset()


def _walk(jaxpr, out):
    for eqn in jaxpr.eqns:
        dts = tuple(str(getattr(v.aval, "dtype", "")) for v in eqn.invars)
        out.append((eqn.primitive.name, dts, _frames(eqn)))
        for sub in _subjaxprs(eqn):
            _walk(sub, out)


def traced_ops(fn, *args) -> list[tuple[str, tuple[str, ...], frozenset]]:
    """(primitive name, input dtypes, function names on its trace-time stack) of every
    operation of fn(*args), sub-jaxprs included."""
    out: list = []
    _walk(jax.make_jaxpr(fn)(*args).jaxpr, out)
    return out


def low_precision_ops(fn, *args, names=("rsqrt", "exp", "log", "reduce_max")) -> list[tuple[str, tuple]]:
    """Operations named in `names` (outside activation functions) whose floating inputs are
    not all fp32."""
    bad = []
    for name, dts, frames in traced_ops(fn, *args):
        floats = [d for d in dts if d.startswith(("float", "bfloat"))]
        if name in names and any(d != "float32" for d in floats) and not frames & ACTIVATIONS:
            bad.append((name, dts))
    return bad


def ops_by_dtype(fn, *args) -> collections.Counter:
    """Counter of (primitive name, first input dtype)."""
    return collections.Counter((n, d[0] if d else "") for n, d, _ in traced_ops(fn, *args))


class _Fp32IsBf16:
    """`jnp` as a module sees it, except that jnp.float32 is bfloat16."""

    def __getattr__(self, name):
        return jnp.bfloat16 if name == "float32" else getattr(jnp, name)


def demote_fp32(monkeypatch, module) -> None:
    """Make `module` (e.g. omni_jax.layers.norms) compute its "fp32" internals in bf16: a
    deliberately wrong variant, to show that the checks catch it."""
    monkeypatch.setattr(module, "jnp", _Fp32IsBf16())

"""The device mesh and THE logical-axis rules table (one table for every branch).

Modules name the axes of their parameters and main activations with logical names
(`embed`, `mlp`, `heads`, `activation_batch`, ...); this file alone decides how those
names map onto the physical mesh axes `data`, `fsdp`, `tensor` and `context`
(MaxText's `logical_axis_rules` idea, src/maxtext/configs/base.yml).

Mesh axes:
  data     pure data parallelism (parameters replicated)
  fsdp     data parallelism with parameters and optimizer state sharded (ZeRO-3)
  tensor   Megatron-style tensor parallelism over heads / MLP / vocab
  context  sequence (context) parallelism for long sequences: activations are split
           along the sequence, keys/values are gathered for attention.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "context")

# Batch-like activation dimensions are split over every data-parallel axis.
_BATCH = ("data", "fsdp")

# THE table. Branch modules reuse these names; add a name here (never a second table)
# when a new kind of axis appears. A name missing here is replicated, which
# `check_rules_cover` turns into an error so typos cannot silently un-shard a model.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # ---- activations ----
    ("activation_batch", _BATCH),
    ("activation_length", "context"),  # query/sequence positions
    ("activation_kv_length", None),  # keys/values are gathered over `context`
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("activation_codebooks", None),  # the 8 RVQ codebooks / audio-head depth positions
    ("activation_mel", None),  # mel bins, image channels and other narrow feature dims
    # ---- parameters ----
    ("layers", None),  # the stacked (nn.scan) layer axis
    ("vocab", "tensor"),
    ("embed", ("fsdp", "context")),  # context-parallel devices also hold a weight shard (MaxText)
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("qkv", None),  # the q/k/v slot axis of a fused projection
    ("head_dim", None),
    ("norm", None),  # norm scales and biases: small, replicated
    ("conv_window", None),  # convolution kernel taps (time, height, width)
    ("channels", None),  # narrow conv/feature channels (mel bins, RGB, U-Net widths)
    ("codebook", None),  # codebook entries (RVQ codes, audio vocabularies)
    ("depth", None),  # per-depth-position weights (audio head)
    ("positions", None),  # position tables (SigLIP's 729 patch positions; the flow-matching prenet's unused one)
    ("channels_out", None),  # the output side of narrow conv / feature kernels (paired with `channels`)
)


def rules_dict() -> dict[str, Any]:
    return dict(LOGICAL_AXIS_RULES)


def mesh_shape_from_config(mesh_cfg: Mapping[str, int], num_devices: int, where: str = "") -> dict[str, int]:
    """Resolves the mesh config (axis -> size, one axis may be -1 to fill) to sizes.
    `where` describes the devices in errors (e.g. ' (2 processes x 4 local devices)')."""
    unknown = sorted(set(mesh_cfg) - set(MESH_AXES))
    if unknown:
        raise ValueError(
            f"config.mesh has unknown axes {unknown}; the mesh axes are {list(MESH_AXES)}."
        )
    sizes = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}
    fill = [a for a, s in sizes.items() if s == -1]
    if len(fill) > 1:
        raise ValueError(f"config.mesh: only one axis may be -1, got {fill}.")
    bad = [a for a, s in sizes.items() if s == 0 or s < -1]
    if bad:
        raise ValueError(f"config.mesh: axis sizes must be positive or -1, got {sizes}.")
    known = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(
                f"config.mesh={sizes}: the fixed axes use {known} devices, which does not "
                f"divide the {num_devices} available devices{where}."
            )
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(
            f"config.mesh={sizes} needs {math.prod(sizes.values())} devices but "
            f"{num_devices} are available{where}; make the product of the config.mesh sizes equal "
            f"{num_devices} (set one axis to -1 to fill){' or start more processes' if where else ''}."
        )
    return sizes


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """Builds the 4-axis mesh (data, fsdp, tensor, context) from config.

    Axis types are Auto (GSPMD propagation with our explicit constraints), passed
    explicitly because jax 0.10 defaults to Explicit axes.
    """
    where = ""
    if devices is None and jax.process_count() > 1:
        where = f" ({jax.process_count()} processes x {jax.local_device_count()} local devices)"
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape_from_config(mesh_cfg, len(devices), where)
    shape = tuple(sizes[a] for a in MESH_AXES)
    if devices and getattr(devices[0], "platform", "cpu") == "tpu":
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 4, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 4)


def logical_to_spec(names: Sequence[str | None] | None) -> P:
    """PartitionSpec for a tuple of logical names, through the one rules table."""
    if names is None:
        return P()
    return nn.logical_to_mesh_axes(tuple(names), LOGICAL_AXIS_RULES)


def logical_sharding(names: Sequence[str | None] | None, mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names))


def unbox(tree: Any) -> Any:
    """Strips nn.LogicallyPartitioned boxes without applying sharding constraints
    (flax's nn.unbox constrains eagerly when a mesh is active)."""
    return jax.tree.map(
        lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x,
        tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def tree_shardings(abstract_boxed_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes.

    Unboxed leaves (optimizer counters, rng keys, ...) are replicated.
    """
    specs = nn.get_partition_spec(abstract_boxed_tree)
    return jax.tree.map(
        lambda s: NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(s), LOGICAL_AXIS_RULES)
                                if isinstance(s, P) else P()),
        specs,
        is_leaf=lambda x: isinstance(x, P),
    )


def check_rules_cover(abstract_boxed_tree: Any) -> None:
    """Every logical name used by a parameter must appear in the rules table."""
    known = set(rules_dict())
    missing: dict[str, list[str]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        abstract_boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]:
        if isinstance(leaf, nn.LogicallyPartitioned):
            for name in leaf.names:
                if name is not None and name not in known:
                    missing.setdefault(name, []).append(jax.tree_util.keystr(path))
    if missing:
        lines = [f"  {n!r}: used by {ps[:3]}{' ...' if len(ps) > 3 else ''}" for n, ps in missing.items()]
        raise ValueError(
            "Logical axis names missing from omni_jax.sharding.LOGICAL_AXIS_RULES:\n"
            + "\n".join(lines)
            + "\nAdd each name to the table (mapped to a mesh axis or None)."
        )


def _indivisible(shape: Sequence[int], names: Sequence[str | None], mesh: Mesh) -> list[str]:
    """'dim d (name=size) is not divisible by mesh axes=n' for each sharded dim that does not divide."""
    spec = logical_to_spec(names)
    out = []
    for dim, (size, axes) in enumerate(zip(shape, tuple(spec) + (None,) * len(shape))):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        n = math.prod(mesh.shape[a] for a in axes)
        if size % n:
            out.append(f"dim {dim} ({names[dim]}={size}) is not divisible by mesh {'x'.join(axes)}={n}")
    return out


def check_divisible(abstract_boxed_tree: Any, mesh: Mesh) -> None:
    """Raises a clear error for every parameter whose sharded dims do not divide."""
    problems = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        abstract_boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]:
        if isinstance(leaf, nn.LogicallyPartitioned):
            problems += [f"  {jax.tree_util.keystr(path)} {p}" for p in _indivisible(leaf.value.shape, leaf.names, mesh)]
    if problems:
        raise ValueError(
            "These parameters cannot be sharded on mesh "
            f"{dict(mesh.shape)}:\n" + "\n".join(problems)
            + "\nChoose config.mesh sizes that divide them (e.g. tensor <= num_kv_heads)."
        )


def check_batch_divisible(spec: Mapping[str, tuple[Any, Sequence[str | None]]], mesh: Mesh) -> None:
    """The batch fields ({field: (ShapeDtypeStruct, logical names)}) must split over the mesh:
    rows over data x fsdp, sequence positions over context."""
    problems = [f"  {k} {p}" for k, (a, names) in spec.items() for p in _indivisible(a.shape, names, mesh)]
    if problems:
        dp = mesh.shape["data"] * mesh.shape["fsdp"]
        raise ValueError(
            f"The batch cannot be split over mesh {dict(mesh.shape)}:\n" + "\n".join(problems)
            + f"\nMake config.train.batch_size a multiple of data x fsdp = {dp} (and the sequence length a "
            "multiple of context), or give fewer devices to the batch axes: e.g. --config.mesh.tensor=2 or "
            "--config.mesh.context=2 (with data=-1) puts the other devices on heads or sequence positions."
        )

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

Multi-slice TPU pods and multi-node GPU clusters (MaxText's dcn_*_parallelism): config.mesh
may also give `dcn_data`, `dcn_fsdp`, `dcn_tensor`, `dcn_context`, the number of slices (TPU)
or processes/nodes (GPU) along that axis over the data-center network; the plain names are
then the sizes within one slice / node (over ICI / NVLink). Each mesh axis spans both: the
mesh's `data` axis has dcn_data x data devices, its outer (major) factor crossing slices, so
the rules table below is unchanged: batch rows split over (dcn_data x data, fsdp), parameters
over fsdp within a slice. `make_mesh` builds it with
`jax.experimental.mesh_utils.create_hybrid_device_mesh` (granules = TPU slices by
`slice_index`, or processes on GPU/CPU). Use DCN for data parallelism only (dcn_data = the
slice count) unless a model does not fit one slice: DCN is ~10-100x slower than ICI.
GPU and CPU meshes over several processes put devices in process-major order, so the inner
(rightmost, most communicating) axes stay within a node.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "context")
DCN_AXES = tuple(f"dcn_{a}" for a in MESH_AXES)  # optional config.mesh keys: slices/nodes per axis

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


def dcn_shape_from_config(mesh_cfg: Mapping[str, int]) -> dict[str, int]:
    """{axis: number of slices / nodes along it over DCN} (1 where config.mesh has no dcn_<axis>)."""
    dcn = {a: int(mesh_cfg.get(f"dcn_{a}", 1)) for a in MESH_AXES}
    bad = {f"dcn_{a}": n for a, n in dcn.items() if n < 1}
    if bad:
        raise ValueError(f"config.mesh: {bad}: dcn_* sizes are slice/node counts >= 1 (-1 is only for the "
                         "within-slice axes).")
    return dcn


def mesh_shape_from_config(mesh_cfg: Mapping[str, int], num_devices: int, where: str = "") -> dict[str, int]:
    """Resolves the mesh config (axis -> size, one axis may be -1 to fill) to the mesh's sizes.

    With dcn_<axis> entries the plain sizes are per slice/node and the result is their product
    with the dcn sizes (the -1 axis fills num_devices / (slices x nodes) within a slice).
    `where` describes the devices in errors (e.g. ' (2 processes x 4 local devices)')."""
    unknown = sorted(set(mesh_cfg) - set(MESH_AXES) - set(DCN_AXES))
    if unknown:
        raise ValueError(
            f"config.mesh has unknown axes {unknown}; the mesh axes are {list(MESH_AXES)} "
            f"(and, for multi-slice / multi-node meshes, {list(DCN_AXES)})."
        )
    dcn = dcn_shape_from_config(mesh_cfg)
    granules = math.prod(dcn.values())
    if num_devices % granules:
        raise ValueError(f"config.mesh: the dcn_* sizes {dcn} make {granules} slices/nodes, which does not divide "
                         f"the {num_devices} devices.")
    if granules > 1:
        per = mesh_shape_from_config({a: mesh_cfg.get(a, 1) for a in MESH_AXES}, num_devices // granules)
        return {a: per[a] * dcn[a] for a in MESH_AXES}
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
    return Mesh(device_array(mesh_cfg, devices, where), MESH_AXES, axis_types=(AxisType.Auto,) * 4)


def _process_major(devices: Sequence[Any]) -> list[Any]:
    """Devices grouped by process (node), then by id, so a node's devices are contiguous; a
    single process's devices keep the order given."""
    if len({getattr(d, "process_index", 0) for d in devices}) == 1:
        return list(devices)
    return sorted(devices, key=lambda d: (getattr(d, "process_index", 0), getattr(d, "id", 0)))


def device_array(mesh_cfg: Mapping[str, int], devices: Sequence[Any], where: str = "") -> np.ndarray:
    """The devices arranged as the mesh (one array axis per MESH_AXES entry)."""
    devices = list(devices)
    sizes = mesh_shape_from_config(mesh_cfg, len(devices), where)
    shape = tuple(sizes[a] for a in MESH_AXES)
    dcn = dcn_shape_from_config(mesh_cfg)
    platform = getattr(devices[0], "platform", "cpu") if devices else "cpu"
    if math.prod(dcn.values()) > 1:
        return hybrid_device_array(sizes, dcn, devices)
    if platform == "tpu":
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 4, devices=devices).devices
    return np.asarray(_process_major(devices)).reshape(shape)


def hybrid_device_array(sizes: Mapping[str, int], dcn: Mapping[str, int], devices: Sequence[Any]) -> np.ndarray:
    """create_hybrid_device_mesh over TPU slices (slice_index) or, on GPU/CPU, processes (nodes)."""
    from jax.experimental import mesh_utils

    by_slice = getattr(devices[0], "platform", "cpu") == "tpu" and hasattr(devices[0], "slice_index")
    key = "slice_index" if by_slice else "process_index"
    granules = sorted({getattr(d, key, 0) for d in devices})
    want = math.prod(dcn.values())
    if len(granules) != want:
        unit = "TPU slices" if by_slice else "processes (nodes)"
        raise ValueError(
            f"config.mesh dcn sizes { {f'dcn_{a}': n for a, n in dcn.items() if n > 1} } need {want} {unit}, "
            f"but the {len(devices)} devices belong to {len(granules)}. Set the dcn_* product to the number of "
            f"{unit} (e.g. --config.mesh.dcn_data={len(granules)}), or drop them on a single slice/node.")
    ici = tuple(sizes[a] // dcn[a] for a in MESH_AXES)
    arr = mesh_utils.create_hybrid_device_mesh(
        ici, tuple(dcn[a] for a in MESH_AXES), devices if by_slice else _process_major(devices),
        process_is_granule=not by_slice)
    return np.asarray(arr).reshape(tuple(sizes[a] for a in MESH_AXES))


def logical_to_spec(names: Sequence[str | None] | None) -> P:
    """PartitionSpec for a tuple of logical names, through the one rules table."""
    if names is None:
        return P()
    return nn.logical_to_mesh_axes(tuple(names), LOGICAL_AXIS_RULES)


def logical_sharding(names: Sequence[str | None] | None, mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names))


def spec_axes(entry: Any) -> tuple[str, ...]:
    """The mesh axis names of one PartitionSpec entry (a name, a tuple of names, or None)."""
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,) if entry else ()


def axes_size(entry: Any, mesh: Mesh) -> int:
    """How many shards one PartitionSpec entry makes on `mesh` (1 for None)."""
    return math.prod(int(mesh.shape[a]) for a in spec_axes(entry))


def unbox(tree: Any) -> Any:
    """Strips nn.LogicallyPartitioned boxes without applying sharding constraints
    (flax's nn.unbox constrains eagerly when a mesh is active)."""
    return jax.tree.map(
        lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x,
        tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


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
        n = axes_size(axes, mesh)
        if size % n:
            out.append(f"dim {dim} ({names[dim]}={size}) is not divisible by mesh {'x'.join(spec_axes(axes))}={n}")
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

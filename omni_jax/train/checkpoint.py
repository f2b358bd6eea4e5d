"""Checkpoints: an orbax CheckpointManager (async, keep-N plus every stage end).

One checkpoint holds three items:
  state  the TrainState (params, optimizer state, step, rng), restored straight into
         its shardings
  meta   JSON: stage name/index, stage-local step, global step, the model config
  data   JSON: the data iterator state (omni_jax/data/iterator.py)

Orbax writes each step into a temporary directory and renames it when complete, so a
crash or kill during a save leaves the previous checkpoints intact and the partial one
invisible. Before restoring, the saved tree is compared with what this config expects;
a mismatch raises `CheckpointMismatchError` naming every differing tensor. The directory is
an `etils.epath` path (omni_jax/workdir.py), so gs:// checkpoints stay on GCS.

Integrity (omni_jax/train/integrity.py): `meta` also records a hash of every array of the
state (`hashes`, scheme `hash_scheme`), each process hashing the shards it holds of the values
being saved; `restore` recomputes them from what it read and raises `CheckpointCorruptError` (also for a file that no longer reads),
so the trainer can fall back to the previous checkpoint (`quarantine` moves a corrupt step
aside to <dir>/../checkpoints_corrupt/).

Test hook: OMNI_JAX_TEST_HOLD_SAVE="<step>:<dir>" makes the background write of checkpoint
<step> create <dir>/writing and wait for <dir>/release, so a test can signal or kill the
process while that save is in flight (tests/launch/test_train_cli.py).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from omni_jax.train.integrity import HASH_SCHEME, LEGACY_SCHEME, CheckpointCorruptError, _key_name, state_hashes, verify
from omni_jax.workdir import workdir_path


class CheckpointMismatchError(ValueError):
    pass


def _flat_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]
    for path, leaf in leaves:
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            out["/".join(_key_name(k) for k in path)] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
    return out


def _meta_handler() -> ocp.JsonCheckpointHandler:
    """The `meta` writer; under OMNI_JAX_TEST_HOLD_SAVE its write of the named step is held
    (see the module docstring)."""
    handler = ocp.JsonCheckpointHandler()
    if "OMNI_JAX_TEST_HOLD_SAVE" not in os.environ:
        return handler
    step, gate = os.environ["OMNI_JAX_TEST_HOLD_SAVE"].split(":", 1)
    write = handler._save_fn

    async def held_write(x, directory):
        if int(x["step"]) == int(step):
            open(os.path.join(gate, "writing"), "w").close()
            while not os.path.exists(os.path.join(gate, "release")):
                await asyncio.sleep(0.01)
        return await write(x, directory)

    handler._save_fn = held_write
    return handler


# Orbax writes a replicated array from all its replicas at once, each taking a slice that it cuts on
# device (one eager `slice_in_dim` per array and replica, compiled per new shape). For small arrays the
# dispatch costs far more than the write: the tiny omni state on 8 simulated devices spent 11.8 s
# per save slicing. Arrays whose per-replica slice is below this are written by one replica;
# large ones (the 7B weights on a pod) keep replica-parallel writes. Same files either way.
MIN_REPLICA_SLICE_BYTES = 4 << 20


def _register_array_handler() -> None:
    """jax.Array writer with MIN_REPLICA_SLICE_BYTES, in orbax's global registry (idempotent).

    Global because StandardCheckpointHandler (whose args the manager and tests use) takes no registry
    of its own; the replacement writes the same files as orbax's default. Registered without orbax's
    "overriding jax.Array" warning, which every process used to log."""
    from orbax.checkpoint._src.metadata import array_metadata_store  # the store orbax's default uses
    from orbax.checkpoint._src.serialization.type_handler_registry import GLOBAL_TYPE_HANDLER_REGISTRY

    current = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(current, "_min_slice_bytes_for_replica_parallel", None) == MIN_REPLICA_SLICE_BYTES:
        return
    GLOBAL_TYPE_HANDLER_REGISTRY.add(jax.Array, ocp.type_handlers.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True, ignore_warnings=True)


class Checkpointer:
    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        keep_steps: Sequence[int] = (),
        async_save: bool = True,
        hashes: bool = True,
    ):
        self.directory = workdir_path(directory)
        self.hashes = hashes
        _register_array_handler()
        policies = [cm.LatestN(max_to_keep)]
        if keep_steps:
            policies.append(cm.CustomSteps(list(keep_steps)))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=cm.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": _meta_handler(),
                    "data": ocp.JsonCheckpointHandler()}
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def reload(self) -> None:
        """Re-reads the list of steps on disk (after another process moved one aside)."""
        self._mgr.reload()

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def save(self, step: int, state: Any, meta: Mapping[str, Any], data_state: Mapping[str, Any], *, force: bool = False) -> bool:
        if not (force or self._mgr.should_save(int(step))):
            return False
        meta = dict(meta)
        if self.hashes:
            meta["hashes"] = state_hashes(state)  # each process hashes its own shards
            meta["hash_scheme"] = HASH_SCHEME
        return self._mgr.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(dict(meta)),
                data=ocp.args.JsonSave(dict(data_state)),
            ),
            force=force,
        )

    def read_meta(self, step: int) -> dict:
        out = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def read_data_state(self, step: int) -> dict:
        """The data iterators' state saved with checkpoint `step` (the JSON item `data`)."""
        out = self._mgr.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
        return dict(out["data"])

    def check_compatible(self, step: int, abstract_state: Any, meta: Mapping[str, Any] | None = None) -> None:
        saved_md = self._mgr.item_metadata(step)["state"]
        saved = _flat_shapes(getattr(saved_md, "tree", saved_md))
        want = _flat_shapes(abstract_state)
        missing = sorted(set(want) - set(saved))
        unexpected = sorted(set(saved) - set(want))
        differ = [k for k in sorted(set(want) & set(saved)) if want[k] != saved[k]]
        if not (missing or unexpected or differ):
            return
        lines = [f"checkpoint {self.directory}/{step} was not written by this config:"]
        if differ:
            lines.append(f"{len(differ)} tensor(s) differ (saved -> expected):")
            lines += [f"  {k}: {saved[k][0]} {saved[k][1]} -> {want[k][0]} {want[k][1]}" for k in differ[:40]]
        if missing:
            lines.append(f"{len(missing)} tensor(s) this config needs are not in the checkpoint:")
            lines += [f"  {k} {want[k][0]}" for k in missing[:40]]
        if unexpected:
            lines.append(f"{len(unexpected)} tensor(s) in the checkpoint this config does not have:")
            lines += [f"  {k} {saved[k][0]}" for k in unexpected[:40]]
        if meta:
            lines.append(f"It was written at stage {meta.get('stage')!r} with model config {meta.get('model')}.")
        lines.append("Resume with the config it was written with, or use a fresh --workdir.")
        raise CheckpointMismatchError("\n".join(lines))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, meta, data state); CheckpointCorruptError if a file does not read or an array
        differs from its recorded hash; CheckpointMismatchError if another config wrote it."""
        where = f"{self.directory}/{step}"
        try:
            meta = self.read_meta(step)
        except Exception as e:  # noqa: BLE001 - any unreadable meta is corruption
            raise CheckpointCorruptError(f"checkpoint {where}: its meta item does not read ({type(e).__name__}: {e})") from e
        self.check_compatible(step, abstract_state, meta)
        try:
            out = self._mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    meta=ocp.args.JsonRestore(),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # noqa: BLE001 - a truncated / altered file that no longer reads
            raise CheckpointCorruptError(f"checkpoint {where} does not read: {type(e).__name__}: {e}") from e
        if meta.get("hashes") is not None:
            verify(meta["hashes"], out["state"], where, meta.get("hash_scheme", LEGACY_SCHEME))
        return out["state"], dict(out["meta"]), dict(out["data"])

    def quarantine(self, step: int) -> str:
        """Moves a corrupt step out of the checkpoint directory (to checkpoints_corrupt/<step>), so
        the run can save that step again; returns where it went."""
        self._mgr.wait_until_finished()
        dest_dir = self.directory.parent / (self.directory.name + "_corrupt")
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / str(step)
        n = 0
        while dest.exists():
            n += 1
            dest = dest_dir / f"{step}.{n}"
        (self.directory / str(step)).rename(dest)
        self._mgr.reload()
        return str(dest)

    def restore_params(self, step: int, abstract_params: Any, leave_out: Sequence[str] = ()) -> Any:
        """Only the parameters (no optimizer state is read), e.g. for export or inference.
        `leave_out`: top-level components the checkpoint may hold beyond `abstract_params` that are
        not read (training-only heads: omni_jax/tasks/base.py Task.training_only)."""
        self.check_compatible_params(step, abstract_params, leave_out)
        item = {"params": abstract_params}
        restore_args = jax.tree.map(
            lambda a: ocp.ArrayRestoreArgs(sharding=getattr(a, "sharding", None), global_shape=a.shape, dtype=a.dtype)
            if getattr(a, "sharding", None) is not None else ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype),
            item)
        out = ocp.PyTreeCheckpointer().restore(
            self.directory / str(step) / "state",
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
        return out["params"]

    def check_compatible_params(self, step: int, abstract_params: Any, leave_out: Sequence[str] = ()) -> None:
        saved_md = self._mgr.item_metadata(step)["state"]
        saved = {k[len("params/"):]: v for k, v in _flat_shapes(getattr(saved_md, "tree", saved_md)).items()
                 if k.startswith("params/") and k[len("params/"):].split("/")[0] not in leave_out}
        want = _flat_shapes(abstract_params)
        bad = sorted(k for k in set(want) | set(saved) if want.get(k) != saved.get(k))
        if bad:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory}/{step} has parameters that do not match this config:\n"
                + "\n".join(f"  {k}: saved {saved.get(k)} expected {want.get(k)}" for k in bad[:40]))

    def restore_tree(self, step: int) -> Any:
        """The saved TrainState as a plain tree (numpy/jax arrays), without a target structure:
        for warm starts that take some of another run's tensors."""
        return self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()

r"""Ahead-of-time compile a config's train step for a device topology and report the plan.

  python -m launch.aot --config=configs/backbone_7b.py --topology=v5p:4x4x4
  python -m launch.aot --config=configs/backbone_tiny.py --topology=cpu    # this machine's devices
  python -m launch.aot --config=configs/backbone_tiny.py --topology=v5e:2x2 --num_slices=2 \
      --config.mesh.dcn_data=2 --config.mesh.fsdp=-1     # 2 slices: data over DCN, fsdp within a slice
  python -m launch.aot --config=configs/omni15/pipeline.py:7b --stage=sft_2 --topology=v5p:4x4x4

With the `tpu` extra (libtpu) installed, `--topology` names a TPU slice (e.g. v5p:4x4x4,
v5e:8x8, v4:2x2x2); the real TPU compiler runs here without the hardware (MaxText's
train_compile.py idea). The report: mesh, per-device memory from the compiled program
(arguments, outputs, temporaries; the compiler refuses programs that do not fit HBM),
compile time, the compiler's flop estimate (set --config.model.llm.scan_unroll to the
layer count for an exact count: a scanned layer is counted once) and the analytic
6*N*tokens estimate with the MFU it implies at a given step time (language-model tasks; the
omni tasks have no closed form: launch/aot_plans.py counts their compiled matmuls instead).
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from launch import flag_errors

FLAGS = flags.FLAGS


PEAK_BF16_TFLOPS = {"v5p": 459.0, "v5e": 197.0, "v5litepod": 197.0, "v4": 275.0, "v6e": 918.0}


def topology_devices(name: str, num_slices: int = 1):
    import jax

    if name == "cpu":
        return jax.devices(), None
    from jax.experimental import topologies

    try:
        kw = {"num_slices": num_slices} if num_slices > 1 else {}
        topo = topologies.get_topology_desc(platform="tpu", topology_name=name, **kw)
    except Exception as e:  # libtpu missing or unknown name
        raise SystemExit(
            f"cannot describe TPU topology {name!r}: {e}\n"
            "Install the TPU extra (pip install -e '.[tpu]') and use names like v5p:4x4x4."
        ) from e
    return topo.devices, name.split(":")[0]


_COLLECTIVE = r"(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Collective ops of a compiled program: `in_slice` (XLA collectives over the slice's ICI) and
    `over_dcn` (multi-slice programs are compiled per slice; their cross-slice collectives are
    Megascale rendezvous over the data-center network)."""
    import collections
    import re

    ici = collections.Counter(re.findall(_COLLECTIVE + r"(?:-start)?\(", hlo_text))
    dcn = collections.Counter(re.findall(r'MegascaleRendezvousKeyName="' + _COLLECTIVE + r"\.", hlo_text))
    return {"in_slice": dict(sorted(ici.items())), "over_dcn": dict(sorted(dcn.items()))}


def stage_step(config, mesh, stage_name: str = ""):
    """(stage, task, train step, abstract state, abstract batch) of one stage, as the trainer
    builds them: the stage's own task (its `task` / `task_config`, e.g. the modalities an omni
    stage's batches carry) over the run's parameter tree (the union of the stage tasks' trees).
    Call under `jax.set_mesh(mesh)` and the logical axis rules. Nothing is materialised."""
    import jax

    from omni_jax.train import step as step_lib
    from omni_jax.train.multitask import StageTasks, union_trees
    from omni_jax.train.optimizer import build_optimizer
    from omni_jax.train.trainer import parse_stages

    stages = parse_stages(config)
    names = [s.name for s in stages]
    if stage_name and stage_name not in names:
        raise SystemExit(f"--stage={stage_name!r} is not a stage of this config; its stages: {names}")
    stage = stages[names.index(stage_name)] if stage_name else stages[0]
    tasks = StageTasks(config, names)
    trees = [(type(t).__name__, step_lib.abstract_boxed(t)) for t in tasks.unique]
    boxed = union_trees([(n, b[0]) for n, b in trees], "parameters")
    boxed_state = union_trees([(n, b[1]) for n, b in trees], "model state")
    task = tasks[stage.name]
    layout = step_lib.make_layout(task, mesh, config.train.batch_size, boxed, boxed_state)
    opt = build_optimizer(stage, layout.abstract_params)
    state = step_lib.abstract_state(layout, opt)
    batch = {k: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=layout.batch_shardings[k])
             for k, a in layout.batch_abstract.items()}
    fn = step_lib.make_train_step(task, opt, layout, microbatches=config.train.microbatches)
    return stage, task, layout, fn, state, batch


def plan(config, topology: str, stage_name: str = "", num_slices: int = 1, hlo_out: str = "",
         dump_dir: str = "") -> dict:
    """The report of one compile (module docstring); `hlo_out`: also write the compiled HLO text there
    (gzip); `dump_dir`: XLA's dump of this one compile goes there (buffer assignment, memory-usage
    report; passed as per-compile options because libtpu refuses `--xla_dump_to` in LIBTPU_INIT_ARGS)."""
    import jax
    import numpy as np
    from flax import linen as nn

    from omni_jax import sharding as shd

    devices, kind = topology_devices(topology, num_slices)
    mesh = shd.make_mesh(config.mesh.to_dict(), devices)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        stage, task, layout, fn, state, batch = stage_step(config, mesh, stage_name)
        t0, c0 = time.perf_counter(), time.process_time()
        compiled = fn.lower(state, batch).compile(compiler_options={"xla_dump_to": dump_dir} if dump_dir else None)
        compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    granule = np.vectorize(lambda d: getattr(d, "slice_index", getattr(d, "process_index", 0)))(mesh.devices)
    crossing = [a for i, a in enumerate(shd.MESH_AXES) if (np.diff(granule, axis=i) != 0).any()]
    hlo = compiled.as_text()
    if hlo_out:
        import gzip

        with gzip.open(hlo_out, "wt") as fh:
            fh.write(hlo)
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(layout.abstract_params))
    tokens = int(np.prod(layout.batch_abstract["tokens"].shape)) if "tokens" in layout.batch_abstract else 0
    # a closed form exists for the language-model tasks only; the omni tasks' media encoders, frozen parts and
    # audio head have none: None (JSON null), and launch/hlo_cost.py counts their compiled programs instead
    analytic = task.flops_per_token() * tokens if hasattr(task, "flops_per_token") else None
    report = {
        "topology": topology, "slices": num_slices, "devices": len(devices), "mesh": dict(mesh.shape),
        "dcn": {a: n for a, n in shd.dcn_shape_from_config(config.mesh.to_dict()).items() if n > 1},
        "axes_crossing_slices": crossing, "stage": stage.name, "task": type(task).__name__,
        "params": n_params, "tokens_per_step": tokens, "compile_s": round(compile_s, 1),
        "compile_cpu_s": round(compile_cpu_s, 1),  # all threads: comparable on a loaded machine
        "per_device_bytes": {
            "arguments": int(mem.argument_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
            "temporaries": int(mem.temp_size_in_bytes), "aliased": int(mem.alias_size_in_bytes),
            "total": int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                         - mem.alias_size_in_bytes),
        },
        # per device (the partitioned program); the body of a while loop (a scan) is counted once
        "compiler_flops_per_device": float(cost.get("flops", float("nan"))),
        "compiler_bytes_per_device": float(cost.get("bytes accessed", float("nan"))),
        "collectives": collectives(hlo),
        "analytic_flops_per_step": analytic,
    }
    if kind in PEAK_BF16_TFLOPS and analytic is not None:
        peak = PEAK_BF16_TFLOPS[kind] * 1e12 * len(devices)
        report["ideal_step_s_at_100pct_mfu"] = analytic / peak
    return report


def _print(r: dict) -> None:
    m = r["per_device_bytes"]
    slices = f" x {r['slices']} slices" if r.get("slices", 1) > 1 else ""
    print(f"\n{r['topology']}{slices}: {r['devices']} devices, mesh {r['mesh']}"
          + (f" (over DCN: {r['dcn']})" if r.get("dcn") else "") + f", stage {r['stage']}")
    print(f"params {r['params'] / 1e9:.3f} B, {r['tokens_per_step']} tokens/step, compiled in {r['compile_s']} s")
    print("| per device | MiB |\n|---|---|")
    for k in ("arguments", "outputs", "temporaries", "aliased", "total"):
        print(f"| {k} | {m[k] / 2**20:.1f} |")
    print(f"compiler flops/device (a scanned layer counts once): {r['compiler_flops_per_device']:.3e}")
    if r["analytic_flops_per_step"] is None:
        print(f"analytic flops/step: none for task {r['task']!r} (no closed form for its encoders and frozen parts; "
              "`python -m launch.aot_plans` counts the compiled program's matmuls with launch/hlo_cost.py)")
    else:
        print(f"analytic flops/step (6*N*tokens + attention): {r['analytic_flops_per_step']:.3e}")
    c = r["collectives"]
    print(f"collectives within a slice: {c['in_slice']}" + (f"; over DCN: {c['over_dcn']}" if c["over_dcn"] else ""))
    if "ideal_step_s_at_100pct_mfu" in r:
        s = r["ideal_step_s_at_100pct_mfu"]
        print(f"step time at 100% / 50% / 40% MFU: {s:.3f} / {s / 0.5:.3f} / {s / 0.4:.3f} s")


def _main(argv):
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    r = plan(FLAGS.config, FLAGS.topology, FLAGS.stage, FLAGS.num_slices)
    _print(r)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(r, f, indent=2)
    return 0


def _define_flags() -> None:
    """Defined when the command runs, so several launch modules can be imported together."""
    config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.", lock_config=True)
    flags.DEFINE_string("topology", "cpu", "TPU topology name (e.g. v5p:4x4x4) or 'cpu'.")
    flags.DEFINE_integer("num_slices", 1, "Number of TPU slices (multi-slice over DCN; see config.mesh.dcn_*).")
    flags.DEFINE_string("stage", "", "Stage to compile (default: the first in stage_order).")
    flags.DEFINE_string("json_out", "", "Also write the report as JSON here.")
    flags.mark_flags_as_required(["config"])


def main():
    _define_flags()
    app.run(_main, flags_parser=flag_errors.parse_flags)


if __name__ == "__main__":
    sys.exit(main())

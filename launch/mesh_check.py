r"""Every factorisation of the devices over (data, fsdp, tensor, context) against one device.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m launch.mesh_check [--models=backbone,omni] [--meshes=2.2.2.1,...]

For each mesh (all 20 of 8 devices by default) the tiny backbone's and a tiny omni stage's
loss and gradients (jax.value_and_grad of the task's loss, the parameters and the batch laid out
by the rules table) are compared with the same computation on a single device; a line per mesh
gives the max abs differences, and the command fails when one exceeds --tolerance (1e-5).
The models are the tiny presets with 8 attention heads everywhere, so `tensor` can reach 8.

On CPU the simulated devices' collectives rendezvous in one process; XLA CPU aborts a
collective whose participants do not all arrive within
`--xla_cpu_collective_call_terminate_timeout_seconds` (40 s by default). On a machine with
fewer cores than simulated devices, under load, one device thread can fall that far behind
the others inside a big step (what stopped the data 4 x tensor 2 omni step): this command and
the tests raise that timeout; this command also sizes the CPU thread pool so that simulated
devices blocked in different collectives cannot take all of it (omni_jax/cpu_simulation.py).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time

from omni_jax import cpu_simulation


def factorisations(n: int) -> list[tuple[int, int, int, int]]:
    """Every (data, fsdp, tensor, context) with product n (20 for n = 8)."""
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return [s for s in itertools.product(divs, repeat=4) if math.prod(s) == n]


def _eight_heads(c) -> None:
    """Tiny presets with 8 heads (and 8 KV heads) wherever heads are split over `tensor`."""
    m = c.model
    if "llm" in m:
        m.llm.update(num_heads=8, num_kv_heads=8, head_dim=16)
    if "vision" in m:
        m.vision.num_heads = 8
    if "audio" in m:  # the audio tokenizer's encoder and decoder
        m.audio.encoder.num_heads = 8
        m.audio.decoder.num_heads = 8
    if "audio_head" in m:  # its heads are its width over head_dim
        m.audio_head.head_dim = 16
    if "flow_matching" in m:
        m.flow_matching.update(num_heads=8, prenet_heads=8)


def model_config(kind: str):
    if kind == "backbone":
        from configs import backbone_tiny

        c = backbone_tiny.get_config()
        c.train.batch_size = 8
        c.data.seq_len = 64
        stage = "pretrain"
    elif kind == "omni":
        from configs.omni15 import stages

        c = stages.single_stage("image_text_1", "test", steps=1)
        stage = "image_text_1"
    else:
        raise ValueError(f"unknown model {kind!r}; use backbone or omni")
    _eight_heads(c)
    return c, stage


class Check:
    """One model's batch and parameters (numpy), and its single-device loss and gradients."""

    def __init__(self, kind: str, seed: int = 0):
        import jax
        import numpy as np

        from omni_jax import sharding as shd
        from omni_jax.train import step as step_lib
        from omni_jax.train.multitask import StageTasks
        from omni_jax.train.optimizer import stage_from_config

        self.kind = kind
        self.config, stage_name = model_config(kind)
        self.task = StageTasks(self.config, [stage_name])[stage_name]
        stage = stage_from_config(stage_name, self.config.stages[stage_name])
        data = self.task.make_data(stage, start_step=0, process_index=0, process_count=1)
        batch = next(data)
        self.params = step_lib.random_params(self.task, seed, 0.02)
        state = step_lib.jitted_init(self.task, "state")(jax.random.PRNGKey(seed))
        self.model_state = None if state is None else jax.device_get(shd.unbox(state))
        spec = self.task.batch_spec(self.config.train.batch_size)
        self.batch = {k: np.asarray(batch[k]) for k in spec}
        self.reference = self.run({}, devices=jax.devices()[:1])

    def run(self, sizes: dict, devices=None):
        """(loss, gradients) as numpy on the mesh `sizes` (axis -> size)."""
        import jax
        from flax import linen as nn

        from omni_jax import sharding as shd
        from omni_jax.train import step as step_lib

        mesh = shd.make_mesh(dict(sizes), devices)
        task = self.task
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
            layout = step_lib.make_layout(task, mesh, self.config.train.batch_size)
            rng = jax.random.PRNGKey(1)

            def loss(p, ms, b):
                obj, _, _ = task.loss_with_state(p, ms, b, rng, task.norms(b))
                return obj

            f = jax.jit(jax.value_and_grad(loss),
                        in_shardings=(layout.param_shardings, layout.model_state_shardings, dict(layout.batch_shardings)),
                        out_shardings=(layout.replicated, layout.param_shardings))
            params = jax.device_put(self.params, layout.param_shardings)
            ms = None if self.model_state is None else jax.device_put(self.model_state, layout.model_state_shardings)
            batch = jax.device_put(self.batch, dict(layout.batch_shardings))
            value, grads = f(params, ms, batch)
            return float(value), jax.device_get(grads)

    def compare(self, sizes: dict) -> dict:
        import jax
        import numpy as np

        t = time.perf_counter()
        value, grads = self.run(sizes)
        ref_value, ref_grads = self.reference
        gdiff = max(float(np.max(np.abs(np.asarray(a, np.float64) - b))) if np.size(a) else 0.0
                    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
        return {"model": self.kind, "mesh": dict(sizes), "loss": value, "loss_diff": abs(value - ref_value),
                "grad_diff": gdiff, "seconds": round(time.perf_counter() - t, 1)}


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="backbone,omni")
    p.add_argument("--meshes", default="", help="comma-separated data.fsdp.tensor.context (default: all)")
    p.add_argument("--tolerance", type=float, default=1e-5)
    p.add_argument("--out", default="", help="write the results as JSON lines here")
    a = p.parse_args(argv)
    cpu_simulation.apply(os.environ)  # before jax starts
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    n = jax.device_count()
    meshes = ([tuple(int(x) for x in m.split(".")) for m in a.meshes.split(",")] if a.meshes
              else factorisations(n))
    bad = 0
    for kind in a.models.split(","):
        check = Check(kind)
        for m in meshes:
            r = check.compare(dict(zip(("data", "fsdp", "tensor", "context"), m)))
            ok = r["loss_diff"] <= a.tolerance and r["grad_diff"] <= a.tolerance
            bad += not ok
            print(f"{kind:9s} data={m[0]} fsdp={m[1]} tensor={m[2]} context={m[3]}: loss {r['loss']:.6f} "
                  f"|dloss| {r['loss_diff']:.2e} max|dgrad| {r['grad_diff']:.2e} {'ok' if ok else 'FAIL'} "
                  f"({r['seconds']} s)", flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(dict(r, ok=ok)) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

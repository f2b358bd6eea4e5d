r"""Where a CPU train step's time goes: the backbone step of backbone_step.py, traced and summed per XLA thunk.

    python benchmarks/step_profile.py                                   # calibration config, layer scan
    python benchmarks/step_profile.py --unroll all --remat dots_no_batch --top 40
    python benchmarks/step_profile.py --trace_dir /tmp/trace            # keep the trace for TensorBoard

Builds the same step as `benchmarks/backbone_step.py` (same flags for the model), times it, then
records `--steps` steps with jax.profiler and reads the trace back (jax.profiler.ProfileData):
every event of XLA's CPU worker threads (`tf_XLAEigen`) is one thunk of the compiled program.
Prints thread-milliseconds per step by kind (matmul = YNNPACK/Eigen dot fusions; copy/transpose;
broadcast and dynamic-slice, the layer scan's stacking; everything else elementwise) against the
threads' wall budget (ms/step x threads; the rest is idle), and the top thunks with their HLO
shape and the jax op they come from (the compiled HLO text is matched by instruction name).
Thread-ms of one event include the time it waits for helpers it split work onto, so read kinds
against each other and against the budget, not as exact CPU time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

import backbone_step  # noqa: E402

# executor bookkeeping, and loop/branch thunks whose bodies are recorded as events of their own
_SKIP = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "while", "conditional")


def kind(name: str) -> str:
    if name.startswith(("ynn_fusion", "dot", "custom-call")):
        return "matmul"
    if "copy" in name or "transpose" in name:
        return "copy/transpose"
    if "broadcast" in name or "dynamic" in name:
        return "broadcast/dynamic-slice"
    return "elementwise/other"


def summarise(trace_dir: str, hlo: str, steps: int):
    """(thread count, {kind: thread-ms per step}, [(thread-ms per step, calls, name, shape, op)])."""
    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    ns, calls, threads = collections.Counter(), collections.Counter(), 0
    for plane in data.planes:
        for line in plane.lines:
            if "Eigen" not in line.name:
                continue
            threads += 1
            for e in line.events:
                if not e.name.startswith(_SKIP):
                    ns[e.name] += e.duration_ns
                    calls[e.name] += 1
    meta = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%([\w.-]+) = (\S+) (.*)$", hlo, re.M):
        op = re.search(r'op_name="([^"]+)"', m.group(3))
        meta[m.group(1)] = (m.group(2), op.group(1) if op else "-")
    kinds = collections.Counter()
    for name, v in ns.items():
        kinds[kind(name)] += v / steps / 1e6
    top = [(v / steps / 1e6, calls[n], n, *meta.get(n, ("-", "-"))) for n, v in ns.most_common()]
    return threads, kinds, top


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in [("hidden", 512), ("layers", 8), ("heads", 8), ("kv_heads", 2), ("mlp", 1408),
                          ("vocab", 8192), ("batch", 4), ("seq", 256), ("steps", 3), ("warmup", 3), ("top", 25)]:
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--unroll", default="1", help="config.model.llm.scan_unroll ('all' = the number of layers)")
    p.add_argument("--remat", default="none", help="config.model.llm.remat_policy")
    p.add_argument("--attention", default="xla")
    p.add_argument("--trace_dir", default="", help="where to write the trace (default: a temporary directory)")
    a = p.parse_args()

    c = backbone_step.make_config(a, a.unroll, a.remat)
    trace_dir = a.trace_dir or tempfile.mkdtemp(prefix="step_profile_")
    with backbone_step.step_scope() as mesh:
        fn, state, batch = backbone_step.build_step(c, a, backbone_step.make_batch(a), mesh)
        # one executable, timed, traced and named from its own HLO text (thunk names are per compile)
        fn = fn.lower(state, batch).compile()
        hlo = fn.as_text()
        times, state = backbone_step.time_steps(fn, state, batch, a.warmup, 5)
        with jax.profiler.trace(trace_dir):
            for _ in range(a.steps):
                state, m = fn(state, batch)
                jax.block_until_ready(m["loss"])
    threads, kinds, top = summarise(trace_dir, hlo, a.steps)
    ms = statistics.median(times) * 1e3
    budget = ms * threads
    print(f"\nbackbone train step (unroll {a.unroll}, remat {a.remat}, attention {a.attention}): {ms:.1f} ms/step "
          f"(median of 5, untraced); {threads} XLA worker threads: {budget:.0f} thread-ms per step")
    print(f"trace: {trace_dir}\n")
    print("| kind | thread-ms / step | of the threads' budget |\n|---|---|---|")
    for k, v in kinds.most_common():
        print(f"| {k} | {v:.1f} | {v / budget:.0%} |")
    idle = budget - sum(kinds.values())
    print(f"| idle (waiting, python, dispatch) | {idle:.1f} | {idle / budget:.0%} |\n")
    print("| thread-ms / step | calls / step | thunk | HLO shape | jax op |\n|---|---|---|---|---|")
    for v, n, name, shape, op in top[:a.top]:
        print(f"| {v:.1f} | {n / a.steps:g} | {name} | {shape[:40]} | {op[-80:]} |")


if __name__ == "__main__":
    main()

r"""Kill soak (issue 13 item 4): random kill -9 over the tiny Baichuan-Omni-1.5 pipeline, not a test.

    python benchmarks/kill_soak.py [--config=configs/omni15/pipeline.py:test] [--kills=20] [--workdir=DIR] \
        [--meshes=data=1,fsdp=2 --processes=1,2] [--resume]

A `launch.certify` run without other meshes: two runs from scratch, then --kills kill -9 of one
resumed run (the first during a held async save, then one held mid-write at EVERY stage
boundary, the rest at random steps), each followed by a resume, and a SIGTERM run. Prints the
certificate: 0 lost checkpoints and final params + optimizer sha256 equal to the uninterrupted
run are the pass conditions. The kill count is capped at (steps - 1) (one per step boundary).
--meshes / --processes add the certificate's other variants (d) and (e), so one run gives both
the soak figures and the pipeline's full certificate. The restarts load their executables from
jax's persistent compilation cache (filled by the first run), so a kill costs a process start-up
and a checkpoint restore, not a recompile of its stage.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from launch import certify as cert_lib  # noqa: E402

flags.DEFINE_string("config", "configs/omni15/pipeline.py:test", "The pipeline config (path:arg).")
flags.DEFINE_integer("kills", 20, "kill -9 events (capped at steps - 1).")
flags.DEFINE_string("workdir", None, "Where to run (default: a fresh temporary directory).")
flags.DEFINE_multi_string("meshes", [], "Other meshes of the same device count, e.g. data=1,fsdp=2.")
flags.DEFINE_list("processes", ["1"], "Process counts, e.g. 1,2.")
flags.DEFINE_integer("timeout_s", 3600, "Limit of one launch.train process.")
flags.DEFINE_bool("resume", False, "Reuse the variants an interrupted soak in --workdir finished.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from ml_collections import config_flags

    path, _, arg = FLAGS.config.partition(":")
    config = config_flags.config_flags._LoadConfigModule("soak_config", path).get_config(arg or None)
    steps = int(sum(config.stages[s].steps for s in config.stage_order))
    kills = min(FLAGS.kills, steps - 1)
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="kill_soak_")
    print(f"{FLAGS.config}: {len(config.stage_order)} stages, {steps} steps, {kills} kills, workdir {workdir}", flush=True)
    cert = cert_lib.certify(FLAGS.config, config, workdir, kills=kills, meshes=FLAGS.meshes,
                            processes=[int(p) for p in FLAGS.processes], timeout_s=FLAGS.timeout_s,
                            resume=FLAGS.resume)
    print(cert_lib.markdown(cert))
    ev = cert["variants"]["kills"]["events"]
    boundaries = [int(b) for b in np.cumsum([config.stages[s].steps for s in config.stage_order])]
    crossed = sorted({e["at_step"] for e in ev if e["stage_boundary"]})
    ref, got = (set(cert["variants"][n]["checkpoint_steps"]) for n in ("scratch_1", "kills"))
    print(f"kills: {len(ev)}: {sum(e['kind'] == 'held_save' for e in ev)} during held async checkpoint writes, "
          f"{sum(e['stage_boundary'] for e in ev)} at stage boundaries (steps {crossed}; boundaries {boundaries}), "
          f"{sum(e['kind'] == 'step' for e in ev)} at random steps {[e['at_step'] for e in ev if e['kind'] == 'step']}")
    print(f"lost checkpoints: {len(ref - got)} {sorted(ref - got)}; final params + optimizer hash equal to the "
          f"uninterrupted run: {cert['checks']['b_kills_bitwise']}; wall time {cert['wall_s']:.0f} s "
          f"(kills variant {cert['variants']['kills']['wall_s']:.0f} s)")
    return 0 if cert["passed"] else 1


if __name__ == "__main__":
    app.run(main)

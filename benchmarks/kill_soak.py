r"""Kill soak (issue 13 item 4): random kill -9 over the tiny Baichuan-Omni-1.5 pipeline, not a test.

    python benchmarks/kill_soak.py [--config=configs/omni15/pipeline.py:test] [--kills=20] [--workdir=DIR]

A `launch.certify` run without other meshes: two runs from scratch, then --kills kill -9 of one
resumed run (the first during a held async save, then one held mid-write at EVERY stage
boundary, the rest at random steps), each followed by a resume, and a SIGTERM run. Prints the
certificate: 0 lost checkpoints and final params + optimizer sha256 equal to the uninterrupted
run are the pass conditions. The kill count is capped at (steps - 1) (one per step boundary).
Minutes to an hour on a 2-core CPU (every kill restarts a process and recompiles its stage).
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from launch import certify as cert_lib  # noqa: E402

flags.DEFINE_string("config_arg", "configs/omni15/pipeline.py:test", "The pipeline config (path:arg).")
flags.DEFINE_integer("kills", 20, "kill -9 events (capped at steps - 1).")
flags.DEFINE_string("workdir", None, "Where to run (default: a fresh temporary directory).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from ml_collections import config_flags

    path, _, arg = FLAGS.config_arg.partition(":")
    config = config_flags.config_flags._LoadConfigModule("soak_config", path).get_config(arg or None)
    steps = int(sum(config.stages[s].steps for s in config.stage_order))
    kills = min(FLAGS.kills, steps - 1)
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="kill_soak_")
    print(f"{FLAGS.config_arg}: {len(config.stage_order)} stages, {steps} steps, {kills} kills, workdir {workdir}")
    cert = cert_lib.certify(FLAGS.config_arg, config, workdir, kills=kills, meshes=[], processes=[1],
                            timeout_s=1800)
    print(cert_lib.markdown(cert))
    kinds = [e["kind"] for e in cert["variants"]["kills"]["events"]]
    print(f"kills: {len(kinds)} ({kinds.count('held_save')} during held saves); lost checkpoints: "
          f"{0 if cert['checks']['b_no_checkpoint_lost'] else 'SOME'}; final hash equal: {cert['checks']['b_kills_bitwise']}")
    return 0 if cert["passed"] else 1


if __name__ == "__main__":
    app.run(main)

r"""Train from a config file: `python -m launch.train --config=configs/x.py --workdir=DIR`.

Any config value can be overridden: `--config.train.steps=10 --config.mesh.fsdp=2`.
Re-running with the same --workdir resumes from its latest checkpoint.
Several processes (one per host; or several on one host, as the tests do):
`--coordinator=HOST:PORT --num_processes=N --process_id=I` (TPU pods, GKE and SLURM are
detected without flags; omni_jax/distributed.py).
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import flag_errors

FLAGS = flags.FLAGS


def _main(argv):
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/jax INFO chatter off
    logging.getLogger("omni_jax").setLevel(logging.INFO)
    from omni_jax import distributed

    check_config(FLAGS.config)
    try:
        distributed.initialize_from_flags()  # first: jax.distributed before anything touches the devices
        from omni_jax.train.trainer import train

        result = train(FLAGS.config, FLAGS.workdir)
    except distributed.DistributedStartupError as e:  # the message names the address / the fix
        raise SystemExit(f"launch.train: {e}") from None
    m = result["last_metrics"]
    print(f"{result['status']} at step {result['step']}: "
          + ", ".join(f"{k}={m[k]:.4g}" for k in ("loss", "accuracy", "tokens_per_s") if k in m))
    return 0 if result["status"] in ("done", "preempted") else 1


def check_config(config) -> None:
    """Settings that would otherwise fail only after the model is built, checked at parse time
    (the error names the flag to set): the tokenizer (omni_jax/data/tokenizer.py)."""
    from omni_jax.data.tokenizer import check_tokenizer_config

    t = config.get("data", {}).get("tokenizer") if config.get("data") else None
    if t is not None:
        try:
            check_tokenizer_config(t.get("kind", "byte"), t.get("path") or None)
        except ValueError as e:
            raise app.UsageError(str(e)) from None


def _define_flags() -> None:
    """Defined when the command runs, so several launch modules can be imported together."""
    config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
    flags.mark_flags_as_required(["config", "workdir"])
    from omni_jax import distributed

    distributed.define_flags(flags)


def main():
    _define_flags()
    app.run(_main, flags_parser=flag_errors.parse_flags)


if __name__ == "__main__":
    sys.exit(main())

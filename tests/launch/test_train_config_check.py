"""launch/train.py `check_config`: the 7B configs select the released tokenizer; without its
directory the command stops at parse time naming --config.data.tokenizer.path (before any
model work), with it the check passes; AOT planning needs no tokenizer."""

import os
import subprocess
import sys

import pytest
from absl import app

from configs import backbone_7b
from configs.omni15 import sft_1
from configs.omni_v1 import sft
from launch.train import check_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEVEN_B = {"backbone_7b": lambda: backbone_7b.get_config(), "backbone_7b:long": lambda: backbone_7b.get_config("long"),
           "omni15/sft_1:7b": lambda: sft_1.get_config("7b"), "omni_v1/sft:7b": lambda: sft.get_config("7b")}


@pytest.mark.parametrize("name", sorted(SEVEN_B))
def test_7b_configs_need_the_tokenizer_path_and_name_the_flag(name, tmp_path):
    c = SEVEN_B[name]()
    assert c.data.tokenizer.kind == "release"
    with pytest.raises(app.UsageError, match="pass --config.data.tokenizer.path=DIR"):
        check_config(c)
    c.data.tokenizer.path = str(tmp_path / "missing")
    with pytest.raises(app.UsageError, match=r"missing' is not a directory; pass --config.data.tokenizer.path=DIR"):
        check_config(c)
    c.data.tokenizer.path = str(tmp_path)
    check_config(c)  # a directory: the tokenizer itself is loaded (and its ids checked) by the data pipeline


def test_cli_stops_before_model_work(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/backbone_7b.py",
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "pass --config.data.tokenizer.path=DIR" in r.stderr, r.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_7b_backbone_plans_without_the_tokenizer():
    import jax
    import numpy as np

    from omni_jax import sharding as shd
    from omni_jax.tasks import get_task

    task = get_task(backbone_7b.get_config())  # what launch/aot.py builds: no data, no tokenizer
    tree = shd.unbox(jax.eval_shape(task.init, jax.ShapeDtypeStruct((2,), np.uint32)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)) == 7_615_616_512

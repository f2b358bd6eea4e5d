"""configs/text_mixture_tiny.py: a multi-dataset mixture through the foundation trainer.

(Exact resume of the omni iterator state through orbax is tested in test_mixture.py; the
trainer's resume machinery in tests/train/test_trainer.py.)
"""

import numpy as np

from configs import text_mixture_tiny
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.metrics import read_metrics
from omni_jax.train.trainer import train


def test_mixture_config_trains_through_the_trainer(data_dir, tmp_path):
    c = text_mixture_tiny.get_config("runlocal")
    c.train.steps = c.stages.pretrain.steps = 3
    r = train(c, str(tmp_path))
    assert r["status"] == "done" and r["step"] == 3
    m = read_metrics(str(tmp_path))
    assert [x["step"] for x in m] == [1, 2, 3] and all(np.isfinite(x["loss"]) for x in m)
    assert all(x["tokens"] > 0.9 * c.train.batch_size * c.data.seq_len for x in m)  # rows are packed full
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    data = ck.read_data_state(3)
    ck.close()
    assert data["step"] == 3 and data["errors"] == {"seen": data["errors"]["seen"], "bad": {}}

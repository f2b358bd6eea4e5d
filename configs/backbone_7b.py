r"""The release-shaped 7B backbone (Qwen2.5-7B layout), for pods and for AOT planning.

  python -m launch.aot --config=configs/backbone_7b.py --topology=v5p:4x4x4     # compile for 64 v5p chips here
  python -m launch.train --config=configs/backbone_7b.py --workdir=gs://... \
      --config.data.tokenizer.path=Baichuan-Omni-1.5/                            # on the pod itself

bf16 compute with fp32 master weights, full rematerialisation, FSDP over every chip.
`:long` switches to 32k-token rows with blockwise attention and context parallelism 4.
The data uses the released tokenizer: training needs its files (`--config.data.tokenizer.path=DIR`;
launch/train.py stops at once, naming that flag, without it). AOT planning does not read them.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base()
    c.task = "lm"
    c.model = ml_collections.ConfigDict(dict(llm=common.qwen2("7b")))
    c.model.llm.update(dtype="bfloat16", param_dtype="float32", remat_policy="full",
                       loss_token_chunk=common.LOSS_TOKEN_CHUNK_7B)
    c.data = common.text_data(seq_len=2048)
    c.data.tokenizer.kind = "release"
    c.mesh.update(data=1, fsdp=-1, tensor=1, context=1)
    c.train.update(steps=1000, batch_size=64, log_every=10)
    c.checkpoint.update(every=200, keep=3)
    c.stages.pretrain = ml_collections.ConfigDict(dict(
        steps=c.train.get_ref("steps"),
        rules=[(r"llm/.*", "llm")],
        groups=dict(llm=dict(lr=1e-5, schedule="cosine", warmup_steps=100, weight_decay=0.1, mu_dtype="bfloat16")),
        grad_clip_norm=1.0,
    ))
    c.stage_order = ("pretrain",)
    if arg == "long":
        c.data.seq_len = 32768
        c.train.batch_size = 16
        c.mesh.update(fsdp=-1, context=4)
        c.model.llm.update(attention_impl="blockwise", attention_block_size=1024)
    return c

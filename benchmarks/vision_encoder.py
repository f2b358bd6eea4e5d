r"""Vision encoder forward throughput: omni_jax's NaViT + bridge vs transformers'
Qwen2VisionTransformerPretrainedModel (PyTorch), same weights, same images, same run.

    python benchmarks/vision_encoder.py                 # small config (embed 384, 6 blocks), 8 images
    python benchmarks/vision_encoder.py --embed 1280 --depth 2 --heads 16 --images 4

fp32 on CPU. The same random weights are loaded on both sides (through our conversion
rules) and the outputs are checked to agree before timing. Images: `--images` of 224 x 224
(256 patches each) and a mixed-size set (each image its own size, as a real batch is).
omni_jax layouts: one image per row (rows padded to the largest image), `--per_row`
images packed per row (block-diagonal attention inside the row: the packed row computes
the full row x row score matrix and masks it, so packing trades attention FLOPs for fewer,
larger matmuls), and every image in one row padded only to a block (`attention_impl=
"blockwise"` with each of `--blocks`: key blocks of other images are skipped, so neither the
padding nor the cross-image scores are computed). transformers runs all images as one packed
sequence (its eager / sdpa paths loop over the images for attention). Prints images/s and the
ratio to transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _time(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embed", type=int, default=384)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--out", type=int, default=512)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--per_row", type=int, default=4)
    p.add_argument("--blocks", default="64,128", help="block sizes of the one-row blockwise layout")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    a = p.parse_args()
    blocks = [int(b) for b in a.blocks.split(",")]
    bad = [b for b in blocks if b % 4]
    if bad:
        p.error(f"--blocks {bad}: each block size must be a multiple of 4 (the merger's 2x2 groups)")

    import torch
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    from omni_jax import sharding as shd
    from omni_jax.convert import vision as cv
    from omni_jax.convert.mapping import import_params
    from omni_jax.data import vision_preprocessing as vp
    from omni_jax.models.navit import VisionTower

    jax.config.update("jax_default_matmul_precision", "highest")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    hf_cfg = Qwen2VLVisionConfig(depth=a.depth, embed_dim=a.embed, hidden_size=a.out, num_heads=a.heads, mlp_ratio=4)
    models = {impl: Qwen2VisionTransformerPretrainedModel._from_config(hf_cfg, attn_implementation=impl).eval()
              for impl in ("eager", "sdpa")}
    models["sdpa"].load_state_dict(models["eager"].state_dict())
    cfg = cv.navit_config_from_hf(hf_cfg.to_dict())
    tower = VisionTower(cfg)
    rs = np.random.RandomState(0)
    sides = [(16, 16)] * a.images
    mixed = [(2 * rs.randint(4, 13), 2 * rs.randint(4, 13)) for _ in range(a.images)]
    sd = {k: v.numpy() for k, v in models["eager"].state_dict().items()}

    def abstract(p_len):
        z = jnp.zeros
        return shd.unbox(jax.eval_shape(tower.init, jax.random.PRNGKey(0), z((1, p_len, cfg.patch_dim)),
                                        z((1, p_len, 2), jnp.int32), z((1, p_len), jnp.int32))["params"])

    params = jax.device_put(import_params(sd, cv.navit_rules(cfg, "hf", prefix=""), abstract(8)))
    layouts = [("1 image/row", 1, "xla", 4), (f"{a.per_row} images/row", a.per_row, "xla", 4)] + [
        (f"one row, blockwise {b}", a.images, "blockwise", b) for b in blocks]
    rows = []
    for set_name, hw in (("224x224", sides), ("mixed sizes", mixed)):
        items = [(rs.randn(h * w, cfg.patch_dim).astype(np.float32), (1, h, w)) for h, w in hw]
        n_patches = sum(h * w for h, w in hw)
        x = torch.from_numpy(np.concatenate([it[0] for it in items]))
        grid = torch.tensor([it[1] for it in items])
        with torch.no_grad():
            ref = models["eager"](x, grid_thw=grid).pooler_output.numpy()
        for impl, m in models.items():
            def run_torch(m=m):
                with torch.no_grad():
                    m(x, grid_thw=grid)
            rows.append((set_name, f"transformers ({impl})", n_patches, _time(run_torch, a.warmup, a.reps)))
        for layout, per_row, impl, multiple in layouts:
            groups = [items[i:i + per_row] for i in range(0, len(items), per_row)]
            row_len = max(sum(len(it[0]) for it in g) for g in groups)
            row_len += (-row_len) % multiple  # the merger's 2x2 groups; a whole number of blocks
            apply = jax.jit(VisionTower(dataclasses.replace(cfg, attention_impl=impl,
                                                            attention_block_size=multiple if impl == "blockwise"
                                                            else cfg.attention_block_size)).apply)
            batch = vp.pack_vision_batch(groups, row_len)
            args = tuple(jnp.asarray(batch[k]) for k in ("patches", "positions", "segment_ids"))
            out = np.asarray(apply({"params": params}, *args))
            got = np.concatenate([out[r][batch["token_item"][r] == k] for r, g in enumerate(groups) for k in range(len(g))])
            diff = float(np.abs(got - ref).max())
            assert diff < 1e-4, f"outputs disagree ({diff:.2e})"
            t = _time(lambda: apply({"params": params}, *args).block_until_ready(), a.warmup, a.reps)
            rows.append((set_name, f"omni_jax jit, {layout}", len(groups) * row_len, t))
        print(f"[{set_name}] omni_jax vs transformers max abs diff: {diff:.2e}")

    print(f"\nNaViT + merger forward, fp32 CPU (jax devices {jax.device_count()}, torch threads "
          f"{torch.get_num_threads()}): embed {a.embed}, {a.depth} blocks, {a.heads} heads, {a.images} images")
    print(f"\n| {'images':<11} | {'implementation':<36} | {'patches':>7} | {'ms':>8} | {'images/s':>8} | {'vs transformers (sdpa)':>22} |")
    print(f"|{'-' * 13}|{'-' * 38}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 24}|")
    for set_name in ("224x224", "mixed sizes"):
        base = next(t for s, n, _, t in rows if s == set_name and n == "transformers (sdpa)")
        for s, n, patches, t in rows:
            if s == set_name:
                print(f"| {s:<11} | {n:<36} | {patches:7d} | {t * 1e3:8.1f} | {a.images / t:8.1f} | {base / t:21.2f}x |")


if __name__ == "__main__":
    main()

r"""Named AOT plans of the 7B models on TPU slices, compiled one after another, with a roofline.

  ALLOW_MULTIPLE_LIBTPU_LOAD=1 nice -n 19 python -m launch.aot_plans --plans=sft_1_v5e32,sft_2_v5e32
  python -m launch.aot_plans --table          # only (re)write the markdown table from the JSONs
  python -m launch.aot_plans --table --recost # ... after recounting launch/hlo_cost.py's numbers from the kept HLO

Each plan is a stage config plus run settings (mesh, batch, microbatches, sequence length, the
media budget of a row, attention kernels) and a topology. `launch/aot.py`'s `plan()` compiles
it with the real TPU compiler (libtpu, no TPU needed); the report goes to
`<out>/<plan>.json` and a finished plan is skipped when the script runs again (a compile
takes minutes to a quarter of an hour on a small machine). A compile that fails (e.g. the
program does not fit HBM) is recorded with the compiler's message. `<out>/table.md` is the
table for README "Planning for TPU pods without a TPU".

Roofline. `compiled.cost_analysis()` of an SPMD program describes ONE device's partitioned
program (checked: a matmul sharded over 8 CPU devices or 4 v5e chips reports 1/8 or 1/4 of the
global flops), and XLA counts the body of a while loop (every `nn.scan` over layers, the
microbatch scan, the loss-tile scan) ONCE, not times its trip count (checked: a scan of 8 matmuls
reports one), so its flops and bytes are far below the step's. The table shows them, and also
`launch/hlo_cost.py`'s count from the compiled HLO with every loop body times its trip count
(matmul flops; HBM bytes of the unfused instructions). The step-time bound per chip is

    t >= max(F / peak, B / hbm_bw, C / ici_bw)   F, B = the loop-aware HLO matmul flops and bytes per chip,
                                                 C = its collectives' result bytes (all-reduce twice)

(C / ici_bw, when the plan kept its HLO: every chip's links at once, overlapped with compute, so
it too is a lower bound.)

and the MFU bound is model flops / (chips * peak * t): the MFU this program could reach if it ran
at the roofline (what it computes beyond the model flops, e.g. rematerialisation, encoders and
the masked half of causal attention, lowers it). Model flops count the LLM only (2N per token
forward, 2N backward to the activations, 2N more for the weight gradients when the LLM trains;
N without the embedding table; causal attention 2 * 2 * L * T * d_attn / 2 per token forward,
twice that backward); the encoders and the audio head are not counted, so MFU is understated
for media-heavy rows.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from absl import app, flags

FLAGS = flags.FLAGS

# per chip: bf16 peak FLOP/s, HBM bandwidth, HBM capacity (Cloud TPU docs)
# ici_bw: Google's published inter-chip interconnect bandwidth per chip (v5p 4800 Gbps, v5e 1600 Gbps)
PEAKS = {"v5p": dict(flops=459e12, hbm_bw=2765e9, hbm_gib=95, ici_bw=600e9),
         "v5e": dict(flops=197e12, hbm_bw=819e9, hbm_gib=16, ici_bw=200e9)}

# per-row media budgets (config.data.shapes). 448x448 image = 32x32 = 1024 patches (256 LLM tokens);
# video frames at 224x224 = 256 patches (64 tokens; 32 of 448x448 frames would be the whole 8k row);
# one 30 s audio chunk = 3000 mel frames (375 tokens)
IMG448, FRAME224 = 1024, 256


def media(images=0, frames=0, audio=0, speech=0, frame=FRAME224, speech_frames=0) -> dict:
    return dict(max_patches=images * IMG448 + frames * frame, max_vision_items=images + frames,
                max_audio_chunks=audio, max_speech_chunks=speech, max_speech_frames=speech_frames)


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    stage: str  # configs/omni15/<stage>.py:7b, or "backbone" (configs/backbone_7b.py)
    topology: str
    set: dict  # dotted config paths -> value (run settings)
    what: str  # the row's media, for the table
    note: str = ""


_SPLASH = {"model.llm.attention_impl": "splash"}
_VISION_BLOCKWISE = {"model.vision.attention_impl": "blockwise"}
_8K_V5P64 = {"data.seq_len": 8192, "train.batch_size": 128, "mesh.fsdp": -1, **_SPLASH, **_VISION_BLOCKWISE}


def _media8k(stage: str) -> tuple[dict, str]:
    img = media(images=4)
    return {
        "image_text_1": (img, "4 images 448^2"),
        "image_text_2": (img, "4 images 448^2"),
        "image_audio_text_1": (media(images=4, audio=1, speech=1), "4 images 448^2, 30 s audio in, 30 s speech out"),
        "image_audio_text_2": (media(images=4, audio=1, speech=1), "4 images 448^2, 30 s audio in, 30 s speech out"),
        "omni_pretrain": (media(images=4, frames=32, audio=1, speech=1),
                          "4 images 448^2, 32 video frames 224^2, 30 s audio in, 30 s speech out"),
        "sft_1": (media(images=4, frames=32, audio=1, speech=1),
                  "4 images 448^2, 32 video frames 224^2, 30 s audio in, 30 s speech out"),
        "sft_2": (media(images=4, frames=32, audio=1, speech=1),
                  "4 images 448^2, 32 video frames 224^2, 30 s audio in, 30 s speech out"),
    }[stage]


def _plans() -> list[Plan]:
    out = []
    # (a) the released weights' SFT stages on v5e-32: the stage's own 4096-token rows and media budget,
    # 256 rows/step as the other 7B stages, 8 microbatches: 1 row per chip at a time
    for st in ("sft_1", "sft_2"):
        # loss_per_shard off: the gathered LM-head kernel and its fp32 gradient accumulator took sft_1 from
        # 12.0 to 18.5 GiB per 16 GiB chip (benchmarks/README.md)
        out.append(Plan(f"{st}_v5e32", st, "v5e:4x8", {"mesh.fsdp": -1, "train.microbatches": 8,
                                                       "model.llm.loss_per_shard": False, **_SPLASH},
                        "stage default: <= 4096 patches / 32 items, 4 x 30 s audio in, 4 x 30 s speech out"))
    # (b) omni pre-training at 64k tokens on v5p-128 (128 chips), context parallelism. The same row in three
    # ways: ring attention over 4 chips (each ring step attends a 16k x 16k slice pair densely), ring over
    # 16 chips (4k x 4k pairs; 16 rows in 2 microbatches), and the all-gather of keys/values over 4 chips
    # with the blockwise kernel (MaxText's causal context parallelism; configs/backbone_7b.py:long)
    media64k = media(images=4, frames=256, audio=8, speech=4)
    what64k = "4 images 448^2, 256 video frames 224^2, 8 x 30 s audio in, 4 x 30 s speech out"
    for name, ctx, impl, rows, mb in (("ring_c4", 4, "ring", 32, 1), ("ring_c16", 16, "ring", 16, 2),
                                      ("blockwise_c4", 4, "blockwise", 32, 1)):
        out.append(Plan(f"omni_pretrain_64k_{name}_v5p128", "omni_pretrain", "v5p:4x4x8",
                        {"data.seq_len": 65536, "train.batch_size": rows, "train.microbatches": mb, "mesh.fsdp": -1,
                         "mesh.context": ctx, "model.llm.attention_impl": impl, **_VISION_BLOCKWISE,
                         "data.shapes": media64k}, what64k))
    # the ring over 16 chips with the 8k rows' media in the 64k row: what the long video costs
    out.append(Plan("omni_pretrain_64k_ring_c16_media8k_v5p128", "omni_pretrain", "v5p:4x4x8",
                    {"data.seq_len": 65536, "train.batch_size": 16, "train.microbatches": 2, "mesh.fsdp": -1,
                     "mesh.context": 16, "model.llm.attention_impl": "ring", **_VISION_BLOCKWISE,
                     "data.shapes": media(images=4, frames=32, audio=1, speech=1)},
                    "4 images 448^2, 32 video frames 224^2, 30 s audio in, 30 s speech out"))
    # compile-time scaling and the backbone row of the README (64 x 2048, fsdp 64, 512-token loss tiles)
    out.append(Plan("backbone_28l_v5p64", "backbone", "v5p:4x4x4", {}, "text"))
    out.append(Plan("backbone_2l_v5p64", "backbone", "v5p:4x4x4", {"model.llm.num_layers": 2}, "text",
                    note="2 of 28 layers: compile-time scaling"))
    # (c) the other 1.5 stages: 8k-token rows with their media, 128 rows (1M tokens) on v5p-64
    for st in ("omni_pretrain", "image_audio_text_2", "image_text_2", "sft_1", "image_audio_text_1", "image_text_1",
               "sft_2"):
        shapes, what = _media8k(st)
        out.append(Plan(f"{st}_8k_v5p64", st, "v5p:4x4x4", {**_8K_V5P64, "data.shapes": shapes}, what))
    return out


PLANS = {p.name: p for p in _plans()}


def build_config(p: Plan):
    if p.stage == "backbone":
        c = importlib.import_module("configs.backbone_7b").get_config()
    else:
        c = importlib.import_module(f"configs.omni15.{p.stage}").get_config("7b")
    for path, value in p.set.items():
        *parents, leaf = path.split(".")
        node = c
        for k in parents:
            node = node[k]
        if isinstance(value, dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return c


def model_flops(config, task, tokens: int, seq_len: int, llm_trains: bool) -> float:
    """LLM training flops of a step (module docstring)."""
    llm = config.model.llm if "llm" in config.model else config.model
    d, L, f, v = llm.hidden_size, llm.num_layers, llm.intermediate_size, llm.vocab_size
    h, kv, hd = llm.num_heads, llm.num_kv_heads, llm.head_dim
    per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f
    n = L * per_layer + d * v  # the LM head is a matmul; the embedding lookup is not
    attn_fwd = 2 * L * seq_len * h * hd  # QK^T and PV, 2 flops per MAC, causal half: 4 L T d_attn / 2
    return tokens * ((6.0 if llm_trains else 4.0) * n + 3.0 * attn_fwd)


def roofline(report: dict, kind: str) -> dict:
    """Step-time bound per chip from the loop-aware HLO counts (launch/hlo_cost.py) when present,
    else from cost_analysis() with the model flops as a floor (module docstring)."""
    pk = PEAKS[kind]
    chips = report["devices"]
    mf = report["model_flops_per_step"]
    if "hlo_matmul_flops_per_device" in report:
        f, b = report["hlo_matmul_flops_per_device"], report["hlo_bytes_per_device"]
    else:
        f = max(report["compiler_flops_per_device"], mf / chips)
        b = report["compiler_bytes_per_device"]
    parts = {"flops": f / pk["flops"], "bytes": b / pk["hbm_bw"]}
    coll = report.get("hlo_collective_bytes_per_device")
    if coll is not None:  # a ring all-reduce moves about twice its result through each chip
        parts["ici"] = sum(v * (2 if k == "all-reduce" else 1) for k, v in coll.items()) / pk["ici_bw"]
    t = max(parts.values())
    out = dict(peak_flops=pk["flops"], hbm_bw=pk["hbm_bw"], hbm_gib=pk["hbm_gib"], ici_bw=pk["ici_bw"],
               flops_s=parts["flops"], bytes_s=parts["bytes"], bound_s=t, bound_by=max(parts, key=parts.get),
               mfu_bound=mf / (chips * pk["flops"] * t))
    if "ici" in parts:
        out["ici_s"] = parts["ici"]
    return out


def run_plan(p: Plan) -> dict:
    import jax

    from launch import aot

    c = build_config(p)
    t0 = time.perf_counter()
    dump = tempfile.mkdtemp(prefix=f"xla_dump_{p.name}_") if FLAGS.memory_report else ""
    try:
        r = aot.plan(c, p.topology, "" if p.stage == "backbone" else p.stage,
                     hlo_out=os.path.join(FLAGS.out, f"{p.name}.hlo.txt.gz") if FLAGS.hlo else "", dump_dir=dump)
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        if dump:
            r["largest_buffers"] = keep_memory_report(dump, os.path.join(FLAGS.out, f"{p.name}.memory.txt"))
    finally:
        if dump:
            shutil.rmtree(dump, ignore_errors=True)
    r.update(plan=p.name, what=p.what, note=p.note, set={k: v for k, v in p.set.items()},
             microbatches=int(c.train.microbatches), batch_rows=int(c.train.batch_size),
             seq_len=int(c.data.seq_len), jax=jax.__version__, date=datetime.datetime.utcnow().isoformat(" ", "seconds"),
             commit=_commit())
    add_model_flops(r, c)
    if FLAGS.hlo:
        add_hlo_costs(r, os.path.join(FLAGS.out, f"{p.name}.hlo.txt.gz"))
    r["roofline"] = roofline(r, p.topology.split(":")[0])
    return r


def keep_memory_report(dump_dir: str, out_path: str, lines: int = 40, top: int = 5) -> list[str]:
    """XLA's memory-usage report of the step (the dump's largest one): its device-memory section
    (HBM, `Memory Space: default`) cut to `lines` lines goes to `out_path`; returns its `top`
    largest chunks ("size; offset; values; shapes"). The chunks are regions of the temporaries'
    arena with the values that share them over the step, so the shapes say what fills HBM."""
    reports = [os.path.join(dump_dir, f) for f in os.listdir(dump_dir) if f.endswith("memory-usage-report.txt")]
    if not reports:
        raise RuntimeError(f"no XLA memory-usage report in {dump_dir}: the compiler ignored xla_dump_to")
    with open(max(reports, key=os.path.getsize)) as fh:
        text = fh.read()
    section = text.split("Memory Space: ")[1].splitlines()[:lines]  # the first space is HBM (color 0)
    with open(out_path, "w") as fh:
        fh.write("Memory Space: " + "\n".join(section) + "\n")
    chunks = [ln.strip() for ln in section if ln.strip()[:1].isdigit()]
    return [ln.split(";", 1)[1].strip() for ln in chunks[:top]]


def add_model_flops(r: dict, c) -> None:
    """Whether the stage trains the LLM (a rule of a non-frozen group matches an LLM weight), the
    media its batches carry, and the model flops of the step (model_flops)."""
    import re

    stage = c.stages[r["stage"]]
    r["llm_trains"] = any(g != "frozen" and re.fullmatch(rx, "llm/layers/mlp/up_proj/kernel") for rx, g in stage.rules)
    if "task_config" in stage and "modalities" in stage.task_config:
        r["modalities"] = list(stage.task_config.modalities)
    r["model_flops_per_step"] = model_flops(c, None, r["tokens_per_step"], int(c.data.seq_len), r["llm_trains"])


def add_hlo_costs(r: dict, hlo_path: str) -> None:
    """Loop-aware matmul flops, HBM bytes and collective result bytes (per op) per chip from the
    compiled HLO (launch/hlo_cost.py)."""
    import gzip

    from launch import hlo_cost

    with gzip.open(hlo_path, "rt") as fh:
        c = hlo_cost.costs(fh.read())
    r.update(hlo_matmul_flops_per_device=c["flops"], hlo_bytes_per_device=c["bytes"], hlo_loops=c["loops"],
             hlo_loops_unknown_trip_count=c["loops_unknown_trip_count"],
             hlo_collective_bytes_per_device=c["collective_bytes"])


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.strip()
    except OSError:
        return ""


GiB = 2 ** 30


def table(out_dir: str) -> str:
    rows = [
        "| plan | stage | chips (topology) | mesh | tokens/step (rows x seq, microbatches) | media per row "
        "| per-chip memory: args / temps / total (HBM) | compile | cost_analysis flops / bytes per chip (loops once) "
        "| HLO matmul flops / bytes per chip (loops x trips) | model flops/step | step-time bound | MFU bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in PLANS:
        path = os.path.join(out_dir, f"{name}.json")
        if not os.path.exists(path):
            continue
        with open(path) as fh:
            r = json.load(fh)
        p = PLANS[name]
        chips = f"{p.topology.split(':')[0]}-{_chips(p.topology)} ({p.topology})"
        if "error" in r:
            rows.append(f"| {name} | {p.stage} | {chips} | | | {p.what} | does not compile: {r['error'][:160]} "
                        f"| {r.get('wall_s', '')} s | | | | | |")
            continue
        mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1)
        m = r["per_device_bytes"]
        rf = r["roofline"]
        mb = f", {r['microbatches']} mb" if r["microbatches"] > 1 else ""
        what = p.what
        if "modalities" in r:  # the media the stage's batches carry
            keep = {"speech": "speech" in r["modalities"], "audio": "audio" in r["modalities"],
                    "patches": "vision" in r["modalities"], "images": "vision" in r["modalities"],
                    "frames": "vision" in r["modalities"]}
            what = ", ".join(part for part in p.what.split(", ")
                             if all(ok or word not in part for word, ok in keep.items())) or "text"
        rows.append(
            f"| {name} | {r['stage']} | {chips} | {mesh} | {r['tokens_per_step'] / 1e6:.2f}M "
            f"({r['batch_rows']} x {r['seq_len']}{mb}) | {what} "
            f"| {m['arguments'] / GiB:.1f} / {m['temporaries'] / GiB:.1f} / {m['total'] / GiB:.1f} "
            f"({rf['hbm_gib']}) | {r['compile_s']:.0f} s "
            f"| {r['compiler_flops_per_device']:.2e} / {r['compiler_bytes_per_device']:.2e} "
            f"| {_hlo(r)} | {r['model_flops_per_step']:.2e} "
            f"| {rf['bound_s']:.3g} s (flops {rf.get('flops_s', float('nan')):.3g} s, bytes {rf.get('bytes_s', float('nan')):.3g} s"
            f"{', ici %.3g s' % rf['ici_s'] if 'ici_s' in rf else ''}) "
            f"| {rf['mfu_bound']:.0%} |")
    return "\n".join(rows) + "\n"


def _hlo(r: dict) -> str:
    if "hlo_matmul_flops_per_device" not in r:
        return "-"
    return f"{r['hlo_matmul_flops_per_device']:.2e} / {r['hlo_bytes_per_device']:.2e}"


def _chips(topology: str) -> int:
    """Chips (= JAX devices) of a topology name: the product of its sides. NB Google's accelerator type
    counts v5p TensorCores (v5p:4x4x4, 64 chips, is `v5p-128`); the tables here count chips."""
    import math

    return math.prod(int(x) for x in topology.split(":")[1].split("x"))


def _main(argv):
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    out = FLAGS.out
    os.makedirs(out, exist_ok=True)
    names = [n for n in FLAGS.plans.split(",") if n] if FLAGS.plans else ([] if FLAGS.table else list(PLANS))
    unknown = [n for n in names if n not in PLANS]
    if unknown:
        raise SystemExit(f"unknown plan(s) {unknown}; plans: {list(PLANS)}")
    if FLAGS.recost:  # the loop-aware counts and the roofline again, from the kept HLO (launch/hlo_cost.py)
        for n in PLANS:
            path, hlo = os.path.join(out, f"{n}.json"), os.path.join(out, f"{n}.hlo.txt.gz")
            if os.path.exists(path) and os.path.exists(hlo):
                with open(path) as fh:
                    r = json.load(fh)
                if "error" not in r:
                    add_model_flops(r, build_config(PLANS[n]))
                    add_hlo_costs(r, hlo)
                    r["roofline"] = roofline(r, r["topology"].split(":")[0])
                    with open(path, "w") as fh:
                        json.dump(r, fh, indent=2, default=str)
                    print(f"{n}: recosted", flush=True)
    for n in names:
        path = os.path.join(out, f"{n}.json")
        if os.path.exists(path) and not FLAGS.force:
            print(f"{n}: cached ({path})", flush=True)
            continue
        print(f"{n}: compiling ({PLANS[n].topology}) ...", flush=True)
        t0 = time.perf_counter()
        try:
            r = run_plan(PLANS[n])
        except Exception as e:  # noqa: BLE001 - recorded: e.g. the program does not fit HBM
            traceback.print_exc()
            r = dict(plan=n, error=f"{type(e).__name__}: {e}".replace("\n", " ")[:2000],
                     wall_s=round(time.perf_counter() - t0, 1), commit=_commit(),
                     date=datetime.datetime.utcnow().isoformat(" ", "seconds"))
        with open(path + ".tmp", "w") as fh:
            json.dump(r, fh, indent=2, default=str)
        os.replace(path + ".tmp", path)
        print(f"{n}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    t = table(out)
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(t)
    print(t)
    return 0


def main():
    flags.DEFINE_string("plans", "", f"Comma-separated plan names (default: all). Plans: {', '.join(PLANS)}")
    flags.DEFINE_string("out", "benchmarks/aot_plans", "Folder of the per-plan JSON reports and table.md.")
    flags.DEFINE_bool("force", False, "Compile plans that already have a report.")
    flags.DEFINE_bool("hlo", True, "Also keep each plan's compiled HLO text (<plan>.hlo.txt.gz).")
    flags.DEFINE_bool("memory_report", True, "Also keep XLA's memory-usage report of each plan (<plan>.memory.txt: "
                      "the largest HBM chunks and the shapes that fill them).")
    flags.DEFINE_bool("recost", False, "Recount the HLO costs and the roofline of finished plans from their kept HLO.")
    flags.DEFINE_bool("table", False, "Only write the table from the existing reports.")
    app.run(_main)


if __name__ == "__main__":
    sys.exit(main())

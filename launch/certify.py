r"""A reproducibility certificate: `python -m launch.certify --config=configs/x.py --workdir=DIR`.

Runs the config's first K steps (`--steps`, default the whole run) several ways, each a subprocess
of `launch.train` in DIR/runs/<variant>, and writes DIR/certificate.json, DIR/certificate.md and
DIR/loss_curves.png (the overlaid per-step losses):

  (a) scratch_1, scratch_2   twice from scratch: per-step losses and the sha256 of params +
                             optimizer state equal bit for bit
  (b) kills                  --kills=N kill -9 (during a held async checkpoint write, at every
                             stage boundary, then at random steps; run in step order), each followed
                             by a resume: final hash equal to (a), every checkpoint step of (a)
                             present and verified
  (c) sigterm                SIGTERM at a random step, then resume: final hash equal to (a)
  (d) mesh_<spec>            --meshes=data=1,fsdp=2 (same device count): max abs param diff to (a)
                             stated (pass: <= 1e-5)
  (e) processes_2            --processes=1,2: needs launch.train --num_processes; otherwise recorded
                             as "skipped: needs multi-process support"
  (f) the sha256 of every step's batch (OMNI_JAX_RECORD_BATCH_HASHES), equal in every variant.

The runs are launched with --config.evaluate.at_end=False (the certificate is about training).
scratch_1 fills jax's persistent compilation cache (DIR/compile_cache) and the later runs load the
executables they share with it (the restarts of (b) and (c) above all; not the multi-process runs)
instead of recompiling: the certificate is about the run (state, data, resume), not about XLA
compiling the same program twice the same way; `--nocompile_cache` compiles every run on its own.
A workdir that already holds runs is refused (they would resume instead of starting from scratch)
unless `--resume`: then the variants an interrupted certify finished (DIR/progress.json, same config
and steps) are read back and the rest run from scratch.

The certificate records the versions of jax, jaxlib, flax, optax, orbax, grain, numpy and python,
the platform, the CPU (model and ISA extensions: XLA:CPU compiles for the host), XLA_FLAGS, the
config hash, the git commit and every hash, so another machine can compare:
`python -m launch.certify --compare A/certificate.json B/certificate.json` names what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from launch import flag_errors

from omni_jax import cpu_simulation

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAM_TOL = 1e-5
VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


class CertifyError(ValueError):
    pass


# ----------------------------------------------------------------- environment and inputs

def environment(run_env: dict | None = None) -> dict:
    """Versions, platform and git state; XLA_FLAGS and PJRT_NPROC as the runs got them (`run_env`,
    the Runner's environment), else as this process has them."""
    from importlib import metadata

    versions = {}
    for p in VERSIONED:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    versions["python"] = platform.python_version()
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        commit, dirty = None, None
    return {"versions": versions, "platform": f"{platform.system()} {platform.machine()}", "cpu": cpu_description(),
            "python_platform": platform.platform(), "xla_flags": (run_env or os.environ).get("XLA_FLAGS", ""),
            "pjrt_nproc": (run_env or os.environ).get("PJRT_NPROC", ""),
            "jax_platforms": os.environ.get("JAX_PLATFORMS", ""), "git_commit": commit, "git_dirty": dirty}


# the ISA extensions XLA:CPU's code generator may use (LLVM targets the host's CPU)
_ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
        "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "sve", "sve2")


def cpu_description(cpuinfo: str | None = None) -> str:
    """The host CPU as /proc/cpuinfo names it (vendor, model name, family / model, cache) and its ISA
    extensions from `_ISA`: XLA:CPU compiles for the host, so two hosts with the same versions and
    flags can still round fp32 differently (README "Reproducibility", what varies across platforms)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return platform.processor() or platform.machine()
    first = cpuinfo.split("\n\n")[0]
    fields = {}
    for line in first.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    name = fields.get("model name") or fields.get("cpu part") or platform.processor() or platform.machine()
    ident = ", ".join(f"{k} {fields[k]}" for k in ("vendor_id", "cpu family", "model", "cache size") if fields.get(k))
    isa = " ".join(x for x in _ISA if x in flags) or "no listed ISA extension"
    return f"{name} ({ident}; {isa})" if ident else f"{name} ({isa})"


def check_schedule(kills: int, steps: int) -> None:
    """A kill needs a step to land on and a step to resume into: at most steps - 1 kills."""
    if kills < 0:
        raise CertifyError(f"--kills={kills}: the number of kills cannot be negative")
    if kills > max(steps - 1, 0):
        raise CertifyError(f"--kills={kills} is a kill schedule longer than the run: {steps} steps leave room for "
                           f"at most {max(steps - 1, 0)} kills (one per step boundary before the last). "
                           f"Lower --kills or raise --steps.")


def check_workdir(workdir: str, cfg_hash: str) -> None:
    """Refuses a workdir holding the certificate of another config (its runs would be reused)."""
    path = os.path.join(workdir, "certificate.json")
    if os.path.exists(path):
        with open(path) as f:
            other = json.load(f)
        if other.get("config_hash") != cfg_hash:
            raise CertifyError(f"{workdir} holds a certificate of another config (config_hash "
                               f"{other.get('config_hash')} from {other.get('config_path')}, this one {cfg_hash}): "
                               f"use a fresh --workdir")


def previous_variants(workdir: str, cfg_hash: str, steps: int, resume: bool) -> dict:
    """The variants an interrupted certify of this config finished (its progress.json), for --resume.

    Without --resume a workdir that already holds runs is refused: its runs would resume from
    their checkpoints instead of starting from scratch, and certify nothing."""
    runs = os.path.join(workdir, "runs")
    if not resume:
        if os.path.isdir(runs) and os.listdir(runs):
            raise CertifyError(f"{workdir} already holds the runs of an earlier certify: pass --resume to reuse "
                               f"the variants it finished (same config), or use a fresh --workdir")
        return {}
    path = os.path.join(workdir, "progress.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        prev = json.load(f)
    if prev.get("config_hash") != cfg_hash or prev.get("steps") != steps:
        raise CertifyError(f"--resume: {path} is of another config or step count (config_hash "
                           f"{prev.get('config_hash')}, {prev.get('steps')} steps; this one {cfg_hash}, {steps} steps): "
                           f"use a fresh --workdir")
    return {k: v for k, v in prev["variants"].items() if os.path.isdir(os.path.join(runs, k))}


def parse_mesh(spec: str) -> dict[str, int]:
    out = {}
    for part in filter(None, spec.split(",")):
        if "=" not in part:
            raise CertifyError(f"--meshes entry {spec!r}: write axis=size pairs separated by commas, e.g. data=1,fsdp=2")
        k, v = part.split("=", 1)
        out[k.strip()] = int(v)
    return out


# ----------------------------------------------------------------- running launch.train

class Runner:
    """Starts `launch.train` subprocesses for one config with fixed overrides."""

    def __init__(self, config_arg: str, overrides: list[str], devices: int, timeout_s: float,
                 compile_cache: str | None = None):
        self.config_arg, self.overrides, self.devices, self.timeout_s = config_arg, overrides, devices, timeout_s
        self.compile_cache = compile_cache

    def env(self, devices: int | None = None, extra: dict | None = None, cache: bool = False) -> dict:
        env = dict(os.environ)
        env["XLA_FLAGS"] = cpu_simulation.set_devices(env.get("XLA_FLAGS", ""), devices or self.devices)
        # every run gets the same CPU thread pool, sized for all the certificate's devices (the
        # pipeline's data 1 x fsdp 2 run hung without it: omni_jax/cpu_simulation.py), and the
        # raised collective timeouts (the runner's own timeout bounds every run)
        cpu_simulation.apply(env, devices=self.devices)
        env["OMNI_JAX_RECORD_BATCH_HASHES"] = "1"
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        if cache and self.compile_cache:  # jax's persistent compilation cache (the same executables)
            env["JAX_COMPILATION_CACHE_DIR"] = self.compile_cache
        env.update(extra or {})
        return env

    def start(self, workdir: str, more: list[str] = (), env_extra: dict | None = None, devices: int | None = None,
              cache: bool = False):
        cmd = [sys.executable, "-m", "launch.train", f"--config={self.config_arg}", f"--workdir={workdir}",
               *self.overrides, *more]
        os.makedirs(workdir, exist_ok=True)
        log = open(os.path.join(workdir, "train.log"), "a")
        return subprocess.Popen(cmd, cwd=REPO, env=self.env(devices, env_extra, cache), stdout=log,
                                stderr=subprocess.STDOUT)

    def finish(self, proc, workdir: str, ok=(0,)) -> int:
        try:
            rc = proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise CertifyError(f"launch.train in {workdir} did not finish within {self.timeout_s:.0f}s "
                               f"(see {workdir}/train.log)") from None
        if rc not in ok:
            raise CertifyError(f"launch.train in {workdir} exited with {rc} (see {workdir}/train.log)")
        return rc

    def run(self, workdir: str, more: list[str] = (), devices: int | None = None, cache: bool = False) -> None:
        self.finish(self.start(workdir, more, devices=devices, cache=cache), workdir)


def _wait_for(cond, proc, what: str, timeout_s: float) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise CertifyError(f"launch.train ended (rc {proc.returncode}) before {what}")
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            proc.wait()
            raise CertifyError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.05)


def _batch_lines(workdir: str) -> list[int]:
    """Steps whose batch the run has taken, in order (batch_hashes.0.jsonl is append-only)."""
    path = os.path.join(workdir, "batch_hashes.0.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(line)["step"] for line in open(path).read().splitlines() if line.strip()]


def _started_step(workdir: str, since: int) -> int:
    """The last step this process (whose lines start at index `since`) took a batch for; 0 if none."""
    return max(_batch_lines(workdir)[since:], default=0)


def _latest_checkpoint(workdir: str) -> int:
    d = os.path.join(workdir, "checkpoints")
    return max((int(n) for n in os.listdir(d) if n.isdigit()), default=0) if os.path.isdir(d) else 0


# ----------------------------------------------------------------- reading a finished run

def global_batch_hashes(workdir: str) -> dict[int, str]:
    """{step: sha256 of the global batch}: the row hashes of every process's batch_hashes.<i>.jsonl
    (the last line of a step per process counts), joined in global row order. A row fed by two
    processes (tensor / context spanning them) must hash the same in both."""
    import glob

    rows: dict[int, dict[int, str]] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "batch_hashes.*.jsonl"))):
        per_step: dict[int, dict] = {}
        for line in open(path).read().splitlines():
            if line.strip():
                r = json.loads(line)
                per_step[int(r["step"])] = r["rows"]
        for step, rs in per_step.items():
            for row, h in rs.items():
                prev = rows.setdefault(step, {}).setdefault(int(row), h)
                if prev != h:
                    raise CertifyError(f"{workdir}: step {step} row {row} was fed differently by two processes")
    return {step: hashlib.sha256("".join(rs[k] for k in sorted(rs)).encode()).hexdigest()
            for step, rs in rows.items()}


def read_run(workdir: str, steps: int) -> dict:
    """Per-step losses, per-step batch hashes, checkpoint steps (each verified) and the final hashes."""
    import jax

    from omni_jax.train.checkpoint import Checkpointer
    from omni_jax.train.integrity import tree_hash

    losses: dict[int, float] = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")).read().splitlines():
        r = json.loads(line)
        if "loss" in r:
            losses[int(r["step"])] = r["loss"]
    batches = global_batch_hashes(workdir)
    ck = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        ckpt_steps = sorted(ck.all_steps())
        meta = ck.read_meta(steps)
        hashes = meta["hashes"]
        params = _restore_numpy(ck, steps)["params"]
    finally:
        ck.close()
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    return {"losses": [losses.get(s) for s in range(1, steps + 1)],
            "batch_hashes": [batches.get(s) for s in range(1, steps + 1)],
            "checkpoint_steps": ckpt_steps,
            "final_hash": tree_hash(hashes), "params_hash": tree_hash(hashes, ("params",)),
            "_params": flat}


def _restore_numpy(ck, step: int) -> Any:
    """The saved state as numpy arrays on the host, whatever mesh or device count wrote it."""
    import jax
    import orbax.checkpoint as ocp

    md = ck._mgr.item_metadata(step)["state"]
    tree = getattr(md, "tree", md)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ocp.PyTreeCheckpointer().restore(ck.directory / str(step) / "state",
                                            args=ocp.args.PyTreeRestore(restore_args=restore_args))


def _bits(x) -> str:
    return np.asarray(x, np.float64).tobytes().hex() if x is not None else "none"


# ----------------------------------------------------------------- the certificate

def certify(config_arg: str, config, workdir: str, *, steps: int | None = None, kills: int = 3,
            meshes: list[str] = (), processes: list[int] = (1,), seed: int = 0, devices: int = 2,
            timeout_s: float = 600.0, compile_cache: bool = True, resume: bool = False) -> dict:
    from omni_jax.workdir import config_hash

    total = int(sum(config.stages[s].steps for s in config.stage_order))
    overrides = ["--config.train.log_every=1", "--config.train.progress_bar=False"]
    if config.get("evaluate", None) is not None and config.evaluate.get("at_end", False):
        overrides.append("--config.evaluate.at_end=False")  # the certificate is about training
    if steps and steps != total:  # the first K steps: configs whose stages read train.steps
        import copy

        config = copy.deepcopy(config)  # keeps the stages' references to train.steps
        config.train.steps = int(steps)
        raise_if = int(sum(config.stages[s].steps for s in config.stage_order))
        if raise_if != steps:
            raise CertifyError(f"--steps={steps}: the stages of this config do not read config.train.steps "
                               f"(they sum to {raise_if}); certify its whole run ({total} steps) or write a "
                               f"config with shorter stages")
        overrides.append(f"--config.train.steps={int(steps)}")
    steps = int(steps or total)
    check_schedule(kills, steps)
    cfg_hash = config_hash(config)
    check_workdir(workdir, cfg_hash)
    finished = previous_variants(workdir, cfg_hash, steps, resume)
    os.makedirs(workdir, exist_ok=True)
    rnd = random.Random(seed)
    # scratch_1 fills jax's persistent compilation cache; every later run loads the executables it
    # needs from it (the many restarts of (b) above all) instead of recompiling every stage
    runner = Runner(config_arg, overrides, devices, timeout_s,
                    os.path.join(workdir, "compile_cache") if compile_cache else None)
    runs = os.path.join(workdir, "runs")
    variants: dict[str, dict] = {}
    raw: dict[str, dict] = {}
    t_start = time.monotonic()

    def record(name, wd, **info):
        raw[name] = read_run(wd, steps)
        variants[name] = dict({k: v for k, v in raw[name].items() if not k.startswith("_")}, **info,
                              wall_s=round(time.monotonic() - t_variant, 1))
        with open(os.path.join(workdir, "progress.json"), "w") as f:  # what is known so far
            json.dump({"config_path": config_arg, "config_hash": cfg_hash, "steps": steps, "variants": variants,
                       "elapsed_s": round(time.monotonic() - t_start, 1)}, f, indent=1, sort_keys=True)

    def reuse(name) -> bool:
        """--resume: a variant the interrupted certify finished is read back, not run again; an
        unfinished one starts from scratch (its partial run is removed)."""
        wd = os.path.join(runs, name)
        if name in finished:
            raw[name] = read_run(wd, steps)
            variants[name] = finished[name]
            return True
        if os.path.exists(wd):
            shutil.rmtree(wd)
        return False

    for name in ("scratch_1", "scratch_2"):
        t_variant = time.monotonic()
        wd = os.path.join(runs, name)
        if not reuse(name):
            runner.run(wd, cache=True)
            record(name, wd)
    ref = raw["scratch_1"]

    # (b) kill -9 schedule: a held async save, the stage boundary, then random steps
    ckpt_steps = [s for s in ref["checkpoint_steps"] if s < steps] or [steps]
    boundaries = [int(b) for b in np.cumsum([config.stages[s].steps for s in config.stage_order])]
    schedule = []
    if kills:
        schedule.append(("held_save", ckpt_steps[0]))
    for b in boundaries:  # every stage boundary (a stage end is always saved), held mid-write
        if len(schedule) < kills and b <= steps and ("held_save", b) not in schedule:
            schedule.append(("held_save", b))
    while len(schedule) < kills:
        schedule.append(("step", rnd.randint(1, steps - 1)))
    # in the order of the run (a kill at step s before the held save of step s), so every kill
    # lands where it was meant to: after the resume point of the previous one
    schedule.sort(key=lambda e: (e[1], e[0] == "held_save"))
    t_variant = time.monotonic()
    wd = os.path.join(runs, "kills")
    if not reuse("kills"):
        events = []
        for kind, at in schedule:
            gate = os.path.join(workdir, "gate")
            os.makedirs(gate, exist_ok=True)
            for f in ("writing", "release"):
                if os.path.exists(os.path.join(gate, f)):
                    os.remove(os.path.join(gate, f))
            resumed_from = _latest_checkpoint(wd)
            if at <= resumed_from:  # that moment has passed for good: the next step after the resume point
                kind, at = "step", min(resumed_from + 1, steps)
            since = len(_batch_lines(wd))
            env_extra = {"OMNI_JAX_TEST_HOLD_SAVE": f"{at}:{gate}"} if kind == "held_save" else {}
            proc = runner.start(wd, env_extra=env_extra, cache=True)
            if kind == "held_save":
                _wait_for(lambda: os.path.exists(os.path.join(gate, "writing")), proc, f"the held save of step {at}", timeout_s)
            else:
                _wait_for(lambda: _started_step(wd, since) >= at, proc, f"step {at}", timeout_s)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            events.append({"kind": kind, "at_step": at, "resumed_from": resumed_from, "batch_taken_at_kill": _started_step(wd, since),
                           "stage_boundary": at in boundaries})
        runner.run(wd, cache=True)  # the final resume
        record("kills", wd, events=events)

    # (c) SIGTERM then resume
    t_variant = time.monotonic()
    wd = os.path.join(runs, "sigterm")
    at = rnd.randint(1, steps - 1) if steps > 1 else 1
    if not reuse("sigterm"):
        proc = runner.start(wd, cache=True)
        _wait_for(lambda: _started_step(wd, 0) >= at, proc, f"step {at}", timeout_s)
        proc.send_signal(signal.SIGTERM)
        runner.finish(proc, wd)
        stopped = _latest_checkpoint(wd)
        runner.run(wd, cache=True)
        record("sigterm", wd, events=[{"kind": "sigterm", "at_step": at, "stopped_at": stopped}])

    # (d) other meshes of the same device count
    for spec in meshes:
        mesh = parse_mesh(spec)
        name = "mesh_" + "_".join(f"{k}{v}" for k, v in mesh.items())
        t_variant = time.monotonic()
        wd = os.path.join(runs, name)
        if not reuse(name):
            runner.run(wd, [f"--config.mesh.{k}={v}" for k, v in mesh.items()], cache=True)
            record(name, wd, mesh=mesh)

    # (e) other process counts
    skipped = {}
    for n in processes:
        if n == 1:
            continue
        if "num_processes" not in open(os.path.join(REPO, "launch", "train.py")).read():
            skipped[f"processes_{n}"] = "skipped: needs multi-process support (launch.train has no --num_processes)"
            continue
        if devices % n:
            raise CertifyError(f"--processes={n} does not divide the {devices} devices")
        t_variant = time.monotonic()
        wd = os.path.join(runs, f"processes_{n}")
        if reuse(f"processes_{n}"):
            continue
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [runner.start(wd if i == 0 else wd, [f"--coordinator=127.0.0.1:{port}", f"--num_processes={n}",
                                                     f"--process_id={i}"], devices=devices // n) for i in range(n)]
        for p in procs:
            runner.finish(p, wd)
        record(f"processes_{n}", wd, processes=n)

    cert = assemble(config_arg, cfg_hash, steps, variants, raw, skipped, runner.env())
    cert["wall_s"] = round(time.monotonic() - t_start, 1)
    write(workdir, cert)
    return cert


def _max_diff(a: dict, b: dict) -> float:
    return max((float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a), default=0.0)


def assemble(config_arg, cfg_hash, steps, variants, raw, skipped, run_env: dict | None = None) -> dict:
    ref = variants["scratch_1"]
    checks = {}
    same = lambda v: ([_bits(x) for x in v["losses"]] == [_bits(x) for x in ref["losses"]]
                      and v["final_hash"] == ref["final_hash"])
    checks["a_scratch_bitwise"] = same(variants["scratch_2"])
    checks["b_kills_bitwise"] = same(variants["kills"])
    checks["b_no_checkpoint_lost"] = set(ref["checkpoint_steps"]) <= set(variants["kills"]["checkpoint_steps"])
    checks["c_sigterm_bitwise"] = same(variants["sigterm"])
    for name, v in variants.items():
        if name.startswith("mesh_") or name.startswith("processes_"):
            v["max_abs_param_diff"] = _max_diff(raw[name]["_params"], raw["scratch_1"]["_params"])
            checks[f"d_{name}_within_{PARAM_TOL:g}" if name.startswith("mesh_") else f"e_{name}_within_{PARAM_TOL:g}"] = (
                v["max_abs_param_diff"] <= PARAM_TOL)
    checks["f_batches_equal"] = all(v["batch_hashes"] == ref["batch_hashes"] and None not in v["batch_hashes"]
                                    for v in variants.values())
    return {"kind": "omni_jax reproducibility certificate", "config_path": config_arg, "config_hash": cfg_hash,
            "steps": steps, "environment": environment(run_env), "variants": variants, "skipped": skipped,
            "checks": checks, "passed": all(checks.values())}


def write(workdir: str, cert: dict) -> None:
    with open(os.path.join(workdir, "certificate.json"), "w") as f:
        json.dump(cert, f, indent=1, sort_keys=True)
    with open(os.path.join(workdir, "certificate.md"), "w") as f:
        f.write(markdown(cert))
    plot(cert, os.path.join(workdir, "loss_curves.png"))


def markdown(cert: dict) -> str:
    env = cert["environment"]
    lines = [f"# Reproducibility certificate: {cert['config_path']}", "",
             f"config hash `{cert['config_hash']}`, {cert['steps']} steps, git `{env['git_commit']}`"
             f"{' (dirty)' if env['git_dirty'] else ''}, {env['platform']}"
             + (f", CPU {env['cpu']}" if env.get("cpu") else "") + f", XLA_FLAGS `{env['xla_flags']}`"
             + (f", PJRT_NPROC {env['pjrt_nproc']}" if env.get("pjrt_nproc") else ""), "",
             "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), "",
             *([f"wall time {cert['wall_s']:.0f} s"
                + (" (per variant: " + ", ".join(f"{n} {v['wall_s']:.0f} s" for n, v in cert["variants"].items()
                                                 if "wall_s" in v) + ")"), ""] if "wall_s" in cert else []),
             f"**{'PASSED' if cert['passed'] else 'FAILED'}**", "", "| check | result |", "|---|---|"]
    lines += [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in cert["checks"].items()]
    lines += [f"| {k} | {v} |" for k, v in cert["skipped"].items()]
    lines += ["", "| variant | final loss | sha256(params + optimizer) | max abs param diff | events |", "|---|---|---|---|---|"]
    for name, v in cert["variants"].items():
        lines.append(f"| {name} | {v['losses'][-1]!r} | `{v['final_hash'][:16]}` | {v.get('max_abs_param_diff', '')} | "
                     f"{v.get('events', '')} |")
    lines += ["", "per-step batch sha256 (scratch_1): " + ", ".join(h[:12] if h else "-" for h in
                                                                  cert["variants"]["scratch_1"]["batch_hashes"]), ""]
    return "\n".join(lines)


def plot(cert: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, v) in enumerate(cert["variants"].items()):
        ax.plot(range(1, len(v["losses"]) + 1), v["losses"], marker="o", markersize=3, linewidth=1,
                linestyle=["-", "--", ":", "-."][i % 4], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{cert['config_path']} ({'passed' if cert['passed'] else 'FAILED'})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------- comparing two certificates

def compare(a: dict, b: dict) -> list[str]:
    """What differs between two certificates (empty: the same run, bit for bit)."""
    for name, c in (("A", a), ("B", b)):
        if c.get("kind") != "omni_jax reproducibility certificate":
            raise CertifyError(f"certificate {name} is not an omni_jax reproducibility certificate")
    if a["config_hash"] != b["config_hash"] or a["steps"] != b["steps"]:
        fields = [f for f in ("config_path", "config_hash", "steps") if a.get(f) != b.get(f)]
        raise CertifyError("the certificates are of different runs, so their hashes cannot be compared: "
                           + "; ".join(f"{f}: {a.get(f)!r} vs {b.get(f)!r}" for f in fields))
    out = []
    for k in sorted(set(a["environment"]["versions"]) | set(b["environment"]["versions"])):
        va, vb = a["environment"]["versions"].get(k), b["environment"]["versions"].get(k)
        if va != vb:
            out.append(f"version of {k}: {va} vs {vb}")
    for k in ("platform", "cpu", "xla_flags", "pjrt_nproc", "git_commit"):
        if a["environment"].get(k) != b["environment"].get(k):
            va, vb = (c["environment"].get(k, "not recorded (an older certificate)") for c in (a, b))
            out.append(f"{k}: {va!r} vs {vb!r}")
    ra, rb = a["variants"]["scratch_1"], b["variants"]["scratch_1"]
    if ra["final_hash"] != rb["final_hash"]:
        out.append(f"final params + optimizer hash: {ra['final_hash'][:16]} vs {rb['final_hash'][:16]}")
    diff_loss = [i + 1 for i, (x, y) in enumerate(zip(ra["losses"], rb["losses"])) if _bits(x) != _bits(y)]
    if diff_loss:
        out.append(f"per-step loss differs from step {diff_loss[0]} ({len(diff_loss)} steps)")
    diff_batch = [i + 1 for i, (x, y) in enumerate(zip(ra["batch_hashes"], rb["batch_hashes"])) if x != y]
    if diff_batch:
        out.append(f"batch hash differs from step {diff_batch[0]} ({len(diff_batch)} steps): the data order differs")
    for k in sorted(set(a["checks"]) | set(b["checks"])):
        if a["checks"].get(k) != b["checks"].get(k):
            out.append(f"check {k}: {a['checks'].get(k)} vs {b['checks'].get(k)}")
    return out


# ----------------------------------------------------------------- command line

def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for the runs and the certificate.")
    flags.DEFINE_integer("steps", None, "Steps to certify (default: the whole run).")
    flags.DEFINE_integer("kills", 3, "kill -9 events, each followed by a resume.")
    flags.DEFINE_multi_string("meshes", [], "Other meshes of the same device count, e.g. data=1,fsdp=2.")
    flags.DEFINE_list("processes", ["1"], "Process counts, e.g. 1,2.")
    flags.DEFINE_integer("devices", 2, "Host devices of every run (XLA_FLAGS device count).")
    flags.DEFINE_integer("seed", 0, "Seed of the kill schedule.")
    flags.DEFINE_bool("resume", False, "Reuse the variants an interrupted certify in --workdir finished.")
    flags.DEFINE_bool("compile_cache", True, "Later runs load scratch_1's executables (jax's persistent cache).")
    flags.DEFINE_multi_string("compare", None, "Two certificate.json files: say what differs.")


def _config_arg() -> str:
    """The --config value as given (path and its :arg), to pass on to launch.train."""
    args = sys.argv[1:]
    for i, a in enumerate(args):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
    raise app.UsageError("--config is required")


def _main(argv):
    if FLAGS.compare:
        if len(FLAGS.compare) != 2 and len(argv) != 2:
            raise app.UsageError("--compare takes two certificates: --compare A --compare B (or --compare A B)")
        paths = FLAGS.compare if len(FLAGS.compare) == 2 else [FLAGS.compare[0], argv[1]]
        a, b = (json.load(open(p)) for p in paths)
        try:
            diffs = compare(a, b)
        except CertifyError as e:
            print(str(e))
            return 2
        print("\n".join(diffs) if diffs else "the certificates agree: same hashes, versions and platform")
        return 1 if diffs else 0
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("--config and --workdir are required (or --compare A B)")
    try:
        cert = certify(_config_arg(), FLAGS.config, FLAGS.workdir, steps=FLAGS.steps,
                       kills=FLAGS.kills, meshes=FLAGS.meshes, processes=[int(p) for p in FLAGS.processes],
                       seed=FLAGS.seed, devices=FLAGS.devices, compile_cache=FLAGS.compile_cache,
                       resume=FLAGS.resume)
    except CertifyError as e:
        raise app.UsageError(str(e)) from None
    print(markdown(cert))
    return 0 if cert["passed"] else 1


def main():
    _define_flags()
    app.run(_main, flags_parser=flag_errors.parse_flags)


if __name__ == "__main__":
    sys.exit(main())

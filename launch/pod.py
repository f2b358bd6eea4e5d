r"""Launch `launch.train` on every host of a pod: prints (--dry_run) or runs the exact command.

  # a TPU VM pod slice: the same command on every worker over ssh (jax finds its peers itself)
  python -m launch.pod --target=tpu-vm --name=my-v5p-64 --zone=us-east5-a \
      --config=configs/backbone_7b.py --workdir=gs://my-bucket/runs/b7 --dry_run

  # GKE: a JobSet manifest (one replicated job per TPU slice, or per GPU node group), applied with kubectl
  python -m launch.pod --target=gke --accelerator=tpu --num_slices=2 --num_nodes=4 \
      --tpu_accelerator=tpu-v5p-slice --tpu_topology=2x2x4 --image=IMAGE \
      --config=configs/backbone_7b.py --workdir=gs://my-bucket/runs/b7 --dry_run

  # SLURM GPU nodes: an sbatch script, one process per node (or per GPU with --per_gpu)
  python -m launch.pod --target=slurm --num_nodes=4 --gpus_per_node=8 \
      --config=configs/backbone_7b.py --workdir=/shared/runs/b7 --dry_run

Process discovery: TPU VMs and GKE TPU slices are detected by `jax.distributed.initialize()`
from the TPU environment, so their command has no distributed flags (multi-slice GKE adds the
MEGASCALE_* variables xpk sets). GPU pods are not: the GKE GPU manifest and the SLURM script
pass `--coordinator=HOST:PORT --num_processes=N --process_id=I` to launch.train, with the
coordinator on the first pod / node and the process id from the JobSet indices / SLURM_PROCID.
`--set=train.steps=10` becomes `--config.train.steps=10` on every host. Without --dry_run the
command runs (gcloud ssh; kubectl apply -f <manifest>; sbatch <script>) and its exit code is ours.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
TARGETS = ("tpu-vm", "gke", "slurm")
GKE_WORKDIR = "/app"  # where the image has the repository


def train_args(config: str, workdir: str, sets: list[str] = ()) -> list[str]:
    """The launch.train arguments every process gets (quoted for a shell)."""
    args = ["python", "-m", "launch.train", f"--config={config}", f"--workdir={workdir}"]
    for s in sets:
        if "=" not in s:
            raise ValueError(f"--set={s!r}: expected KEY=VALUE, e.g. --set=train.steps=10")
        args.append(f"--config.{s}")
    return [shlex.quote(a) for a in args]


def check_workdir(workdir: str, target: str, allow_local: bool) -> None:
    """Every host writes the same run: on TPU VMs and GKE the workdir must be an object store."""
    if target in ("tpu-vm", "gke") and "://" not in workdir and not allow_local:
        raise ValueError(
            f"--workdir={workdir!r} is a local path, which each host of a {target} pod would create on its own "
            "disk: use a bucket every host can reach, e.g. --workdir=gs://BUCKET/runs/NAME (or pass "
            "--allow_local_workdir if the path is on a filesystem shared by every host).")


def tpu_vm_command(*, name: str, zone: str, project: str, repo_dir: str, train: list[str]) -> list[str]:
    """`gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...` (argv)."""
    remote = f"cd {repo_dir} && " + " ".join(train)
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, f"--zone={zone}"]
    if project:
        cmd.append(f"--project={project}")
    return cmd + ["--worker=all", f"--command={remote}"]


def gke_manifest(*, name: str, image: str, accelerator: str, num_slices: int, num_nodes: int, train: list[str],
                 tpu_accelerator: str = "", tpu_topology: str = "", chips_per_node: int = 4, gpus_per_node: int = 8,
                 port: int = 8476, max_restarts: int = 3) -> str:
    """A JobSet (jobset.x-k8s.io/v1alpha2) with `num_slices` replicated jobs of `num_nodes` pods each.

    Every pod gets JOB_INDEX (slice / node group), JOB_COMPLETION_INDEX (pod within it), NUM_PROCESSES,
    PROCESS_ID (= JOB_INDEX * num_nodes + JOB_COMPLETION_INDEX) and COORDINATOR (the first pod's
    stable DNS name from the JobSet's headless service)."""
    import yaml

    if accelerator not in ("tpu", "gpu"):
        raise ValueError(f"--accelerator={accelerator!r}: expected tpu or gpu")
    if accelerator == "tpu" and not (tpu_accelerator and tpu_topology):
        raise ValueError("--accelerator=tpu needs --tpu_accelerator (the node pool's "
                         "cloud.google.com/gke-tpu-accelerator, e.g. tpu-v5p-slice) and --tpu_topology (e.g. 2x2x4)")
    n = num_slices * num_nodes

    def annotation(key):
        return {"valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{key}']"}}}

    env = [
        {"name": "JOBSET_NAME", **annotation("jobset.sigs.k8s.io/jobset-name")},
        {"name": "JOB_INDEX", **annotation("jobset.sigs.k8s.io/job-index")},
        {"name": "JOB_COMPLETION_INDEX", **annotation("batch.kubernetes.io/job-completion-index")},
        {"name": "NUM_PROCESSES", "value": str(n)},
        {"name": "COORDINATOR", "value": f"$(JOBSET_NAME)-slice-0-0.$(JOBSET_NAME):{port}"},
    ]
    shell = "export PROCESS_ID=$((JOB_INDEX * %d + JOB_COMPLETION_INDEX)) && cd %s && %s" % (
        num_nodes, GKE_WORKDIR, " ".join(train))
    if accelerator == "gpu":  # not auto-detected: explicit distributed flags
        shell += " --coordinator=$COORDINATOR --num_processes=$NUM_PROCESSES --process_id=$PROCESS_ID"
        limits = {"nvidia.com/gpu": gpus_per_node}
        selector = {}
    else:  # TPU: jax reads TPU_WORKER_HOSTNAMES / TPU_WORKER_ID (set by GKE); slices meet via MEGASCALE_*
        limits = {"google.com/tpu": chips_per_node}
        selector = {"cloud.google.com/gke-tpu-accelerator": tpu_accelerator,
                    "cloud.google.com/gke-tpu-topology": tpu_topology}
        if num_slices > 1:
            env += [{"name": "MEGASCALE_COORDINATOR_ADDRESS", "value": "$(JOBSET_NAME)-slice-0-0.$(JOBSET_NAME)"},
                    {"name": "MEGASCALE_NUM_SLICES", "value": str(num_slices)},
                    {"name": "MEGASCALE_SLICE_ID", "value": "$(JOB_INDEX)"}]
    container = {"name": "train", "image": image, "command": ["bash", "-c", shell], "env": env,
                 "ports": [{"containerPort": port}], "resources": {"limits": limits}}
    if accelerator == "tpu":
        container["securityContext"] = {"privileged": True}
        container["ports"] += [{"containerPort": 8471}, {"containerPort": 8080}]
    pod = {"restartPolicy": "Never", "containers": [container]}
    if selector:
        pod["nodeSelector"] = selector
    manifest = {
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": name, "annotations": {
            "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
        "spec": {
            "failurePolicy": {"maxRestarts": max_restarts},
            "network": {"enableDNSHostnames": True},
            "replicatedJobs": [{"name": "slice", "replicas": num_slices, "template": {"spec": {
                "parallelism": num_nodes, "completions": num_nodes, "completionMode": "Indexed",
                "backoffLimit": 0, "template": {"spec": pod}}}}],
        },
    }
    return yaml.safe_dump(manifest, sort_keys=False)


def slurm_script(*, name: str, num_nodes: int, gpus_per_node: int, per_gpu: bool, repo_dir: str, train: list[str],
                 port: int = 8476, time_limit: str = "", partition: str = "") -> str:
    """An sbatch script: one process per node (it drives all the node's GPUs) or, with per_gpu, one per GPU
    (each sees its own GPU through CUDA_VISIBLE_DEVICES=$SLURM_LOCALID)."""
    tasks = gpus_per_node if per_gpu else 1
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --nodes={num_nodes}",
             f"#SBATCH --ntasks-per-node={tasks}", f"#SBATCH --gpus-per-node={gpus_per_node}",
             "#SBATCH --exclusive", f"#SBATCH --output={name}-%j.out"]
    if time_limit:
        lines.append(f"#SBATCH --time={time_limit}")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    gpu = 'export CUDA_VISIBLE_DEVICES="$SLURM_LOCALID" && ' if per_gpu else ""
    lines += [
        "set -euo pipefail",
        f"# {num_nodes * tasks} processes: {num_nodes} node(s) x {tasks}; the coordinator is the first node",
        'COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' + f':{port}"',
        "export COORDINATOR",
        f"cd {repo_dir}",
        "srun --kill-on-bad-exit=1 bash -c '" + gpu + " ".join(train).replace("'", "'\\''")
        + ' --coordinator="$COORDINATOR" --num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID"' + "'",
    ]
    return "\n".join(lines) + "\n"


def _run(argv: list[str]) -> int:
    if shutil.which(argv[0]) is None:
        raise SystemExit(f"`{argv[0]}` is not on PATH: install it (or run with --dry_run to print the command).")
    print("+ " + " ".join(shlex.quote(a) for a in argv), flush=True)
    return subprocess.run(argv).returncode


def _write(path: str, text: str) -> str:
    with open(path, "w") as f:  # a local launcher file (manifest / sbatch script), never the workdir
        f.write(text)
    return path


def launch(target: str, *, dry_run: bool, **o) -> int:
    if target not in TARGETS:
        raise ValueError(f"--target={target!r}: expected one of {', '.join(TARGETS)}")
    check_workdir(o["workdir"], target, o.get("allow_local_workdir", False))
    train = train_args(o["config"], o["workdir"], o.get("sets", []))
    if target == "tpu-vm":
        if not o.get("zone"):
            raise ValueError("--target=tpu-vm needs --zone (the TPU VM's zone, e.g. us-east5-a)")
        argv = tpu_vm_command(name=o["name"], zone=o["zone"], project=o.get("project", ""),
                              repo_dir=o["repo_dir"], train=train)
        if dry_run:
            print(" ".join(shlex.quote(a) for a in argv))
            return 0
        return _run(argv)
    if target == "gke":
        if not o.get("image"):
            raise ValueError("--target=gke needs --image (a container image with this repository in /app)")
        text = gke_manifest(name=o["name"], image=o["image"], accelerator=o["accelerator"],
                            num_slices=o["num_slices"], num_nodes=o["num_nodes"], train=train,
                            tpu_accelerator=o.get("tpu_accelerator", ""), tpu_topology=o.get("tpu_topology", ""),
                            chips_per_node=o.get("chips_per_node", 4), gpus_per_node=o.get("gpus_per_node", 8),
                            port=o.get("port", 8476))
        if dry_run:
            print(text, end="")
            return 0
        return _run(["kubectl", "apply", "-f", _write(o.get("out") or f"{o['name']}.yaml", text)])
    text = slurm_script(name=o["name"], num_nodes=o["num_nodes"], gpus_per_node=o.get("gpus_per_node", 8),
                        per_gpu=o.get("per_gpu", False), repo_dir=o["repo_dir"], train=train,
                        port=o.get("port", 8476), time_limit=o.get("time", ""), partition=o.get("partition", ""))
    if dry_run:
        print(text, end="")
        return 0
    return _run(["sbatch", _write(o.get("out") or f"{o['name']}.sbatch", text)])


def _main(argv):
    del argv
    try:
        return launch(
            FLAGS.target, dry_run=FLAGS.dry_run, config=FLAGS.config, workdir=FLAGS.workdir, sets=FLAGS.set,
            name=FLAGS.name, zone=FLAGS.zone, project=FLAGS.project, repo_dir=FLAGS.repo_dir, image=FLAGS.image,
            accelerator=FLAGS.accelerator, num_slices=FLAGS.num_slices, num_nodes=FLAGS.num_nodes,
            tpu_accelerator=FLAGS.tpu_accelerator, tpu_topology=FLAGS.tpu_topology,
            chips_per_node=FLAGS.chips_per_node, gpus_per_node=FLAGS.gpus_per_node, per_gpu=FLAGS.per_gpu,
            port=FLAGS.port, time=FLAGS.time, partition=FLAGS.partition, out=FLAGS.out,
            allow_local_workdir=FLAGS.allow_local_workdir)
    except ValueError as e:
        raise app.UsageError(str(e)) from e


def _define_flags() -> None:
    """Defined when the command runs, so several launch modules can be imported together."""
    flags.DEFINE_enum("target", None, list(TARGETS), "Where to run.")
    flags.DEFINE_string("config", None, "Config file, as launch.train takes it (path relative to the repository).")
    flags.DEFINE_string("workdir", None, "The run's workdir, shared by every host (gs://... on TPU VMs and GKE).")
    flags.DEFINE_multi_string("set", [], "Config override for every host: --set=train.steps=10.")
    flags.DEFINE_bool("dry_run", False, "Print the command / manifest / script instead of running it.")
    flags.DEFINE_string("name", "omni-jax", "TPU VM name (tpu-vm), JobSet name (gke) or job name (slurm).")
    flags.DEFINE_string("zone", "", "tpu-vm: the TPU VM's zone.")
    flags.DEFINE_string("project", "", "tpu-vm: the GCP project (default: gcloud's).")
    flags.DEFINE_string("repo_dir", "~/omni_jax", "tpu-vm / slurm: the repository's directory on every host.")
    flags.DEFINE_string("image", "", "gke: container image with the repository in /app.")
    flags.DEFINE_enum("accelerator", "tpu", ["tpu", "gpu"], "gke: TPU slices or GPU nodes.")
    flags.DEFINE_integer("num_slices", 1, "gke: TPU slices (or GPU node groups), one replicated job each.")
    flags.DEFINE_integer("num_nodes", 1, "gke: hosts per slice; slurm: nodes.")
    flags.DEFINE_string("tpu_accelerator", "", "gke TPU: node selector, e.g. tpu-v5p-slice.")
    flags.DEFINE_string("tpu_topology", "", "gke TPU: slice topology, e.g. 2x2x4.")
    flags.DEFINE_integer("chips_per_node", 4, "gke TPU: google.com/tpu chips per host.")
    flags.DEFINE_integer("gpus_per_node", 8, "gke GPU / slurm: GPUs per node.")
    flags.DEFINE_bool("per_gpu", False, "slurm: one process per GPU instead of one per node.")
    flags.DEFINE_integer("port", 8476, "Coordinator port (GPU pods).")
    flags.DEFINE_string("time", "", "slurm: --time limit, e.g. 24:00:00.")
    flags.DEFINE_string("partition", "", "slurm: partition.")
    flags.DEFINE_string("out", "", "gke / slurm: where to write the manifest / script before applying it.")
    flags.DEFINE_bool("allow_local_workdir", False, "tpu-vm / gke: accept a workdir path on a shared filesystem.")
    flags.mark_flags_as_required(["target", "config", "workdir"])


def main():
    _define_flags()
    app.run(_main)


if __name__ == "__main__":
    sys.exit(main())

"""launch/pod.py: the exact TPU VM command, GKE JobSet and SLURM script it prints or runs."""

import os
import shlex
import subprocess
import sys

import pytest
import yaml

from launch.pod import gke_manifest, launch, slurm_script, train_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG, WD = "configs/backbone_7b.py", "gs://my-bucket/runs/b7"


def _pod(*args, path=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "launch.pod", f"--config={CFG}", f"--workdir={WD}", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_tpu_vm_dry_run_prints_the_gcloud_ssh_command_for_every_worker():
    p = _pod("--target=tpu-vm", "--name=my-v5p-64", "--zone=us-east5-a", "--set=train.steps=10", "--dry_run")
    assert p.returncode == 0, p.stderr
    argv = shlex.split(p.stdout)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5p-64"]
    assert "--zone=us-east5-a" in argv and "--worker=all" in argv
    remote = next(a for a in argv if a.startswith("--command="))[len("--command="):]
    assert remote == (f"cd ~/omni_jax && python -m launch.train --config={CFG} --workdir={WD} "
                      "--config.train.steps=10")
    assert "--coordinator" not in remote and "--process_id" not in remote  # TPU VMs are auto-detected


def test_without_dry_run_the_command_runs_and_a_missing_tool_is_named(tmp_path):
    log = tmp_path / "argv"
    fake = tmp_path / "gcloud"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\nexit 3\n")
    fake.chmod(0o755)
    p = _pod("--target=tpu-vm", "--zone=z", path=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert p.returncode == 3, p.stderr  # the command's exit code is ours
    assert log.read_text().splitlines()[:5] == ["compute", "tpus", "tpu-vm", "ssh", "omni-jax"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="`kubectl` is not on PATH.*--dry_run"):
        os.environ["PATH"], saved = str(empty), os.environ["PATH"]
        try:
            launch("gke", dry_run=False, config=CFG, workdir=WD, name="x", image="img", accelerator="gpu",
                   num_slices=1, num_nodes=2, out=str(tmp_path / "x.yaml"))
        finally:
            os.environ["PATH"] = saved


def _container(manifest):
    js = yaml.safe_load(manifest)
    rj = js["spec"]["replicatedJobs"][0]
    return js, rj, rj["template"]["spec"]["template"]["spec"]["containers"][0]


def test_gke_gpu_jobset_passes_coordinator_and_process_ids_from_the_jobset_indices():
    text = gke_manifest(name="b7", image="img:1", accelerator="gpu", num_slices=2, num_nodes=4, gpus_per_node=8,
                        train=train_args(CFG, WD))
    js, rj, c = _container(text)
    assert js["kind"] == "JobSet" and js["metadata"]["name"] == "b7"
    assert rj["replicas"] == 2 and rj["template"]["spec"]["parallelism"] == 4
    assert rj["template"]["spec"]["completionMode"] == "Indexed" and js["spec"]["network"]["enableDNSHostnames"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NUM_PROCESSES"]["value"] == "8"
    assert env["COORDINATOR"]["value"] == "$(JOBSET_NAME)-slice-0-0.$(JOBSET_NAME):8476"
    assert "job-index" in env["JOB_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "job-completion-index" in env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    shell = c["command"][2]
    assert "PROCESS_ID=$((JOB_INDEX * 4 + JOB_COMPLETION_INDEX))" in shell
    assert f"--workdir={WD}" in shell and f"--config={CFG}" in shell
    assert shell.endswith("--coordinator=$COORDINATOR --num_processes=$NUM_PROCESSES --process_id=$PROCESS_ID")
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 8}


def test_gke_tpu_multislice_jobset_relies_on_tpu_detection_and_sets_megascale():
    p = _pod("--target=gke", "--accelerator=tpu", "--num_slices=2", "--num_nodes=4", "--tpu_accelerator=tpu-v5p-slice",
             "--tpu_topology=2x2x4", "--image=img:1", "--dry_run")
    assert p.returncode == 0, p.stderr
    js, rj, c = _container(p.stdout)
    pod = rj["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "2x2x4"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MEGASCALE_NUM_SLICES"] == "2" and env["MEGASCALE_SLICE_ID"] == "$(JOB_INDEX)"
    assert env["NUM_PROCESSES"] == "8" and c["resources"]["limits"] == {"google.com/tpu": 4}
    assert "--coordinator" not in c["command"][2] and f"--workdir={WD}" in c["command"][2]
    with pytest.raises(ValueError, match="--tpu_accelerator"):
        gke_manifest(name="b7", image="i", accelerator="tpu", num_slices=1, num_nodes=1, train=[])


@pytest.mark.parametrize("per_gpu", [False, True])
def test_slurm_script_one_process_per_node_or_per_gpu(per_gpu, tmp_path):
    text = slurm_script(name="b7", num_nodes=4, gpus_per_node=8, per_gpu=per_gpu, repo_dir="/shared/omni_jax",
                        train=train_args(CFG, "/shared/runs/b7", ["train.steps=10"]), time_limit="24:00:00")
    assert "#SBATCH --nodes=4" in text and "#SBATCH --gpus-per-node=8" in text and "#SBATCH --time=24:00:00" in text
    assert f"#SBATCH --ntasks-per-node={8 if per_gpu else 1}" in text
    assert f"# {32 if per_gpu else 4} processes" in text
    assert 'COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):8476"' in text
    srun = text.strip().splitlines()[-1]
    assert srun.startswith("srun ") and "--workdir=/shared/runs/b7" in srun and "--config.train.steps=10" in srun
    assert '--num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID"' in srun
    assert ('CUDA_VISIBLE_DEVICES="$SLURM_LOCALID"' in srun) == per_gpu
    script = tmp_path / "b7.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid shell


def test_a_local_workdir_on_a_cloud_pod_is_refused_naming_the_fix():
    p = _pod("--target=tpu-vm", "--zone=z", "--dry_run", "--workdir=runs/b7")
    assert p.returncode != 0 and "gs://BUCKET/runs/NAME" in p.stderr and "--allow_local_workdir" in p.stderr
    with pytest.raises(ValueError, match="KEY=VALUE"):
        train_args(CFG, WD, ["train.steps"])

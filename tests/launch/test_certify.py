"""launch/certify.py: the small CI certificate of the tiny backbone (2 runs from scratch, 3 kill -9,
a SIGTERM, 2 meshes) passes bit for bit; --compare names what differs; bad input is refused with
a message naming the thing and the fix."""

import copy
import json
import os

import pytest

from configs import backbone_tiny
from launch import certify as cert_lib


def _variant(loss=1.5, final="f" * 64, batches=("a", "b")):
    return {"losses": [2.0, loss], "batch_hashes": list(batches), "checkpoint_steps": [1, 2], "final_hash": final,
            "params_hash": final}


def _cert(**over):
    c = {"kind": "omni_jax reproducibility certificate", "config_path": "configs/backbone_tiny.py:runlocal",
         "config_hash": "abc", "steps": 2, "environment": cert_lib.environment(),
         "variants": {"scratch_1": _variant(), "scratch_2": _variant()}, "skipped": {},
         "checks": {"a_scratch_bitwise": True}, "passed": True}
    c.update(over)
    return c


def test_compare_names_what_differs():
    a = _cert()
    assert cert_lib.compare(a, copy.deepcopy(a)) == []
    b = copy.deepcopy(a)
    b["environment"]["versions"]["jax"] = "0.0.1"
    b["environment"]["xla_flags"] = "--xla_cpu_enable_fast_math=true"
    b["environment"]["cpu"] = "Intel(R) Xeon(R) (vendor_id GenuineIntel, cpu family 6, model 143; avx2 amx_tile)"
    b["variants"]["scratch_1"] = _variant(loss=1.25, final="e" * 64, batches=("a", "c"))
    diffs = cert_lib.compare(a, b)
    text = "\n".join(diffs)
    assert "version of jax" in text and "0.0.1" in text
    assert "xla_flags" in text
    assert "cpu: " in text and "Xeon" in text
    assert "final params + optimizer hash" in text
    assert "per-step loss differs from step 2" in text
    assert "batch hash differs from step 2" in text and "data order" in text


XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
cache size\t: 107520 KB
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_fp16 amx_tile amx_bf16

processor\t: 1
model name\t: another core that is not read
"""


def test_the_cpu_is_recorded_and_an_older_certificate_without_it_is_named():
    """Two hosts with the same versions and flags can round differently (XLA:CPU compiles for the
    host): the certificate names the CPU, and --compare says so when the CPUs differ."""
    assert cert_lib.cpu_description(XEON) == (
        "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (vendor_id GenuineIntel, cpu family 6, model 143, "
        "cache size 107520 KB; sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_fp16 amx_tile amx_bf16)")
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\nCPU part\t: 0xd40\n"
    assert cert_lib.cpu_description(arm) == "0xd40 (asimd sve)"
    assert cert_lib.environment()["cpu"] == cert_lib.cpu_description()
    a = _cert()
    old = copy.deepcopy(a)
    del old["environment"]["cpu"]
    not_recorded = "'not recorded (an older certificate)'"
    assert cert_lib.compare(old, a) == [f"cpu: {not_recorded} vs {a['environment']['cpu']!r}"]
    assert "CPU " + a["environment"]["cpu"] in cert_lib.markdown(a)


def test_comparing_certificates_of_different_configs_names_the_fields():
    a, b = _cert(), _cert(config_hash="xyz", config_path="configs/other.py", steps=5)
    with pytest.raises(cert_lib.CertifyError, match=r"different runs.*config_path.*config_hash: 'abc' vs 'xyz'.*steps: 2 vs 5"):
        cert_lib.compare(a, b)
    with pytest.raises(cert_lib.CertifyError, match="certificate B is not an omni_jax reproducibility certificate"):
        cert_lib.compare(a, {"kind": "something else"})


def test_a_kill_schedule_longer_than_the_run_is_refused():
    cert_lib.check_schedule(5, 6)
    with pytest.raises(cert_lib.CertifyError, match=r"--kills=6 is a kill schedule longer than the run: 6 steps.*at most 5.*Lower --kills or raise --steps"):
        cert_lib.check_schedule(6, 6)
    with pytest.raises(cert_lib.CertifyError, match="--kills=7 is a kill schedule longer"):
        cert_lib.certify("configs/backbone_tiny.py:runlocal", backbone_tiny.get_config("runlocal"), "/nonexistent/x", kills=7)


def test_a_workdir_with_a_foreign_certificate_is_refused(tmp_path):
    with open(tmp_path / "certificate.json", "w") as f:
        json.dump(_cert(config_hash="0123456789abcdef", config_path="configs/vocoder_tiny.py"), f)
    with pytest.raises(cert_lib.CertifyError, match=r"holds a certificate of another config.*0123456789abcdef.*vocoder_tiny.*use a fresh --workdir"):
        cert_lib.certify("configs/backbone_tiny.py:runlocal", backbone_tiny.get_config("runlocal"), str(tmp_path), kills=1)
    with pytest.raises(cert_lib.CertifyError, match="write axis=size pairs"):
        cert_lib.parse_mesh("fsdp2")


def test_small_certificate_of_the_tiny_backbone(tmp_path):
    """The CI certificate: 2 runs from scratch, 3 kill -9 (two during held async saves, one at a
    random step), a SIGTERM, the default mesh (data=2) and data=1,fsdp=2 over 2 host devices."""
    c = cert_lib.certify("configs/backbone_tiny.py:runlocal", backbone_tiny.get_config("runlocal"), str(tmp_path),
                         kills=3, meshes=["data=1,fsdp=2"], processes=[1, 2], timeout_s=300)
    print(cert_lib.markdown(c))
    assert c["checks"]["a_scratch_bitwise"] and c["checks"]["b_kills_bitwise"] and c["checks"]["c_sigterm_bitwise"]
    assert c["checks"]["b_no_checkpoint_lost"] and c["checks"]["f_batches_equal"]
    assert [e["kind"] for e in c["variants"]["kills"]["events"]].count("held_save") >= 1
    d = c["variants"]["mesh_data1_fsdp2"]["max_abs_param_diff"]
    print("max abs param diff data=2 vs data=1,fsdp=2:", d)
    assert d <= 1e-5 and c["passed"]
    for f in ("certificate.json", "certificate.md", "loss_curves.png"):
        assert os.path.getsize(tmp_path / f) > 0
    # a second certificate of the same config in its own workdir compares equal
    assert cert_lib.compare(c, json.load(open(tmp_path / "certificate.json"))) == []
    # the same workdir again: refused without --resume (its runs would resume, not start from
    # scratch); with it every finished variant is read back, nothing runs, the same certificate
    with pytest.raises(cert_lib.CertifyError, match=r"already holds the runs of an earlier certify: pass --resume"):
        cert_lib.certify("configs/backbone_tiny.py:runlocal", backbone_tiny.get_config("runlocal"), str(tmp_path),
                         kills=3, meshes=["data=1,fsdp=2"], processes=[1, 2], timeout_s=300)
    again = cert_lib.certify("configs/backbone_tiny.py:runlocal", backbone_tiny.get_config("runlocal"), str(tmp_path),
                             kills=3, meshes=["data=1,fsdp=2"], processes=[1, 2], timeout_s=300, resume=True)
    assert again["wall_s"] < 60 and cert_lib.compare(c, again) == [] and again["passed"]

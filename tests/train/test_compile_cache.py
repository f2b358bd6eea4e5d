"""omni_jax/train/compile_cache.py: where `config.train.xla_cache_dir` points jax's persistent
compilation cache, the per-CPU sub-directory, and a second run that loads the first run's compiled
programs with the same bits."""

import jax
import pytest
from jax._src import monitoring

from configs import backbone_tiny
from omni_jax.train import compile_cache
from omni_jax.train.metrics import read_metrics
from omni_jax.train.trainer import train


@pytest.fixture
def jax_cache_config():
    """Restores jax's cache settings (process-wide) after a test changes them."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_compilation_cache_max_size",
             "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    yield
    for n, v in saved.items():
        jax.config.update(n, v)
    cc.reset_cache()


def test_the_setting_names_the_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNI_JAX_XLA_CACHE_DIR", str(tmp_path / "env"))
    assert compile_cache.resolve_dir("auto") == str(tmp_path / "env")
    monkeypatch.delenv("OMNI_JAX_XLA_CACHE_DIR")
    assert compile_cache.resolve_dir("auto").endswith("/.cache/omni_jax/xla_cache")
    assert compile_cache.resolve_dir("") is None
    monkeypatch.setenv("SOME_ROOT", str(tmp_path))
    assert compile_cache.resolve_dir("$SOME_ROOT/c") == str(tmp_path / "c")
    with pytest.raises(ValueError, match="xla_cache_dir"):
        compile_cache.resolve_dir(3)


def test_cpu_tag_follows_the_model_and_the_instruction_set(tmp_path):
    def tag(flags, model="17"):
        p = tmp_path / f"cpuinfo_{model}_{len(flags)}"
        p.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\n"
                     f"flags\t\t: {flags}\n\nprocessor\t: 1\nmodel\t\t: 99\n")
        return compile_cache.cpu_tag(str(p))

    base = tag("fpu sse avx2 avx512f")
    assert base == tag("fpu sse avx2 avx512f")  # the second processor is not read
    assert base != tag("fpu sse avx2")  # another instruction set
    assert base != tag("fpu sse avx2 avx512f", model="2")  # another model
    assert base.startswith("cpu-")


def test_an_unwritable_directory_is_named_with_the_fix(tmp_path, jax_cache_config):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"xla_cache_dir.*writable directory.*''"):
        compile_cache.enable(str(blocker / "cache"))


def test_auto_keeps_a_directory_jax_already_has(tmp_path, jax_cache_config):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "from_env"))
    assert compile_cache.enable("auto") == str(tmp_path / "from_env")
    assert not (tmp_path / "from_env").exists()  # left as jax's setting, nothing created


def test_a_second_run_loads_the_compiled_programs_with_the_same_bits(tmp_path, monkeypatch, jax_cache_config):
    monkeypatch.setattr(compile_cache, "MIN_COMPILE_TIME_S", 0.0)  # the tiny programs compile fast
    hits = []

    def listen(event, **kw):
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    monitoring.register_event_listener(listen)
    try:
        runs = []
        for name in ("first", "second"):
            c = backbone_tiny.get_config("runlocal")
            c.train.xla_cache_dir = str(tmp_path / "xla_cache")
            jax.clear_caches()  # nothing compiled in memory: the second run can only read the directory
            before = len(hits)
            train(c, str(tmp_path / name))
            runs.append(([(r["step"], r["loss"], r.get("grad_norm")) for r in read_metrics(tmp_path / name)],
                         len(hits) - before))
    finally:
        monitoring.unregister_event_listener(listen)
    (first, first_hits), (second, second_hits) = runs
    tagged = list((tmp_path / "xla_cache").iterdir())
    assert [p.name for p in tagged] == [compile_cache.cpu_tag()]
    assert any(p.name.endswith("-cache") for p in tagged[0].iterdir())
    print("persistent cache hits: first run", first_hits, "second run", second_hits)
    assert second_hits >= first_hits + 2  # at least the initialisation and the train step
    assert second == first and len(first) == 6

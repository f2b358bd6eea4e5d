"""The run's persistent XLA compilation cache: jax's file cache of compiled executables (MaxText's
`jax_cache_dir`), so that a resumed or repeated run loads each stage's compiled train step,
initialisation and evaluation programs instead of compiling them again.

`config.train.xla_cache_dir`: "auto" (the default) keeps a cache directory jax already has
(`JAX_COMPILATION_CACHE_DIR`; launch/certify.py sets it per run), else uses
`$OMNI_JAX_XLA_CACHE_DIR`, else `~/.cache/omni_jax/xla_cache`; "" leaves jax's setting alone (no
cache unless `JAX_COMPILATION_CACHE_DIR` names one); any other value is the directory (`~` and
`$VARS` expanded; on a pod, a directory every host reads, e.g. a bucket path, lets every host load
what process 0 wrote: jax writes from process 0 only).

A cache hit is the executable that the same program compiled to before, so a run's bits do not
depend on the cache. jax keys an entry on the program, the jax/XLA versions, the XLA flags, the
compile options and the devices, but on CPU not on the CPU's instruction set: a CPU executable
is compiled for the host's features, and one written on another CPU model could crash (an
unsupported instruction) or round differently. On CPU the directory therefore gets a
sub-directory per CPU model and feature set (`cpu_tag`).

A local cache evicts its least recently used entries beyond `MAX_SIZE_BYTES`; the size limit also
makes jax take a file lock around reads and writes, so several processes (the test suite's
workers, several runs on one machine) can share one directory. An object-store cache has no
limit and no lock (only process 0 writes).
"""

from __future__ import annotations

import hashlib
import logging
import os

log = logging.getLogger(__name__)

MAX_SIZE_BYTES = 4 << 30  # least recently used entries beyond this are evicted
MIN_COMPILE_TIME_S = 1.0  # programs that compile faster are not written


def default_dir() -> str:
    return os.environ.get("OMNI_JAX_XLA_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "omni_jax", "xla_cache")


def resolve_dir(setting: str | None) -> str | None:
    """The directory that `config.train.xla_cache_dir` names, or None for ""."""
    if setting is None or setting == "":
        return None
    if not isinstance(setting, str):
        raise ValueError(f"config.train.xla_cache_dir={setting!r}: give a directory, 'auto' or '' (off)")
    if setting == "auto":
        return default_dir()
    return os.path.expanduser(os.path.expandvars(setting))


def cpu_tag(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """A short name for this CPU's model and instruction set: vendor, family, model and the
    feature flags of the first processor in /proc/cpuinfo (the platform's machine name where
    that file is missing)."""
    import platform

    fields = {}
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    parts = [fields.get(k, "") for k in ("vendor_id", "cpu family", "model", "flags", "Features", "CPU part")]
    if not any(parts):
        parts = [platform.machine(), platform.processor()]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return f"cpu-{platform.machine() or 'unknown'}-{digest}"


def enable(setting: str | None, *, platform: str | None = None) -> str | None:
    """Points jax's persistent compilation cache at the directory of `setting` (see the module
    docstring); returns the directory used, or None when off. Call before the first compile of the
    process: jax decides once per process whether the cache is in use."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    if setting == "auto" and jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir  # the environment's (JAX_COMPILATION_CACHE_DIR)
    path = resolve_dir(setting)
    if path is None:
        return None
    platform = platform or jax.default_backend()
    if platform == "cpu":
        path = path.rstrip("/") + "/" + cpu_tag()
    remote = "://" in path  # an object store (gs://...): jax writes it through etils.epath
    if not remote:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise ValueError(f"config.train.xla_cache_dir: cannot create the compilation cache directory {path!r} "
                             f"({e}); point it at a writable directory or set it to '' to turn the cache off") from e
    # a size limit makes jax evict and lock (a file lock: local directories only)
    jax.config.update("jax_compilation_cache_max_size", -1 if remote else MAX_SIZE_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        cc.reset_cache()  # re-reads the directory at the next compile (also after an earlier one)
    log.info("XLA compilation cache: %s", path)
    return path

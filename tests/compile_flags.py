"""XLA flags of every test process: the pytest workers (tests/conftest.py) and the processes the
tests start (tests/multiprocess.py, the CLI tests), so runs that a test compares bit for bit are
compiled alike.

`--xla_backend_optimization_level=0` compiles the CPU kernels without LLVM's optimisation passes.
Most of the suite's time is XLA:CPU compiling tiny programs once each, and this cuts it: one
audio tokenizer train step (fp32 + bf16 loss and gradients) compiles and runs in 10.3 + 7.8 s
instead of 19.0 + 14.4 s, the 1-vs-4-microbatch tokenizer test takes 43 s instead of 66 s, and
even the HiFT training test (20 steps) 22 s instead of 25 s (4 Dec 2026, idle machine). The
HLO, the fusion decisions, the dot kernels (YNNPACK/Eigen) and the partitioning are the same (the
optimised HLO of the tiny LM's loss-and-gradient program, dumped with --xla_dump_to at both levels,
is the same text once the metadata is stripped); only the generated elementwise code differs, so results can differ in the last bits from the
default level (e.g. the tiny LM's loss 5.945012 vs 5.945011), never in what a test asserts:
equalities between two paths compare runs compiled alike, and parity with PyTorch is checked
against the same tolerances. OMNI_JAX_TESTS_DEFAULT_OPT=1 runs the suite at XLA's default level.

Tried and not used: jax's persistent compilation cache shared by the whole run (both workers and
the processes they start; 7 Dec 2026, Zen 4 VM). It hits where the in-memory cache cannot (each
`train()` jits new closures): tests/train/test_trainer.py 23 s instead of 40 s, and the whole
suite reached 91% in 17 minutes instead of 21.7. But two 8-device training tests
(tests/tasks/test_omni_task.py, tests/tasks/test_omni_v1_task.py) then hung with the CPU idle:
gdb showed all 8 device threads waiting in XLA:CPU AllReduce rendezvous, a deadlock never seen
without the cache. Reproduced alone, no second worker: test_two_v1_stages_and_evaluation run twice
in two processes sharing a cache directory, the first (compiling, writing 52 entries) passed in 33
s, the second (loading them) hung at once, the same 8 threads in AllReduce, and `timeout`'s SIGTERM
did not end it (Python never runs its handler while XLA waits). My guess (not verified) is that an
executable loaded from the cache runs its collectives without the order that the compiled one
keeps, so devices wait in different ones.
(tests/train/test_multiprocess.py and launch.certify do load cached programs of 2-4 devices per
process, each within one test or certificate, and have not hung in any suite run so far.)
Caching only single-device programs (no collectives) gains nothing: tests/train/test_trainer.py,
test_rng.py and test_step.py in two workers took 116.7 s with it (82 hits) and 112.4 s without.
With a size limit jax's LRU eviction also reads every entry's access time at every write
(quadratic in the ~5000 entries): that run was slower than no cache at all.
"""

import os

FLAGS = "" if os.environ.get("OMNI_JAX_TESTS_DEFAULT_OPT") == "1" else "--xla_backend_optimization_level=0"


def add(xla_flags: str) -> str:
    """`xla_flags` with the test flags appended."""
    return " ".join([*(xla_flags or "").split(), *FLAGS.split()])

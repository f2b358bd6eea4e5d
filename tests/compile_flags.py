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
"""

import os

FLAGS = "" if os.environ.get("OMNI_JAX_TESTS_DEFAULT_OPT") == "1" else "--xla_backend_optimization_level=0"


def add(xla_flags: str) -> str:
    """`xla_flags` with the test flags appended."""
    return " ".join([*(xla_flags or "").split(), *FLAGS.split()])

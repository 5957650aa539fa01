"""Settings of the test session, applied before JAX starts its backend."""

from __future__ import annotations

import os

# The default suite's time is mostly XLA compiling hundreds of small programs that then run a few
# times each. Without LLVM's optimisation passes the CPU backend compiles them about twice as fast
# (measured on the trainer tests: 73 s -> 39 s); the programs are the same HLO, only their machine
# code is less optimised. Benchmarks and training never see this flag; multi-device subprocesses
# set XLA_FLAGS of their own.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

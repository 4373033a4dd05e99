"""Benchmarks, the GPU check and profiling recipes for pmm_gpu (profiling/README.md).

A package so that its modules import each other and the tests import them without ``sys.path`` edits:
run them from the repository root as ``python -m profiling.bench`` (``.bench_eigh``, ``.step_memory``,
``.compile_kernels``, ...); ``profiling/gpu_check.sh`` does. Nothing here is installed with pmm_gpu.
"""

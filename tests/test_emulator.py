"""The emulation harness itself: signature tables match the sources, barriers work, and the
ThreadSanitizer build catches a missing barrier."""
from __future__ import annotations


import numpy as np
import pytest

import emulator
from pmm_gpu import _cuda
from pmm_gpu._cuda import Kernel

BARRIER_SOURCE = emulator.EMU_DIR / "barrier_test.cu"
BARRIER_KERNELS = [Kernel("barrier_test", name, ("T",), (("x", "const T*"), ("y", "T*")), (("double",),))
                   for name in ("rotate_block", "rotate_block_racy")]


@pytest.mark.parametrize("family", sorted({k.family for k in _cuda.KERNELS.values()}))
def test_signature_table_matches_source(family):
    parsed = emulator.parse_signatures(_cuda.family_source(family))
    table = {k.name: (k.template, k.args) for k in _cuda.family_kernels(family)}
    assert parsed == table


def test_barrier_signature_table_matches_source():
    parsed = emulator.parse_signatures(BARRIER_SOURCE.read_text())
    assert parsed == {k.name: (k.template, k.args) for k in BARRIER_KERNELS}


def rotate(kernel: str, sanitize: str | None = None, blocks: int = 3, threads: int = 8) -> bool:
    """Run a rotate kernel; True when every block's slice came back rotated by one."""
    emu = emulator.Emulator(BARRIER_SOURCE, BARRIER_KERNELS, sanitize=sanitize)
    x = np.arange(blocks * threads, dtype=np.float64)
    y = np.full_like(x, -1.0)
    emu.launch(kernel, ("double",), blocks, threads, x, y)
    return np.array_equal(y, np.roll(x.reshape(blocks, threads), -1, axis=1).ravel())


def test_barrier_kernel():
    assert rotate("rotate_block")


def test_launch_checks_arguments():
    emu = emulator.Emulator(BARRIER_SOURCE, BARRIER_KERNELS)
    x = np.zeros(8)
    with pytest.raises(TypeError, match="C-contiguous float64"):
        emu.launch("rotate_block", ("double",), 1, 8, x.astype(np.float32), x)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        emu.launch("rotate_block", ("double",), 1, 8, x)


def test_tsan_accepts_barrier_kernel():
    r = emulator.run_under_tsan("test_emulator", "rotate('rotate_block', 'thread')", timeout=300)
    assert r.returncode == 0, r.stderr


def test_tsan_reports_missing_barrier():
    r = emulator.run_under_tsan("test_emulator", "rotate('rotate_block_racy', 'thread')", timeout=300)
    assert r.returncode == 66 and "ThreadSanitizer: data race" in r.stderr, r.stderr

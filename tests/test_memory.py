"""The allocator setting the daemon starts with (edge/memory.py): freed frame-sized blocks are
reused, not page-faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from edge.memory import keep_freed_memory

CYCLES = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from edge.memory import keep_freed_memory
    assert keep_freed_memory()
from edge.preprocess import PreprocessSpec, normalised_difference
rng = np.random.default_rng(0)
previous, current = rng.integers(0, 40, (2, 976, 1304), dtype=np.uint8)
spec = PreprocessSpec(id="g2")
normalised_difference(spec, previous, current, None)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # its temporaries: 1.3-5 MB each, seven of them
    normalised_difference(spec, previous, current, None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_freed_frame_buffers_are_reused_not_faulted_in_again():
    default, kept = faults("default"), faults("keep")
    # By default the blocks are mapped and faulted in anew every call (3,600 pages a call).
    assert default > 20 * 1000
    assert kept < default / 20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_keep_freed_memory_is_idempotent():
    assert keep_freed_memory() and keep_freed_memory()

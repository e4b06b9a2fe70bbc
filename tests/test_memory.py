"""Heap settings: a freed large tensor stays in the process's heap for reuse instead of going back to the system."""

import subprocess
import sys

PROBE = """
import ctypes, sys
import torch
from fhi_al.memory import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "on":
    assert keep_freed_memory() and keep_freed_memory()  # applied, idempotent
block = torch.ones(3 * 2**20, dtype=torch.float64)  # 24 MB
del block
print(libc.mallinfo2().fordblks)  # bytes free inside the heap
"""
BLOCK_BYTES = 3 * 2**20 * 8


def free_heap_bytes_after_a_freed_block(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_freed_block_is_kept_for_reuse():
    assert free_heap_bytes_after_a_freed_block("off") < BLOCK_BYTES  # glibc defaults: handed back
    assert free_heap_bytes_after_a_freed_block("on") >= BLOCK_BYTES  # kept in the heap

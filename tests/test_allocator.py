"""sfumato.allocator: freed memory kept in the process while it generates (glibc's mallopt)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from sfumato import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def run(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


COUNT_FAULTS = """
    import resource, torch
    from sfumato import allocator
    torch.set_num_threads(1)
    def faults():  # a model's pattern: several large activations (40-80 MB) alive at once, freed, again
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            a, b = torch.ones(40 * 2**18), torch.ones(64 * 2**18)
            c = a + 1
            del a
            d = torch.ones(80 * 2**18)
            del b, c, d
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults()
    plain = faults()
    kept = allocator.keep_freed_memory()
    faults(), faults(), faults()  # the heap grows to the pattern's peak once, then serves it again
    print(plain, kept, faults(), allocator.freed_memory_kept())
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_large_blocks_are_reused_without_page_faults():
    plain, kept, after, state = run(COUNT_FAULTS).split()
    assert kept == "True" and state == "True"
    assert int(plain) > 3 * 16_384  # each block faulted in again, page by page (64 MB: 16 384 pages)
    assert int(after) < int(plain) / 5  # 0 in steady state; a few blocks may still move while the heap settles


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_the_environment_can_say_no():
    plain, kept, after, state = run(COUNT_FAULTS, SFUMATO_KEEP_FREED_MEMORY="0").split()
    assert kept == "False" and state == "False"
    assert int(after) > 3 * 16_384


def test_idempotent_and_never_fails():
    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() == first == allocator.freed_memory_kept()
    assert first == GLIBC or os.environ.get("SFUMATO_KEEP_FREED_MEMORY") == "0"


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_a_generation_keeps_freed_memory():
    out = run("""
        import torch, sfumato
        from sfumato import allocator
        from sfumato.demo import builtin_model
        pipe = sfumato.AutoPipelineForText2Image.from_pretrained(builtin_model("decoder"), fast_start=True)
        pipe.set_progress_bar_config(disable=True)
        before = allocator.freed_memory_kept()
        pipe("a red circle on a blue background", num_inference_steps=2, prior_num_inference_steps=2,
             height=64, width=64, generator=torch.Generator().manual_seed(0))
        print(before, allocator.freed_memory_kept())
    """)
    assert out == "False True"

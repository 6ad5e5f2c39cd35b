"""xpnet keeps freed memory in the process (glibc): allocating and filling the same 2 MiB array again and again
faults in no new pages (glibc's default gives some or all of them back, depending on the heap's layout). Page-fault
counts, not timings; each case runs in a new interpreter because the setting is made when xpnet is imported.
2 MiB stays under the 4 MiB from which NumPy asks the kernel for huge pages, which would make counts depend on
where a mapping happens to be aligned."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="xpnet tunes glibc's malloc only; this system uses another C library")

CHURN = ("import resource, xpnet, numpy as np\n"
         "def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
         "for _ in range(3): np.ones(1 << 19, dtype=np.float32)\n"  # 2 MiB, well over glibc's default threshold
         "before = faults()\n"
         "for _ in range(50): np.ones(1 << 19, dtype=np.float32)\n"
         "print(xpnet.allocator.applied(), (faults() - before) // 50)\n")


def _run(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", CHURN], env={**clean, **env}, capture_output=True, text=True,
                          check=True)
    return done.stdout.split()


def test_freed_arrays_are_reused_without_page_faults():
    applied, faults_per_array = _run()
    assert applied == "True"
    assert int(faults_per_array) < 10  # a fresh 2 MiB array would be 512 pages


def test_the_users_own_malloc_settings_win():
    """A user who asks glibc to map every block over 64 KiB gets exactly that: a fresh 2 MiB array each time."""
    applied, faults_per_array = _run(MALLOC_MMAP_THRESHOLD_="65536")
    assert applied == "False"
    assert int(faults_per_array) >= 512  # every page faulted in anew: what xpnet's setting avoids

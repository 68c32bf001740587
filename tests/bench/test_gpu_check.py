"""bench/gpu_check.sh: without CUDA it says so in one line and exits 2 (nothing written); its cuda tests
are collected (and skipped here)."""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: bench/gpu_check.sh runs it")
def test_gpu_check_without_cuda_says_so_and_exits_2():
    p = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh")], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"gpu_check: no CUDA device visible to {sys.executable} "
                                             "(torch.cuda.is_available() is False)"]


def test_the_cuda_tests_are_collected_under_their_marker():
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "cuda",
                        os.path.join(ROOT, "tests", "cuda")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "12 tests collected" in p.stdout, p.stdout[-500:]

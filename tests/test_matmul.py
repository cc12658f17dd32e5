"""The products on the per-segment path stay on the calling thread (voiceauth.matmul).

OpenBLAS's worker threads, woken by a large enough product, spin on every core afterwards: two
embeddings at once (two model slots, two worker processes) ran at the speed of one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from voiceauth.matmul import GEMM_ON_THREAD, GEMV_ON_THREAD, matmul, rows_per_block


@pytest.mark.parametrize(("left", "right"), [((298, 256), (256, 80)), ((2000, 192), (192, 2)), ((2000, 192), (192,)),
                                             ((5, 7), (7, 3)), ((1, 192), (192,)), ((0, 192), (192, 4))])
def test_matmul_is_the_plain_product(left: tuple[int, ...], right: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(left), rng.standard_normal(right)
    out = matmul(a, b)
    assert out.shape == (a @ b).shape
    np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("inner", "columns"), [(256, 80), (201, 80), (192, 2), (192, None), (257, None), (10**6, 1)])
def test_blocks_are_the_largest_that_stay_on_the_thread(inner: int, columns: int | None) -> None:
    rows = rows_per_block(inner, columns)
    if columns is None:
        assert rows * inner < GEMV_ON_THREAD or rows == 1
        assert (rows + 1) * inner >= GEMV_ON_THREAD
    else:
        assert rows * inner * columns <= GEMM_ON_THREAD or rows == 1
        assert (rows + 1) * inner * columns > GEMM_ON_THREAD


def test_matmul_refuses_what_it_does_not_split() -> None:
    with pytest.raises(ValueError, match="2-D matrix"):
        matmul(np.ones(3), np.ones(3))


PROBE = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    from voiceauth.embedding.fbank import kaldi_fbank, speechbrain_fbank
    from voiceauth.fraud.head import spectral_features
    from voiceauth.scoring.normalisation import as_norm

    def worker_ticks():
        main, total = threading.get_native_id(), 0
        for tid in os.listdir("/proc/self/task"):
            if int(tid) != main:
                fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total

    rng = np.random.default_rng(0)
    signal = (0.1 * rng.standard_normal(64000)).astype(np.float32)
    cohort, enrol, test = rng.standard_normal((2000, 192)), rng.standard_normal(192), rng.standard_normal(192)
    calls = {"kaldi_fbank": lambda: kaldi_fbank(signal), "speechbrain_fbank": lambda: speechbrain_fbank(signal),
             "as_norm": lambda: as_norm(0.5, enrol, test, cohort),
             "spectral_features": lambda: spectral_features(signal[None])}
    np.ones((600, 600)) @ np.ones((600, 600))  # BLAS has started its worker threads
    for call in calls.values():
        call()
    time.sleep(0.5)
    for name, call in calls.items():
        before = worker_ticks()
        for _ in range(int(sys.argv[1])):
            call()
        print(name, worker_ticks() - before)
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="needs Linux /proc and 2 or more cores (BLAS starts no worker thread on one)")
def test_per_segment_products_leave_the_blas_worker_threads_idle() -> None:
    """CPU time of every thread but the caller's while the per-segment computations run (clock ticks);
    before the products were split, 100 filterbanks of 4 s cost BLAS's workers about 25 ticks."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE, "100"], capture_output=True, text=True, check=True,
                         env=env, timeout=300).stdout
    ticks = {name: int(value) for name, value in (line.split() for line in out.splitlines())}
    assert set(ticks) == {"kaldi_fbank", "speechbrain_fbank", "as_norm", "spectral_features"}
    assert all(value <= 2 for value in ticks.values()), ticks

"""Matrix products that stay on the calling thread.

OpenBLAS (numpy's BLAS in the project's lock) hands a product to its worker threads once it is
large enough: a matrix-matrix product above m x n x k = 4 x 65536, a matrix-vector product above
m x n = 4 x 2304. Those threads then spin on every core for a while after each product.
voiceauth already spreads model work over the cores itself (a live pool's model slots, a
service's worker processes), so the spinning threads took the core of the other call: two
CAM++ embeddings at once in two processes ran at the speed of one (0.99x one process), and at
2.00x once the filterbank's product was split. :func:`matmul` splits the products on the
per-segment path (filterbank, spoof features, AS-norm, watchlist) into blocks of rows below those
sizes. The result is the plain product's, up to the order of summation.
"""

from __future__ import annotations

import numpy as np

GEMM_ON_THREAD = 4 * 65536
"""OpenBLAS keeps a matrix-matrix product of at most this many multiply-adds on the calling thread."""
GEMV_ON_THREAD = 4 * 2304
"""OpenBLAS keeps a matrix-vector product of fewer than this many multiply-adds on the calling thread."""


def rows_per_block(inner: int, columns: int | None) -> int:
    """Rows of the left matrix per product; ``columns`` None is a matrix-vector product."""
    if columns is None:
        return max(1, (GEMV_ON_THREAD - 1) // max(1, inner))
    return max(1, GEMM_ON_THREAD // max(1, inner * columns))


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a 2-D ``a`` and a 1-D or 2-D ``b``, in row blocks BLAS runs on this thread."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim not in (1, 2):
        raise ValueError(f"matmul takes a 2-D matrix and a 1-D or 2-D one, not {a.shape} and {b.shape}")
    rows = rows_per_block(a.shape[1], b.shape[1] if b.ndim == 2 else None)
    if len(a) <= rows:
        return a @ b
    return np.concatenate([a[start : start + rows] @ b for start in range(0, len(a), rows)])

"""Which interpolation points for Winograd F(m x m, 2 x 2) (csrc/polywino.h): the transforms
(A^T, G, B^T) by Toom-Cook for the finite points given plus infinity, then a float32
simulation (numpy, transforms and products rounded to float32) of a stride-1 2x2 conv of 128
channels to 64 filters on a 28 x 28 output against float64: max error of the largest output.

    python bench/polywino_points.py
"""
import numpy as np


def mats(pts, m, r):
    """A^T (m x n), G (n x r), B^T (n x n), n = m + r - 1, for the finite points pts + inf."""
    n = m + r - 1
    AT, G = np.zeros((m, n)), np.zeros((n, r))
    for k, p in enumerate(pts):
        Nk = np.prod([p - q for j, q in enumerate(pts) if j != k])
        AT[:, k] = [p ** i for i in range(m)]
        G[k] = [p ** a / Nk for a in range(r)]
    AT[m - 1, n - 1] = G[n - 1, r - 1] = 1
    # B^T from A^T diag(G g) B^T d = the correlation of d with g, for every g and d
    rows, rhs = [], []
    for i in range(m):
        for a in range(r):
            for t in range(n):
                row = np.zeros((n, n))
                row[:, t] = AT[i] * G[:, a]
                rows.append(row.ravel())
                rhs.append(float(t == i + a))
    BT = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0].reshape(n, n)
    assert np.allclose(np.array(rows) @ BT.ravel(), rhs)
    return AT, G, BT


rng = np.random.default_rng(0)
K, O, n = 128, 64, 28
d = rng.standard_normal((K, n + 1, n + 1))
g = rng.standard_normal((O, K, 2, 2)) / np.sqrt(4 * K)
ref = sum(np.einsum("ok,kij->oij", g[:, :, a, b], d[:, a:a + n, b:b + n])
          for a in range(2) for b in range(2))
f = np.float32
for pts, m in (([0, 1, -1, 0.5], 4), ([0, 1, -1, -0.5], 4), ([0, 1, -1, 2], 4), ([0, 1, -1], 3)):
    AT, G, BT = (x.astype(f) for x in mats(pts, m, 2))
    t = -(-n // m)
    dp = np.zeros((K, t * m + 1, t * m + 1), f)
    dp[:, :n + 1, :n + 1] = d
    U = np.einsum("ea,okab,fb->efok", G.astype(np.float64), g, G.astype(np.float64)).astype(f)
    out = np.zeros((O, t * m, t * m), f)
    for i in range(t):
        for j in range(t):
            V = np.einsum("ea,kab,fb->efk", BT, dp[:, i * m:i * m + m + 1, j * m:j * m + m + 1],
                          BT)
            M = np.einsum("efok,efk->efo", U, V)
            out[:, i * m:i * m + m, j * m:j * m + m] = np.einsum("ie,efo,jf->oij", AT, M, AT)
    err = np.abs(out[:, :n, :n] - ref).max() / np.abs(ref).max()
    print(f"F({m}x{m}, 2x2) points {pts} + inf: {err:.2e}")
o32 = sum(np.einsum("ok,kij->oij", g[:, :, a, b].astype(f), d[:, a:a + n, b:b + n].astype(f))
          for a in range(2) for b in range(2))
print(f"direct float32: {np.abs(o32 - ref).max() / np.abs(ref).max():.2e}")

"""Which transform points for Winograd F(4x4, 3x3)?  Builds the Cook-Toom matrices (A^T, G, B^T)
from 5 finite points plus infinity, emulates the 2D algorithm in float32 with NumPy (every
stage rounded to float32) and prints its error against a float64 direct conv: the largest error
over the largest reference value, and RMS over RMS.  The choice behind
convkit/cpu/_conv_winograd.pyx's F(4x4) matrices (bench/RESULTS.md, "Winograd F(4x4, 3x3)").

    python bench/wino_points.py
"""
import numpy as np
from fractions import Fraction as Fr

def mats(pts):
    # points p0..p4 finite, plus infinity. alpha = 6, m = 4, r = 3
    pts = [Fr(p) for p in pts]
    n = len(pts)  # 5
    # A^T (m x alpha): column i = [1, p, p^2, p^3] for finite, last col [0,0,0,1]
    AT = [[p**k for p in pts] + [Fr(1) if k == 3 else Fr(0)] for k in range(4)]
    # G (alpha x r): row i = [1, p, p^2] / N_i where N_i = prod_{j!=i}(p_i - p_j); last row [0,0,1]
    G = []
    for i, p in enumerate(pts):
        Ni = 1
        for j, q in enumerate(pts):
            if j != i: Ni *= (p - q)
        G.append([Fr(1) / Ni, p / Ni, p * p / Ni])
    G.append([Fr(0), Fr(0), Fr(1)])
    # B^T (alpha x alpha): row i = coefficients of M(x)/(x - p_i) (degree 4 poly, 5 coeffs) then 0,
    # last row: M(x) coefficients (degree 5, 6 coeffs)  with M(x) = prod (x - p_j)
    M = [Fr(1)]
    for q in pts:
        M = [Fr(0)] + M
        M = [M[k] - q * (M[k + 1] if k + 1 < len(M) else 0) for k in range(len(M))]
    # M now coefficient list low->high, length 6
    def polydiv_lin(coeffs, p):  # divide by (x - p)
        n = len(coeffs) - 1
        out = [Fr(0)] * n
        rem = coeffs[n]
        for k in range(n - 1, -1, -1):
            out[k] = rem
            rem = coeffs[k] + p * rem
        return out
    BT = []
    for p in pts:
        q = polydiv_lin(M, p)
        BT.append(q + [Fr(0)])
    BT.append(M)
    f = lambda X: np.array([[float(v) for v in row] for row in X])
    return f(AT), f(G), f(BT)

def check(AT, G, BT):
    rng = np.random.default_rng(1)
    d = rng.standard_normal(6); g = rng.standard_normal(3)
    y = AT @ ((G @ g) * (BT @ d))
    want = np.array([d[i:i + 3] @ g for i in range(4)])
    return np.max(np.abs(y - want))

def sim(AT, G, BT, C=64, F=16, T=256, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((T, C, 6, 6)).astype(np.float32)
    g = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    A32, G32, B32 = (M.astype(np.float32) for M in (AT, G, BT))
    U = np.einsum("ai,fcij,bj->abfc", G32, g, G32).astype(np.float32)
    V = np.einsum("ai,tcij,bj->abct", B32, d, B32).astype(np.float32)
    Mm = np.einsum("abfc,abct->abft", U, V).astype(np.float32)
    Y = np.einsum("ia,abft,jb->ftij", A32, Mm, A32).astype(np.float32)
    want = np.zeros((F, T, 4, 4))
    for i in range(4):
        for j in range(4):
            want[:, :, i, j] = np.einsum("tcij,fcij->ft", d[:, :, i:i+3, j:j+3].astype(np.float64), g.astype(np.float64))
    err = np.abs(Y - want)
    return err.max() / np.abs(want).max(), np.sqrt((err**2).mean()) / np.sqrt((want**2).mean())

if __name__ == "__main__":
    cands = {"0,1,-1,2,-2": [0, 1, -1, 2, -2], "0,1,-1,1/2,-1/2": [0, 1, -1, Fr(1, 2), Fr(-1, 2)],
             "0,1,-1,1/2,-2": [0, 1, -1, Fr(1, 2), -2], "0,1,-1,2,-1/2": [0, 1, -1, 2, Fr(-1, 2)],
             "0,1,-1,2,1/2": [0, 1, -1, 2, Fr(1, 2)], "0,1,-1,3,-3": [0, 1, -1, 3, -3]}
    for name, p in cands.items():
        AT, G, BT = mats(p)
        errs = np.array([sim(AT, G, BT, seed=s) for s in range(3)])
        print(f"{name:18s} exact-check {check(AT, G, BT):.1e}  max/maxref {errs[:, 0].max():.2e}"
              f"  rms rel {errs[:, 1].mean():.2e}")

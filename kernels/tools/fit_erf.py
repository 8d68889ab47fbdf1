"""Fits the f32 erf of kernels/src/activation/simd.rs: erf(x) ~ x*P(x^2)/Q(x^2) on |x| <= 3.95.

Sanathanan-Koerner iterations (weighted linear least squares on Chebyshev nodes), then Lawson
re-weighting toward the minimax fit; prints the max abs error of f32 Horner evaluation for a
few degree pairs and the coefficients of the chosen one (default P degree 6, Q degree 4).

    python kernels/tools/fit_erf.py [P_DEGREE Q_DEGREE]      # needs numpy and scipy
"""
import numpy as np
from scipy.special import erf
def fit(np_, nq, X=3.95, sk=15, lawson=200):
    x = X*(1-np.cos(np.linspace(0, np.pi, 8001)))/2; x = x[x>0]
    t = x*x; fy = erf(x)
    Qp = np.ones_like(x); lw = np.ones_like(x)
    for it in range(sk+lawson):
        # minimize x*P - erf*Q  (weighted by 1/Qp)
        A = np.hstack([np.vstack([x*t**i for i in range(np_+1)]).T, -np.vstack([fy*t**j for j in range(1, nq+1)]).T])
        w = lw/np.abs(Qp)
        c, *_ = np.linalg.lstsq(A*w[:,None], fy*w, rcond=None)
        p = c[:np_+1]; q = np.concatenate([[1.0], c[np_+1:]])
        Qp = np.polyval(q[::-1], t)
        err = x*np.polyval(p[::-1], t)/Qp - fy
        if it >= sk:
            lw = lw*np.abs(err)**0.3; lw /= lw.sum()
    return p, q
def eval32(p, q, x):
    x = np.clip(x.astype(np.float32), np.float32(-3.95), np.float32(3.95)); t = x*x
    P = np.float32(p[-1])
    for c in p[-2::-1]: P = P*t + np.float32(c)
    Q = np.float32(q[-1])
    for c in q[-2::-1]: Q = Q*t + np.float32(c)
    return (x*P)/Q
xs = np.linspace(-6, 6, 4_000_001).astype(np.float32)
ref = erf(xs.astype(np.float64))
res={}
for (a, b) in [(5,4),(6,4),(5,5),(6,5),(7,4)]:
    p, q = fit(a, b)
    e = np.abs(eval32(p, q, xs) - ref).max()
    print(a, b, "max abs err f32: %.3g" % e, "Q min", np.polyval(q[::-1], np.linspace(0,16,1000)).min())
    res[(a,b)]=(p,q)
import sys
a,b = map(int, sys.argv[1:3]) if len(sys.argv)>2 else (6,4)
p,q=res[(a,b)]
print("P", [repr(float(np.float32(v))) for v in p]); print("Q", [repr(float(np.float32(v))) for v in q])

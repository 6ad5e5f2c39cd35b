"""Special functions written against an array module ``xp``: NumPy has no ``erf`` and scipy is not a dependency.

``erf`` follows W. J. Cody's rational Chebyshev approximations ("Rational Chebyshev approximations for the error
function", Math. Comp. 23, 1969, pp. 631-638; the coefficients of his CALERF routine): ``x * P(x^2) / Q(x^2)``
for ``|x| <= 0.46875``, and ``1 - erfc(|x|)`` beyond, with ``erfc = exp(-x^2) * R(|x|)`` up to 4 and an
asymptotic rational form in ``1 / x^2`` above. Each branch is evaluated on the whole array with its argument
clipped into its own interval (no overflow, no warnings) and the right one is selected, so it runs unchanged on
CuPy. Accuracy in float64: within a few units in the last place of ``math.erf`` (tests/test_activations.py).
"""

from __future__ import annotations

import math
from typing import Any

from xpnet.kernels import select

_SMALL = 0.46875  # Cody's THRESH: the first interval's bound
_MIDDLE = 4.0
_BIG = 26.543     # erfc underflows beyond this (Cody's XBIG for IEEE double); erf is 1 there
_SQRT_PI_INV = 1.0 / math.sqrt(math.pi)

# erf(x) = x * (A0 + A1 y + ... ) / (...), y = x^2, |x| <= 0.46875 (Horner form as in CALERF)
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02, 3.20937758913846947e03,
      1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
# erfc(x) = exp(-x^2) * C(x) / D(x), 0.46875 <= x <= 4
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01, 2.98635138197400131e02,
      8.81952221241769090e02, 1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03,
      2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02, 1.62138957456669019e03,
      3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03, 1.23033935480374942e03)
# erfc(x) = exp(-x^2) / x * (1/sqrt(pi) - z * P(z) / Q(z)), z = 1 / x^2, x > 4
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
      6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1, 6.05183413124413191e-2,
      2.33520497626869185e-3)


def _rational(t: Any, num: tuple[float, ...], den: tuple[float, ...]) -> Any:
    """CALERF's Horner scheme: the last numerator coefficient leads, the denominator is monic."""
    xnum, xden = num[-1] * t, t
    for a, b in zip(num[:len(den) - 1], den[:len(den) - 1]):
        xnum = (xnum + a) * t
        xden = (xden + b) * t
    return (xnum + num[len(den) - 1]) / (xden + den[-1])


def _exp_minus_square(xp: Any, y: Any) -> Any:
    """exp(-y^2) without the rounding error of y*y: y = u + d with u a multiple of 1/16, u*u exact (Cody)."""
    u = xp.trunc(y * 16.0) / 16.0
    return xp.exp(-u * u) * xp.exp(-(y - u) * (y + u))


def erfc_positive(xp: Any, y: Any) -> Any:
    """erfc(y) for y >= 0.46875 (smaller y are clipped up to it): Cody's second and third intervals."""
    middle = xp.clip(y, _SMALL, _MIDDLE)
    big = xp.clip(y, _MIDDLE, _BIG)
    z = 1.0 / (big * big)
    tail = (_SQRT_PI_INV - z * _rational(z, _P, _Q)) / big
    return select(xp, y <= _MIDDLE, _rational(middle, _C, _D), tail) * _exp_minus_square(xp, xp.minimum(y, _BIG))


def erf(xp: Any, x: Any) -> Any:
    """The error function of a float array, elementwise, in its dtype (NaN stays NaN, erf(+-inf) = +-1)."""
    y = xp.abs(x)
    small = xp.minimum(y, _SMALL)
    near_zero = xp.copysign(small, x) * _rational(small * small, _A, _B)
    far = xp.copysign(0.5 - erfc_positive(xp, y) + 0.5, x)
    return select(xp, y <= _SMALL, near_zero, far)

"""Numerics shared by the aggregators: option checks, Gram scaling, the
in-graph solvers (box- and simplex-constrained QPs by a primal-dual active
set method, a PSD pseudo-inverse) and state helpers.

Everything here is `keras.ops`, jit-compatible: fixed shapes, no Python
control flow on tensor values, loops with a maximum number of iterations.
"""

import math
import numbers

import keras
from keras import ops

# Quantities below TINY are zero: a Gram matrix whose largest diagonal entry
# is below it has no gradient in it (float32 underflows near 1e-38).
TINY = 1e-30
# float32 machine epsilon.
EPS32 = float(2.0**-23)


# --------------------------------------------------------------------------
# Option checks (construction time, plain Python)
# --------------------------------------------------------------------------


def check_number(name, value, low=None, high=None, low_open=False, high_open=False,
                 owner=""):
    """A finite real number in the range; raises ValueError naming `name`
    and the valid range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        rng = f"{left}{lo}, {hi}{right}"
        raise ValueError(
            f"{owner + ': ' if owner else ''}`{name}` must be a finite number in "
            f"{rng}, got {value!r}."
        )
    return float(value)


def check_int(name, value, low=None, high=None, owner=""):
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        raise ValueError(
            f"{owner + ': ' if owner else ''}`{name}` must be an integer in "
            f"[{lo}, {hi}], got {value!r}."
        )
    return int(value)


def check_choice(name, value, choices, owner=""):
    if value not in choices:
        raise ValueError(
            f"{owner + ': ' if owner else ''}`{name}` must be one of "
            f"{list(choices)}, got {value!r}."
        )
    return value


def check_seed(value, owner=""):
    if value is None:
        return None
    return check_int("seed", value, 0, 2**31 - 1, owner=owner)


def check_pref_vector(value, owner="", allow_zero_sum=False):
    """None or a sequence of finite weights >= 0, not all zero."""
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(
            f"{owner + ': ' if owner else ''}`pref_vector` must be None or a sequence "
            f"of K finite numbers >= 0, got {value!r}."
        ) from None
    if (
        not values
        or any(not math.isfinite(v) or v < 0 for v in values)
        or (not allow_zero_sum and sum(values) <= 0)
    ):
        raise ValueError(
            f"{owner + ': ' if owner else ''}`pref_vector` must be None or a sequence "
            f"of K finite numbers >= 0, not all 0, got {value!r}."
        )
    return tuple(values)


def check_pref_length(pref, num_tasks, owner):
    if pref is not None and len(pref) != num_tasks:
        raise ValueError(
            f"{owner}: `pref_vector` has {len(pref)} entries but the aggregator is "
            f"built for {num_tasks} tasks."
        )


# --------------------------------------------------------------------------
# Gram matrix helpers
# --------------------------------------------------------------------------


def prepare_gram(gram):
    """float32 and exactly symmetric."""
    gram = ops.cast(gram, "float32")
    return 0.5 * (gram + ops.transpose(gram))


def diag(gram):
    return ops.diagonal(gram)


def _scaled_by(gram, s):
    """(gram / s, s); zeros with s = 1 when s <= TINY (no gradient)."""
    empty = s <= TINY
    safe = ops.where(empty, 1.0, s)
    scaled = ops.where(empty, ops.zeros_like(gram), gram / safe)
    return scaled, safe


def max_diag_scale(gram):
    """(gram / s, s) with s the largest diagonal entry; a Gram matrix with
    s <= TINY is returned as zeros with s = 1."""
    return _scaled_by(gram, ops.max(ops.diagonal(gram)))


def trace_scale(gram):
    """(gram / trace, trace), zeros when the trace is <= TINY."""
    return _scaled_by(gram, ops.sum(ops.diagonal(gram)))


def norms(gram):
    """Task gradient norms from the Gram matrix."""
    return ops.sqrt(ops.maximum(ops.diagonal(gram), 0.0))


def active_tasks(gram_scaled, rel=1e-12):
    """Tasks whose gradient is not (relatively) zero, from a Gram matrix
    scaled to a largest diagonal entry of 1: squared norm > rel."""
    return ops.diagonal(gram_scaled) > rel


def direction_norm(gram, w):
    """||J^T w|| from the Gram matrix."""
    return ops.sqrt(ops.maximum(ops.sum(w * ops.matmul(gram, w)), 0.0))


def safe_div(a, b, eps=TINY):
    """a / b where |b| > eps, else 0."""
    ok = ops.abs(b) > eps
    return ops.where(ok, a / ops.where(ok, b, 1.0), ops.zeros_like(a))


def solve_vec(matrix, rhs):
    """Solves matrix @ x = rhs for x, batched over leading axes."""
    return ops.squeeze(ops.linalg.solve(matrix, ops.expand_dims(rhs, -1)), -1)


def psd_pinv_apply(matrix, vec, rcond=None):
    """pinv(matrix) @ vec for a symmetric PSD matrix, by an eigendecomposition
    with eigenvalues below rcond * largest treated as zero. Never inverts a
    singular matrix."""
    k = matrix.shape[0]
    if rcond is None:
        rcond = 10.0 * k * EPS32
    lam, vecs = ops.eigh(matrix)
    cutoff = rcond * ops.maximum(ops.max(lam), 0.0)
    keep = ops.logical_and(lam > cutoff, lam > TINY)
    inv = ops.where(keep, 1.0 / ops.where(keep, lam, 1.0), 0.0)
    coeffs = ops.matmul(ops.transpose(vecs), vec) * inv
    return ops.matmul(vecs, coeffs)


# --------------------------------------------------------------------------
# Quadratic programs by block principal pivoting
# --------------------------------------------------------------------------
#
# Both solvers are primal-dual active set methods (block principal pivoting,
# Júdice & Pires 1994; as in Kim & Park's NNLS, 2011): guess which bounds are
# active, solve the equality-constrained problem on that guess exactly (one
# linear solve), and exchange the indices that violate the KKT conditions
# (a free variable below its bound, an active bound with a negative
# multiplier). All violators are exchanged at once while their number keeps
# decreasing (or for `_BACKUPS` more tries), otherwise only the one with the
# largest index: that safeguard makes the method finite on positive definite
# problems, where plain exchanges can cycle. Most problems stop after 1 to 5
# solves; the loop has a budget and reports whether it stopped.

_BACKUPS = 3


def _exchange(violations, count, best, backups):
    """The indices to exchange, row-wise: (flip, best, backups)."""
    k = violations.shape[-1]
    improved = count < best
    use_block = ops.logical_or(improved, backups > 0)
    index = ops.arange(k, dtype="int32")
    last = ops.argmax(ops.where(violations, index, -1), axis=-1)
    single = ops.logical_and(ops.one_hot(last, k) > 0, violations)
    flip = ops.where(use_block[..., None], violations, single)
    best = ops.where(improved, count, best)
    backups = ops.where(improved, _BACKUPS, ops.maximum(backups - 1, 0))
    return flip, best, backups


def box_qp(hessian, linear, lower, max_iter, tol):
    """Batched `min 0.5 v^T H v - b^T v  s.t.  v >= l`, one problem per row.

    Args:
        hessian: (K, K) symmetric positive definite H, shared by the rows.
        linear: (B, K) the b of each problem.
        lower: (B, K) the bounds l.
        max_iter: the most iterations (linear solves).
        tol: tolerance on the multipliers and on feasibility, in the units
            of the (normalised) problem.

    Returns:
        (v, converged, iterations): v (B, K) with v >= l exactly; converged
        a scalar bool; iterations an int32 scalar.
    """
    k = hessian.shape[0]
    batch = lower.shape[0]
    eye = ops.eye(k, dtype="float32")
    lam0 = ops.matmul(lower, hessian) - linear
    active0 = lam0 >= -tol
    done0 = ops.all(active0)

    def cond(it, v, active, done, best, backups):
        return ops.logical_not(done)

    def body(it, v, active, done, best, backups):
        act = ops.cast(active, "float32")
        free = 1.0 - act
        matrix = (
            free[:, :, None] * hessian[None, :, :] * free[:, None, :]
            + eye[None, :, :] * act[:, None, :]
        )
        fixed = act * lower
        rhs = free * (linear - ops.matmul(fixed, hessian)) + fixed
        v_new = solve_vec(matrix, rhs)
        lam = ops.matmul(v_new, hessian) - linear
        violations = ops.logical_or(
            ops.logical_and(active, lam < -tol),
            ops.logical_and(ops.logical_not(active), v_new < lower - tol),
        )
        count = ops.sum(ops.cast(violations, "int32"), axis=1)
        flip, best, backups = _exchange(violations, count, best, backups)
        new_active = ops.logical_xor(active, flip)
        return it + 1, v_new, new_active, ops.all(count == 0), best, backups

    it, v, _, done, _, _ = ops.while_loop(
        cond,
        body,
        (
            ops.convert_to_tensor(0, "int32"),
            lower,
            active0,
            done0,
            ops.full((batch,), k + 1, "int32"),
            ops.full((batch,), _BACKUPS, "int32"),
        ),
        maximum_iterations=max_iter,
    )
    v = ops.maximum(v, lower)
    finite = ops.all(ops.isfinite(v))
    v = ops.where(finite, v, lower)
    return v, ops.logical_and(done, finite), it


def simplex_qp(hessian, linear, max_iter, tol, free0=None):
    """`min 0.5 w^T H w + c^T w  s.t.  w >= 0, sum(w) = 1`.

    Args:
        hessian: (K, K) symmetric positive definite H.
        linear: (K,) c.
        max_iter, tol: as in `box_qp`.
        free0: optional (K,) bool first guess of the support (warm start);
            every index by default.

    Returns:
        (w, converged, iterations, support): w on the simplex; support the
        final guess (for a warm start).
    """
    k = hessian.shape[0]
    eye = ops.eye(k, dtype="float32")
    w0 = ops.ones((k,), "float32") / k

    def cond(it, w, free, done, best, backups):
        return ops.logical_not(done)

    def body(it, w, free, done, best, backups):
        f = ops.cast(free, "float32")
        a = 1.0 - f
        top = f[:, None] * hessian * f[None, :] + eye * a[None, :]
        matrix = ops.concatenate(
            [
                ops.concatenate([top, -f[:, None]], axis=1),
                ops.concatenate([f, ops.zeros((1,), "float32")])[None, :],
            ],
            axis=0,
        )
        rhs = ops.concatenate([-f * linear, ops.ones((1,), "float32")])
        sol = solve_vec(matrix, rhs)
        w_new = sol[:k]
        grad = ops.matmul(hessian, w_new) + linear - sol[k]
        violations = ops.logical_or(
            ops.logical_and(free, w_new < -tol),
            ops.logical_and(ops.logical_not(free), grad < -tol),
        )
        count = ops.sum(ops.cast(violations, "int32"))
        flip, best, backups = _exchange(violations, count, best, backups)
        new_free = ops.logical_xor(free, flip)
        # Never an empty support: fall back to the best vertex.
        vertex = ops.one_hot(ops.argmin(ops.matmul(hessian, w_new) + linear), k) > 0
        new_free = ops.where(ops.any(new_free), new_free, vertex)
        return it + 1, w_new, new_free, count == 0, best, backups

    if free0 is None:
        free0 = ops.ones((k,), "bool")
    it, w, free, done, _, _ = ops.while_loop(
        cond,
        body,
        (
            ops.convert_to_tensor(0, "int32"),
            w0,
            free0,
            ops.convert_to_tensor(False),
            ops.convert_to_tensor(k + 1, "int32"),
            ops.convert_to_tensor(_BACKUPS, "int32"),
        ),
        maximum_iterations=max_iter,
    )
    w = ops.maximum(w, 0.0)
    total = ops.sum(w)
    finite = ops.logical_and(ops.all(ops.isfinite(w)), total > 0)
    w = ops.where(finite, w / ops.where(finite, total, 1.0), w0)
    return w, ops.logical_and(done, finite), it, free


# --------------------------------------------------------------------------
# The bargaining / alpha-fair system  H x = x^-p  (Nash-MTL, FairGrad)
# --------------------------------------------------------------------------

_STEPS = [0.5**i for i in range(20)]


def power_system(hessian, power, x0, max_iter, tol):
    """Solves `H x = x^-p` for x > 0 (p > 0, H symmetric positive definite).

    It is the stationarity condition of the strictly convex
    `F(x) = 0.5 x^T H x - sum_i h(x_i)` with `h'(x) = x^-p` (h = log for
    p = 1), so its solution is unique and damped Newton converges to it from
    any positive start: each step solves `(H + p diag(x^(-p-1))) dx = -(H x
    - x^-p)` and takes the largest step in 1, 1/2, ..., 2^-19 that keeps x
    positive and satisfies Armijo's condition, or cuts the backward error
    by 10% (float32 cannot resolve F's decrease near the solution); all 20
    are tried at once.

    Args:
        hessian: (K, K) H.
        power: the Python float p.
        x0: (K,) positive start (a warm start converges in 1 to 3 steps).
        max_iter: the most Newton steps.
        tol: tolerance on the backward error
            `max_i |H x - x^-p|_i / (|H| x + x^-p)_i`.

    Returns:
        (x, converged, iterations).
    """
    steps = ops.convert_to_tensor(_STEPS, "float32")
    p = float(power)

    def h(x):
        if p == 1.0:
            return ops.log(x)
        return ops.power(x, 1.0 - p) / (1.0 - p)

    def objective(xs):  # rows
        quad = 0.5 * ops.sum(ops.matmul(xs, hessian) * xs, axis=-1)
        return quad - ops.sum(h(xs), axis=-1)

    size = ops.abs(hessian)

    def residuals(xs):  # rows
        # Backward error: the residual relative to the size of its terms
        # (reachable in float32 even when H x cancels).
        target = ops.power(xs, -p)
        scale = ops.matmul(xs, size) + target
        return ops.max(ops.abs(ops.matmul(xs, hessian) - target) / scale, axis=-1)

    def residual(x):
        return residuals(x[None, :])[0]

    def cond(it, x, done):
        return ops.logical_not(done)

    def body(it, x, done):
        target = ops.power(x, -p)
        grad = ops.matmul(hessian, x) - target
        curvature = p * target / x
        dx = -solve_vec(hessian + ops.diag(curvature), grad)
        cand = x[None, :] + steps[:, None] * dx[None, :]
        feasible = ops.all(cand > 0.0, axis=1)
        # Infeasible candidates are evaluated at x (and rejected): clamping
        # them to tiny values would create float32 subnormals, which some
        # CPUs process a hundred times slower.
        safe = ops.where(feasible[:, None], cand, x[None, :])
        values = objective(safe)
        slope = ops.sum(grad * dx)
        armijo = values <= objective(x[None, :])[0] + 1e-4 * steps * slope
        # Near the solution float32 cannot resolve the decrease of F; a
        # step that cuts the backward error is then accepted instead.
        shrinks = residuals(safe) <= 0.9 * residual(x)
        accept = ops.logical_and(feasible, ops.logical_or(armijo, shrinks))
        accept = ops.logical_and(accept, ops.isfinite(values))
        moved = ops.any(accept)
        step = ops.where(moved, ops.take(steps, ops.argmax(ops.cast(accept, "int32"))), 0.0)
        x_new = x + step * dx
        x_new = ops.where(ops.all(ops.isfinite(x_new)), x_new, x)
        stop = ops.logical_or(residual(x_new) <= tol, ops.logical_not(moved))
        return it + 1, x_new, stop

    x0 = ops.convert_to_tensor(x0, "float32")
    it, x, _ = ops.while_loop(
        cond,
        body,
        (ops.convert_to_tensor(0, "int32"), x0, residual(x0) <= tol),
        maximum_iterations=max_iter,
    )
    converged = ops.logical_and(residual(x) <= tol, ops.all(ops.isfinite(x)))
    return x, converged, it


# --------------------------------------------------------------------------
# State helpers
# --------------------------------------------------------------------------


def read(variable):
    """The value of a state Variable, as a tensor that a later `assign`
    does not change (torch's `assign` writes in place into the tensor that
    reading returned)."""
    return ops.copy(ops.convert_to_tensor(variable))


def reset_variable(variable, value):
    variable.assign(ops.cast(ops.convert_to_tensor(value), variable.dtype))


def new_seed_generator(seed):
    return keras.random.SeedGenerator(seed)

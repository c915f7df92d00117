"""Every aggregator against a direct numpy transcription of its paper's
algorithm (or of the official code where the paper leaves a detail open),
on fixed matrices, in float64. The aggregators run compiled through the
training path (see `test_aggregators_properties.Runner`).

scipy is used where the official code uses it (CAGrad's SLSQP, FairGrad's
`least_squares`) and as an exact NNLS for the dual-cone projections.
"""

import keras
import numpy as np
import pytest

from multiloss import aggregators as A
from test_aggregators_properties import runner, to_np

scipy_optimize = pytest.importorskip("scipy.optimize")


def fixed_matrix(shape=(4, 6), seed=0, conflict=True):
    j = np.random.default_rng(seed).normal(size=shape)
    if conflict:
        j[1] = -0.8 * j[0] + 0.4 * j[1]
        if shape[0] > 2:
            j[2] = 0.5 * j[2] - 0.3 * j[0]
    return j.astype("float32")


MATRICES = [fixed_matrix(seed=s) for s in (0, 1, 2)] + [fixed_matrix(seed=3, conflict=False)]


def close(got, want, rtol, scale=None):
    scale = np.abs(want).max() if scale is None else scale
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def keras_orders(seed, k, steps):
    """The per-row task orders a seeded aggregator draws (same generator,
    same draws), to replay its randomness in numpy."""
    generator = keras.random.SeedGenerator(seed)
    return [np.argsort(to_np(keras.random.uniform((k, k), seed=generator)), axis=1)
            for _ in range(steps)]


# --------------------------------------------------------------------------
# Sum, Mean, NormalizedSum
# --------------------------------------------------------------------------


def test_sum_mean_normalized_sum():
    for j in MATRICES:
        j64 = j.astype(np.float64)
        close(runner("Sum", j.shape)(j)[0], j64.sum(0), 1e-5)
        close(runner("Mean", j.shape)(j)[0], j64.mean(0), 1e-5)
        n = np.linalg.norm(j64, axis=1)
        close(runner("NormalizedSum", j.shape)(j)[0], (j64 / n[:, None] * n.mean()).sum(0), 1e-5)
    j = MATRICES[0].copy()
    j[2] = 0.0
    n = np.linalg.norm(j.astype(np.float64), axis=1)
    active = n > 0
    want = (j[active] / n[active, None] * n[active].mean()).sum(0)
    close(runner("NormalizedSum", j.shape)(j)[0], want, 1e-5)


@pytest.mark.parametrize("target", ["max", "min", "unit"])
def test_normalized_sum_targets_use_the_active_tasks_only(target):
    # Every active norm above 1 and one task with a zero gradient: a target
    # that counted the inactive task's placeholder norm would be off.
    j = 3.0 * MATRICES[1]
    j[2] = 0.0
    n = np.linalg.norm(j.astype(np.float64), axis=1)
    active = n > 0
    assert n[active].min() > 1.0
    r = {"max": n[active].max(), "min": n[active].min(), "unit": 1.0}[target]
    want = (j[active] / n[active, None] * r).sum(0)
    run = runner(f"NormalizedSum_{target}", j.shape, lambda t=target: A.NormalizedSum(target=t))
    close(run(j)[0], want, 1e-5)


# --------------------------------------------------------------------------
# PCGrad (Yu et al. 2020, Algorithm 1)
# --------------------------------------------------------------------------


def np_pcgrad(j, orders):
    j = j.astype(np.float64)
    out = []
    for i in range(len(j)):
        g = j[i].copy()
        for t in orders[i]:
            if t == i:
                continue
            dot = g @ j[t]
            if dot < 0:
                g = g - dot / (j[t] @ j[t]) * j[t]
        out.append(g)
    return np.sum(out, axis=0)


def test_pcgrad_against_algorithm_1_with_its_random_orders():
    run = runner("PCGrad", (4, 6))
    orders = keras_orders(3, 4, len(MATRICES))
    state = None
    for j, order in zip(MATRICES, orders):
        d, _, state = run(j, state=state)
        close(d, np_pcgrad(j, order), 1e-5)


def test_pcgrad_order_matters_and_two_tasks_do_not_need_one():
    j = MATRICES[0]
    a = np_pcgrad(j, [[0, 1, 2, 3]] * 4)
    b = np_pcgrad(j, [[3, 2, 1, 0]] * 4)
    assert np.abs(a - b).max() > 1e-3  # the replay above is not vacuous
    j2 = fixed_matrix((2, 6), seed=4)
    d, _, _ = runner("PCGrad", (2, 6))(j2)
    close(d, np_pcgrad(j2, [[0, 1], [0, 1]]), 1e-5)


# --------------------------------------------------------------------------
# MGDA (Sener & Koltun 2018)
# --------------------------------------------------------------------------


def np_mgda_frank_wolfe(g, iters=20000):
    """Algorithm 2 of the paper (Frank-Wolfe with exact line search) on the
    Gram matrix g."""
    k = len(g)
    alpha = np.ones(k) / k
    for _ in range(iters):
        t = np.argmin(g @ alpha)
        a = alpha @ g[:, t]
        b = alpha @ g @ alpha
        c = g[t, t]
        if c <= a:
            gamma = 1.0
        elif b <= a:
            gamma = 0.0
        else:
            gamma = (b - a) / (b + c - 2 * a)
        alpha = (1 - gamma) * alpha
        alpha[t] += gamma
    return alpha


def test_mgda_against_frank_wolfe():
    for j in MATRICES:
        j64 = j.astype(np.float64)
        alpha = np_mgda_frank_wolfe(j64 @ j64.T)
        want = alpha @ j64
        d, w, _ = runner("MGDA", j.shape)(j)
        # The min-norm point is unique; Frank-Wolfe approaches it slowly.
        close(d, want, 2e-3, scale=np.abs(j64).max())
        assert d @ d <= want @ want * (1 + 1e-4) + 1e-12
        assert abs(w.sum() - 1) < 1e-5


def test_mgda_two_tasks_against_algorithm_1_closed_form():
    for seed in (5, 6, 7):
        j = fixed_matrix((2, 6), seed=seed).astype(np.float64)
        g1, g2 = j
        gamma = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
        d, w, _ = runner("MGDA", (2, 6))(j.astype("float32"))
        close(w, [gamma, 1 - gamma], 1e-4, scale=1.0)
        close(d, gamma * g1 + (1 - gamma) * g2, 1e-4)


def test_mgda_normalizations_follow_the_official_code():
    """The QP on g_k / n_k; its weights applied to the raw gradients."""
    j = MATRICES[1].astype(np.float64)
    losses = np.array([0.5, 2.0, 1.0, 4.0])
    n = np.linalg.norm(j, axis=1)
    for mode, scale in (("l2", n), ("loss", losses), ("loss+", losses * n)):
        jn = j / scale[:, None]
        alpha = np_mgda_frank_wolfe(jn @ jn.T)
        run = runner(f"MGDA_{mode}", (4, 6), lambda m=mode: A.MGDA(normalization=m))
        d, w, _ = run(j.astype("float32"), losses.astype("float32"))
        # The weights are the QP's on the normalised gradients (unique min-norm
        # point there), applied to the raw gradients.
        close(w @ jn, alpha @ jn, 2e-3, scale=np.abs(jn).max())
        close(d, w @ j, 1e-5)
        assert abs(w.sum() - 1) < 1e-5


# --------------------------------------------------------------------------
# UPGrad, DualProj (Quinton & Rey 2024): projections onto the dual cone
# --------------------------------------------------------------------------


def np_dual_cone_weights(j, u, reg=0.0, normalize=True):
    """argmin_{v >= u} v^T H v by an exact NNLS (v = u + z, z >= 0,
    ||L^T (u + z)||^2 with H = L L^T), H = G / tr(G) + reg I."""
    g = j.astype(np.float64) @ j.T.astype(np.float64)
    if normalize:
        g = g / np.trace(g)
    h = g + reg * np.eye(len(g))
    lt = np.linalg.cholesky(h).T
    z, _ = scipy_optimize.nnls(lt, -lt @ u)
    return u + z


def test_upgrad_against_the_dual_cone_projections():
    for pref in (None, [0.1, 0.4, 0.2, 0.3]):
        u = np.full(4, 0.25) if pref is None else np.asarray(pref)
        run = runner(f"UPGrad_{pref}", (4, 6), lambda p=pref: A.UPGrad(pref_vector=p))
        for j in MATRICES:
            want_w = sum(np_dual_cone_weights(j, u[i] * np.eye(4)[i], reg=1e-4) for i in range(4))
            d, w, _ = run(j)
            close(w, want_w, 1e-4)
            close(d, want_w @ j.astype(np.float64), 1e-4)


def test_upgrad_without_ridge_is_proposition_1_on_j():
    """reg_eps = 0: the projection of each g_i onto {x : J x >= 0}, by NNLS
    on J itself (no Gram matrix, no normalisation)."""
    run = runner("UPGrad_exact", (4, 6), lambda: A.UPGrad(reg_eps=0.0))
    for j in MATRICES:
        j64 = j.astype(np.float64)
        total = np.zeros(6)
        for i in range(4):
            u = np.eye(4)[i] / 4
            z, _ = scipy_optimize.nnls(j64.T, -j64.T @ u)
            projection = j64.T @ (u + z)
            assert np.all(j64 @ projection >= -1e-9)
            total += projection
        d, _, _ = run(j)
        close(d, total, 1e-4)


def test_dualproj_against_the_dual_cone_projection():
    run = runner("DualProj", (4, 6))
    for j in MATRICES:
        want_w = np_dual_cone_weights(j, np.full(4, 0.25), reg=1e-4)
        d, w, _ = run(j)
        close(w, want_w, 1e-4)
        close(d, want_w @ j.astype(np.float64), 1e-4)
    conflicting = MATRICES[0].astype(np.float64)
    assert (conflicting @ conflicting.mean(0)).min() < 0  # the projection moved it


# --------------------------------------------------------------------------
# CAGrad (Liu et al. 2021): the official code's SLSQP
# --------------------------------------------------------------------------


def np_cagrad_official(j, c=0.5, rescale=1):
    j = j.astype(np.float64)
    k = len(j)
    gg = j @ j.T
    g0_norm = np.sqrt(gg.mean() + 1e-8)
    x0 = np.ones(k) / k
    coef = c * g0_norm + 1e-8

    def objective(x):
        return x @ gg @ x0 + coef * np.sqrt(x @ gg @ x + 1e-8)

    res = scipy_optimize.minimize(
        objective, x0, bounds=[(0, 1)] * k,
        constraints={"type": "eq", "fun": lambda x: 1 - x.sum()},
        options={"ftol": 1e-14, "maxiter": 2000},
    )
    gw = res.x @ j
    g = j.mean(0) + coef / (np.linalg.norm(gw) + 1e-8) * gw
    return {0: g, 1: g / (1 + c**2), 2: g / (1 + c)}[rescale]


@pytest.mark.parametrize("c,rescale", [(0.5, 1), (1.0, 0), (0.2, 2)])
def test_cagrad_against_the_official_slsqp(c, rescale):
    run = runner(f"CAGrad_{c}_{rescale}", (4, 6), lambda: A.CAGrad(c=c, rescale=rescale))
    for j in MATRICES:
        d, _, _ = run(j)
        close(d, np_cagrad_official(j, c, rescale), 2e-3)


# --------------------------------------------------------------------------
# IMTL-G (Liu et al. 2021): the paper's closed form
# --------------------------------------------------------------------------


def np_imtlg_paper(j):
    g = j.astype(np.float64)
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    d_mat = g[0:1] - g[1:]
    u_mat = u[0:1] - u[1:]
    alpha = g[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    alpha = np.concatenate([[1 - alpha.sum()], alpha])
    return alpha


def test_imtlg_against_the_paper_closed_form():
    run = runner("IMTLG", (4, 6))
    for j in MATRICES:
        alpha = np_imtlg_paper(j)
        d, w, _ = run(j)
        close(w, alpha, 1e-4)
        u = j / np.linalg.norm(j, axis=1, keepdims=True)
        projections = u.astype(np.float64) @ d
        close(projections, np.full(4, projections.mean()), 1e-4)


def test_imtlg_parallel_gradients_use_a_pseudo_inverse():
    j = MATRICES[0].copy()
    j[1] = 2.0 * j[0]  # the paper's D U^T is singular here
    d, w, _ = runner("IMTLG", (4, 6))(j)
    assert np.all(np.isfinite(w)) and abs(w.sum() - 1) < 1e-5
    u = j / np.linalg.norm(j, axis=1, keepdims=True)
    projections = u.astype(np.float64) @ d
    close(projections, np.full(4, projections.mean()), 1e-4)


# --------------------------------------------------------------------------
# Nash-MTL (Navon et al. 2022) and FairGrad (Ban & Ji 2024)
# --------------------------------------------------------------------------


def np_power_equation(g, power, x0):
    """Solves G x = x^-p (x > 0) as the FairGrad official code does:
    scipy least_squares from x0 with bounds (0, inf)."""
    res = scipy_optimize.least_squares(
        lambda x: g @ x - np.power(1.0 / x, power), x0, bounds=(0, np.inf),
        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=10000,
    )
    return res.x


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fairgrad_against_the_official_least_squares(alpha):
    name = "FairGrad" if alpha == 1.0 else "FairGrad_a2"
    run = runner(name, (4, 6))
    for j in MATRICES:
        g = j.astype(np.float64) @ j.T.astype(np.float64)
        w_ref = np_power_equation(g, 1.0 / alpha, np.ones(4) / 4)
        np.testing.assert_allclose(g @ w_ref, w_ref ** (-1.0 / alpha), rtol=1e-8)
        d, w, _ = run(j)
        close(w, w_ref, 1e-4)
        close(d, w_ref @ j.astype(np.float64), 1e-4)


def test_fairgrad_gives_a_zero_gradient_task_no_weight():
    j = MATRICES[0].copy()
    j[3] = 0.0
    _, w, _ = runner("FairGrad", (4, 6))(j)
    assert w[3] == 0.0
    g = j[:3].astype(np.float64) @ j[:3].T.astype(np.float64)
    close(w[:3], np_power_equation(g, 1.0, np.ones(3) / 3), 1e-4)


def test_nashmtl_against_the_bargaining_equation_with_steps():
    """alpha solves (G / ||G||_F) alpha = 1 / alpha; d is clipped to
    max_norm; with update_weights_every=2 every other step reuses alpha."""
    run = runner("NashMTL_every2", (4, 6), lambda: A.NashMTL(update_weights_every=2,
                                                             max_norm=1.0))
    state = None
    previous = None
    for step, j in enumerate(MATRICES):
        g = j.astype(np.float64) @ j.T.astype(np.float64)
        if step % 2 == 0:
            alpha = np_power_equation(g / np.linalg.norm(g), 1.0, np.ones(4))
            previous = alpha
        else:
            alpha = previous
        norm = np.sqrt(alpha @ g @ alpha)
        want = alpha * min(1.0, 1.0 / norm)
        d, w, state = run(j, state=state)
        close(w, want, 1e-4)
        close(d, want @ j.astype(np.float64), 1e-4)
        close(run.state_of(state, "previous_alpha"), alpha, 1e-4)


# --------------------------------------------------------------------------
# Aligned-MTL (Senushkin et al. 2023)
# --------------------------------------------------------------------------


def np_aligned_mtl(j, mode="min"):
    g = j.astype(np.float64) @ j.T.astype(np.float64)
    lam, v = np.linalg.eigh(g)
    tol = lam.max() * len(g) * np.finfo(np.float32).eps
    rank = int((lam > tol).sum())
    order = np.argsort(lam)[::-1]
    lam, v = lam[order][:rank], v[:, order][:, :rank]
    scale = {"min": lam[-1], "median": np.sort(lam)[(rank - 1) // 2], "rmse": lam.mean()}[mode]
    b = np.sqrt(scale) * v @ np.diag(1 / np.sqrt(lam)) @ v.T
    return b.sum(axis=0)


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_aligned_mtl_against_algorithm_1(mode):
    run = runner(f"AlignedMTL_{mode}", (4, 6), lambda: A.AlignedMTL(scale_mode=mode))
    for j in MATRICES + [MATRICES[0] * np.array([[1], [1], [0], [1]], "float32")]:
        d, w, _ = run(j)
        want = np_aligned_mtl(j, mode)
        close(w, want, 1e-3)
        close(d, want @ j.astype(np.float64), 1e-3)


def test_aligned_mtl_keeps_a_small_eigenvalue_above_the_rank_cut():
    # Two nearly parallel gradients: the Gram matrix's smallest eigenvalue is
    # ~6e-5 of its largest, far above the numerical rank cut (K float32 eps
    # of the largest), so it is kept and sets the scale in "min" mode.
    j = fixed_matrix(seed=0, conflict=False)
    j[1] = j[0] + 0.02 * np.random.default_rng(1).normal(size=6).astype("float32")
    lam = np.linalg.eigvalsh(j.astype(np.float64) @ j.T.astype(np.float64))
    assert 1e-5 < lam.min() / lam.max() < 1e-3
    run = runner("AlignedMTL_min", (4, 6), lambda: A.AlignedMTL(scale_mode="min"))
    _, w, _ = run(j)
    close(w, np_aligned_mtl(j, "min"), 1e-2)


# --------------------------------------------------------------------------
# ConFIG (Liu et al. 2024)
# --------------------------------------------------------------------------


def np_config(j, weights=None):
    g = j.astype(np.float64)
    weights = np.ones(len(g)) if weights is None else np.asarray(weights)
    units = g / np.linalg.norm(g, axis=1, keepdims=True)
    best = np.linalg.lstsq(units, weights, rcond=None)[0]
    unit = best / np.linalg.norm(best)
    return np.sum(g @ unit) * unit


def np_config_two(g1, g2):
    """The official code's closed form for two gradients."""
    n1, n2 = np.linalg.norm(g1), np.linalg.norm(g2)
    u1, u2 = g1 / n1, g2 / n2
    cos = u1 @ u2
    or2 = g1 - n1 * cos * u2
    or1 = g2 - n2 * cos * u1
    uo1, uo2 = or1 / np.linalg.norm(or1), or2 / np.linalg.norm(or2)
    # equal weights: uo1 is orthogonal to u1 and uo2 to u2, so the cosines
    # of c1 uo1 + c2 uo2 with g2 and g1 are c1 u2.uo1 and c2 u1.uo2
    c1 = 1.0 / (u2 @ uo1)
    c2 = 1.0 / (u1 @ uo2)
    best = c1 * uo1 + c2 * uo2
    unit = best / np.linalg.norm(best)
    return (g1 @ unit + g2 @ unit) * unit


def test_config_against_the_official_least_squares():
    for pref in (None, [1.0, 2.0, 0.5, 1.0]):
        run = runner(f"ConFIG_{pref}", (4, 6), lambda p=pref: A.ConFIG(pref_vector=p))
        for j in MATRICES:
            d, _, _ = run(j)
            close(d, np_config(j, pref), 1e-4)


def test_config_keeps_a_small_eigenvalue_above_the_default_cut():
    # Two nearly parallel gradients: the unit vectors' Gram matrix has its
    # smallest eigenvalue at ~6e-5 of the largest, above the default cut of
    # the pseudo-inverse (10 K float32 eps): the solution is the exact least
    # squares one, which a coarser cut would change.
    j = fixed_matrix(seed=0, conflict=False)
    j[1] = j[0] + 0.01 * np.random.default_rng(1).normal(size=6).astype("float32")
    units = j.astype(np.float64) / np.linalg.norm(j.astype(np.float64), axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(units @ units.T)
    assert 1e-5 < lam.min() / lam.max() < 1e-3
    close(runner("ConFIG", j.shape)(j)[0], np_config(j), 1e-2)


def test_config_with_more_tasks_than_coordinates():
    # K > P: the unit gradients have no exact solution, so the least-squares
    # direction can have a negative projection on some task; the length is
    # the plain sum of the projections, as the official code takes it.
    j = np.random.default_rng(5).normal(size=(5, 3)).astype("float32")
    want = np_config(j)
    units = j / np.linalg.norm(j, axis=1, keepdims=True)
    assert np.any(units @ (want / np.linalg.norm(want)) < 0)
    close(runner("ConFIG", j.shape)(j)[0], want, 1e-4)


def test_config_two_tasks_matches_the_official_closed_form():
    run = runner("ConFIG", (2, 6))
    for seed in (8, 9):
        j = fixed_matrix((2, 6), seed=seed)
        d, _, _ = run(j)
        want = np_config_two(*j.astype(np.float64))
        close(d, want, 1e-4)
        close(d, np_config(j), 1e-4)


# --------------------------------------------------------------------------
# GradDrop (Chen et al. 2020, Algorithm 1)
# --------------------------------------------------------------------------


def np_graddrop(j, u, leak):
    j = j.astype(np.float64)
    purity = 0.5 * (1 + j.sum(0) / np.abs(j).sum(0))
    mask = (purity > u) * (j > 0) + (purity < u) * (j < 0)
    leak = np.broadcast_to(np.asarray(leak, np.float64), (len(j),))[:, None]
    return ((leak + (1 - leak) * mask) * j).sum(0)


@pytest.mark.parametrize("leak", [0.0, [0.2, 0.0, 0.5, 1.0]])
def test_graddrop_against_algorithm_1_with_its_draws(leak):
    run = runner(f"GradDrop_{leak}", (4, 6), lambda: A.GradDrop(leak=leak, seed=5))
    generator = keras.random.SeedGenerator(5)
    state = None
    for j in MATRICES:
        u = to_np(keras.random.uniform((6,), seed=generator))
        d, w, state = run(j, state=state)
        close(d, np_graddrop(j, u, leak), 1e-5)
        assert np.all((w >= 0) & (w <= 1 + 1e-6))
    frozen = runner(f"GradDrop_{leak}", (4, 6), lambda: A.GradDrop(leak=leak, seed=5),
                    training=False)
    d, _, _ = frozen(MATRICES[0])
    close(d, np_graddrop(MATRICES[0], np.full(6, 0.5), leak), 1e-5)


def test_graddrop_drops_both_signs_where_the_purity_ties_the_draw():
    # Algorithm 1 keeps a positive component where P > U and a negative one
    # where P < U: at P = U = 0.5 (training=False, a coordinate whose
    # gradients cancel) it keeps neither.
    j = np.array([[1.0, 2.0], [-1.0, 1.0]], "float32")
    frozen = runner("GradDrop_tie", j.shape, lambda: A.GradDrop(seed=5), training=False)
    d, _, _ = frozen(j)
    want = np_graddrop(j, np.full(2, 0.5), 0.0)
    assert want[0] == 0.0
    close(d, want, 1e-6)


# --------------------------------------------------------------------------
# GradVac (Wang et al. 2021, Algorithm 1)
# --------------------------------------------------------------------------


def np_gradvac(j, targets, orders, beta):
    j = j.astype(np.float64)
    targets = targets.copy()
    pc = j.copy()
    for i in range(len(j)):
        for t in orders[i]:
            if t == i:
                continue
            norm_i, norm_t = np.linalg.norm(pc[i]), np.linalg.norm(j[t])
            phi = pc[i] @ j[t] / (norm_i * norm_t + 1e-8)
            hat = targets[i, t]
            if phi < hat:
                w = norm_i * (hat * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - hat**2)) / (
                    norm_t * np.sqrt(1 - hat**2) + 1e-8)
                pc[i] = pc[i] + w * j[t]
            targets[i, t] = (1 - beta) * hat + beta * phi
    return pc.sum(0), targets


@pytest.mark.parametrize("beta", [0.5, 0.1])
def test_gradvac_against_algorithm_1_over_several_steps(beta):
    run = runner(f"GradVac_{beta}", (4, 6), lambda: A.GradVac(beta=beta, seed=3))
    orders = keras_orders(3, 4, 6)
    targets = np.zeros((4, 4))
    state = None
    fired = False
    for step in range(6):
        j = MATRICES[step % len(MATRICES)]
        want, new_targets = np_gradvac(j, targets, orders[step], beta)
        fired = fired or np.any(new_targets > targets + 1e-9)
        targets = new_targets
        # Scale-free coefficients: compare on gradients of unit largest norm.
        d, _, state = run(j, state=state)
        close(d, want, 1e-4)
        close(run.state_of(state, "targets"), targets, 1e-4, scale=1.0)
    assert fired


# --------------------------------------------------------------------------
# DB-MTL (Lin et al. 2023; LibMTL's DB_MTL)
# --------------------------------------------------------------------------


def np_dbmtl(jacobians, losses, beta=0.9, sigma=0.0, weights=None):
    """DB-MTL's updates over consecutive steps: the log-gradients
    c g / (c L + eps) of the tasks c L (LibMTL's `DB_MTL`, with fixed task
    weights c), their moving average with rate beta / t^sigma, each task
    rescaled to the largest average's norm."""
    buffer, updates = 0.0, []
    c = np.ones(len(losses[0])) if weights is None else np.asarray(weights, np.float64)
    for step, (j, l) in enumerate(zip(jacobians, losses), start=1):
        log_grads = c[:, None] * j.astype(np.float64) / (c * l + 1e-8)[:, None]
        buffer = log_grads + beta / step**sigma * (buffer - log_grads)
        norms = np.linalg.norm(buffer, axis=1)
        alpha = norms.max() / (norms + 1e-8)
        updates.append(((alpha[:, None] * buffer).sum(0), alpha))
    return updates


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_dbmtl_against_the_reference_over_several_steps(sigma):
    run = runner(f"DBMTL_{sigma}", (4, 6), lambda: A.DBMTL(sigma=sigma))
    state = None
    rng = np.random.default_rng(3)
    jacobians = [MATRICES[step % len(MATRICES)] for step in range(1, 5)]
    losses = [rng.uniform(0.1, 5.0, size=4) for _ in jacobians]
    for j, l, (want, alpha) in zip(jacobians, losses, np_dbmtl(jacobians, losses, sigma=sigma)):
        d, w, state = run(j, l.astype("float32"), state)
        close(d, want, 1e-4)
        close(w, alpha, 1e-4)


def test_dbmtl_with_task_weights_is_the_rule_on_the_weighted_tasks():
    # With fixed weights c, DB-MTL sees the tasks c_k L_k: its log-gradient
    # is c g / (c L + eps), the rule run on (diag(c) J, c L).
    c = np.array([1.0, 3.0, 0.5, 2.0], "float32")
    weighted = runner("DBMTL_weighted", (4, 6), lambda: A.DBMTL())
    weighted.agg.assign(c)
    state = [keras.ops.convert_to_tensor(v) for v in weighted.variables]
    rng = np.random.default_rng(4)
    jacobians = [MATRICES[step % len(MATRICES)] for step in range(1, 4)]
    losses = [rng.uniform(0.1, 5.0, size=4).astype("float32") for _ in jacobians]
    for j, l, (want, _) in zip(jacobians, losses, np_dbmtl(jacobians, losses, weights=c)):
        d, _, state = weighted(j, l, state)
        close(d, want, 1e-4)


# --------------------------------------------------------------------------
# GradNorm (Chen et al. 2018)
# --------------------------------------------------------------------------


def np_gradnorm_step(weights, norms, losses, initial, alpha=1.5, lr=0.025):
    k = len(weights)
    ratio = losses / initial
    rate = ratio / ratio.mean()
    g = weights * norms
    gbar = g.mean()
    target = gbar * rate**alpha
    grad = np.sign(g - target) * norms  # d L_grad / d w, target held constant
    new = np.maximum(weights - lr * grad / gbar, 1e-6 * k)
    return k * new / new.sum()


def test_gradnorm_against_the_paper_update_over_several_steps():
    run = runner("GradNorm", (4, 6))
    rng = np.random.default_rng(4)
    weights = np.ones(4)
    initial = None
    state = None
    for step in range(5):
        j = (MATRICES[step % len(MATRICES)] * np.array([[1.0], [5.0], [0.2], [1.0]])).astype(
            "float32")
        losses = rng.uniform(0.5, 3.0, size=4)
        initial = losses if initial is None else initial
        d, w, state = run(j, losses.astype("float32"), state)
        close(w, weights, 1e-5)  # the weights in force are the ones before the update
        close(d, weights @ j.astype(np.float64), 1e-5)
        norms = np.linalg.norm(j.astype(np.float64), axis=1)
        weights = np_gradnorm_step(weights, norms, losses, initial)
        close(run.state_of(state, "loss_weights"), weights, 1e-5)
        assert abs(run.state_of(state, "loss_weights").sum() - 4) < 1e-5
    assert np.abs(weights - 1).max() > 0.05


def test_gradnorm_floors_a_weight_a_large_step_would_make_negative():
    # A learning rate of 10 drives the task with the largest gradient far
    # below 0; the update floors it at 1e-6 K before renormalising.
    run = runner("GradNorm_lr10", (4, 6), lambda: A.GradNorm(learning_rate=10.0))
    j = (MATRICES[0] * np.array([[1.0], [50.0], [0.2], [1.0]])).astype("float32")
    losses = np.array([1.0, 2.0, 1.5, 0.5])
    norms = np.linalg.norm(j.astype(np.float64), axis=1)
    g = norms  # weights 1 at the first step
    assert np.any(1.0 - 10.0 * np.sign(g - g.mean()) * norms / g.mean() < 1e-6 * 4)
    _, _, state = run(j, losses.astype("float32"), None)
    want = np_gradnorm_step(np.ones(4), norms, losses, losses, lr=10.0)
    got = run.state_of(state, "loss_weights")
    close(got, want, 1e-5)
    floored = want < 1e-4  # tiny beside the others: compared on its own scale
    assert np.any(floored)
    np.testing.assert_allclose(got[floored], want[floored], rtol=1e-3)

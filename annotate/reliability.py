"""Annotator reliability models and bias diagnostics: pure functions over DataFrames.

- :func:`dawid_skene` — Dawid & Skene (1979): per-annotator confusion matrices and posterior item labels by EM,
  for categorical labels. It follows crowd-kit's ``DawidSkene`` step for step (majority-vote start, the same
  E and M steps), vectorised with sparse matrices so a million labels take a fraction of a second.
- :func:`noisy_bradley_terry` — a Bradley-Terry model for pairwise comparisons that allows ties (Davidson
  1970) with a per-annotator skill and position bias, in the spirit of crowd-kit's ``NoisyBradleyTerry``
  (which cannot take ties), fitted by maximum likelihood.
- :func:`position_bias` and :func:`length_bias` — how often each annotator (and everyone) picks the response
  shown first / the longer response, with exact two-sided binomial tests against 1/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import expit

# scipy.optimize and scipy.stats are imported where they are used: together they take over a second to import,
# which the agreement page (it needs only Dawid-Skene) should not pay.

# crowd-kit's floor for probabilities, so log(0) never happens; the same value keeps the two comparable.
EPS = 1e-10


# --- Dawid-Skene --------------------------------------------------------------------------------------------


@dataclass
class DawidSkeneResult:
    """What :func:`dawid_skene` estimates.

    ``labels``: the most probable true label of each item. ``posteriors``: items × classes, rows sum to 1.
    ``priors``: class shares. ``errors``: a frame indexed by (annotator, observed label) with a column per true
    label, each (annotator, true label) column summing to 1 — crowd-kit's ``errors_`` layout. ``accuracy``: per
    annotator, Σ_c prior_c · P(says c | truth c), the chance they give the true label, NaN where it cannot be
    estimated, with the reason in ``unestimated`` (annotator → text; see :func:`unestimable_annotators`).
    ``log_likelihood``: the marginal log-likelihood per label after each iteration. ``n_iter``: the EM
    iterations run; ``converged``: whether the last one changed no posterior by ``tol`` or more (False when
    ``max_iter`` stopped it first).
    """

    labels: pd.Series
    posteriors: pd.DataFrame
    priors: pd.Series
    errors: pd.DataFrame
    accuracy: pd.Series
    log_likelihood: list[float]
    n_iter: int
    converged: bool
    unestimated: dict

    def convergence(self) -> dict:
        """``{"iterations", "converged"}``, JSON-safe: what a dataset card or report records of the fit."""
        return {"iterations": int(self.n_iter), "converged": bool(self.converged)}


# EM's cap: far above what real data needs (a few dozen to a couple of hundred iterations), so that stopping
# at the cap means "did not converge", which the result says.
DS_MAX_ITER = 500
# The convergence test: no posterior moved by this much in the last iteration. A test on the likelihood alone
# (crowd-kit's) can stop while posteriors still drift on a flat likelihood; near a tie that flips labels.
DS_TOL = 1e-6


def dawid_skene(labels: pd.DataFrame, max_iter: int = DS_MAX_ITER, tol: float | None = DS_TOL) -> DawidSkeneResult:
    """Dawid-Skene by EM over a label frame (``item``, ``annotator``, ``label``), run to its fixed point.

    Starts from the majority-vote shares; one EM step is the M-step (confusion matrices and class priors from
    the posteriors) then the E-step (posteriors from them). ``tol=None`` runs exactly ``max_iter`` plain EM steps
    and reproduces crowd-kit's ``DawidSkene(max_iter, tol=-inf)``: same posteriors and confusion matrices up to
    float rounding (the tests hold them to 1e-9).

    With a ``tol`` (the default), EM is accelerated by SQUAREM (Varadhan & Roland 2008, scheme S3): each cycle
    takes two EM steps θ₁ = F(θ₀), θ₂ = F(θ₁) on the parameters θ (priors and confusion matrices), extrapolates
    to θ′ = θ₀ − 2αr + α²v with r = θ₁ − θ₀, v = θ₂ − 2θ₁ + θ₀ and α = −‖r‖/‖v‖ (at most −1, where θ′ = θ₂),
    clips θ′ back onto the simplexes, and goes on from θ′ when its likelihood is at least θ₂'s, else from θ₂
    (the plain double step). So ``log_likelihood`` (per label, one entry per point the fit goes on from) never
    decreases, as with EM. The fit stops at the fixed point: when an EM step from the current point moves no
    posterior by ``tol`` or more — the plain EM rule, so ``converged`` means the same with or without the
    acceleration — or after ``max_iter`` EM steps (then ``converged`` is False). It lands where plain EM would
    after thousands of iterations, in a few dozen EM steps.

    ``n_iter`` counts EM steps (E-step plus M-step, a plain iteration's work): three per SQUAREM cycle, the two
    EM steps and the step from the extrapolated point (its E-step is the likelihood check; when θ′ is kept its
    M-step starts the next cycle, SQUAREM's stabilising step).

    Example::

        >>> frame = pd.DataFrame({"item": [1, 1, 2, 2], "annotator": ["a", "b", "a", "b"], "label": ["x", "x", "y", "y"]})
        >>> result = dawid_skene(frame)
        >>> result.labels.tolist(), result.converged
        (['x', 'y'], True)

    Confusion counts are floored at 1e-10 (as crowd-kit does) for the labels an annotator used, so one stray
    label never has probability 0; labels an annotator never used keep probability 0.
    """
    item, items = pd.factorize(labels["item"])
    annotator, annotators = pd.factorize(labels["annotator"])
    label, classes = pd.factorize(labels["label"], sort=True)
    n_items, n_annotators, k = len(items), len(annotators), len(classes)
    if n_items == 0:
        empty = pd.Series(dtype=float)
        return DawidSkeneResult(empty, pd.DataFrame(), empty, pd.DataFrame(), empty, [], 0, True, {})

    # incidence[i, a*k + l] = how often annotator a gave label l to item i: both steps are products with it.
    column = annotator.astype(np.int64) * k + label
    incidence = sparse.csr_matrix((np.ones(len(item)), (item, column)), shape=(n_items, n_annotators * k))
    incidence.sum_duplicates()
    transposed = incidence.T.tocsr()
    used = np.asarray(transposed.sum(axis=1)).ravel().reshape(n_annotators, k, 1) > 0
    n_labels = len(item)

    def m_step(posteriors: np.ndarray) -> np.ndarray:
        counts = (transposed @ posteriors).reshape(n_annotators, k, k)  # [annotator, observed, true]
        counts = np.where(used, np.maximum(counts, EPS), 0.0)
        return counts / counts.sum(axis=1, keepdims=True)

    def e_step(priors: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, float]:
        """Posteriors and the log-likelihood per label at (priors, errors)."""
        with np.errstate(divide="ignore"):
            log_errors = np.where(errors > 0, np.log(np.where(errors > 0, errors, 1.0)), 0.0)
        log_joint = np.log(np.maximum(priors, EPS)) + incidence @ log_errors.reshape(n_annotators * k, k)
        # Normalise in log space (log-sum-exp by hand: scipy's general version costs more than the EM step).
        top = log_joint.max(axis=1, keepdims=True)
        joint = np.exp(log_joint - top)
        total = joint.sum(axis=1, keepdims=True)
        return joint / total, float((top + np.log(total)).sum() / n_labels)

    majority = np.zeros((n_items, k))
    np.add.at(majority, (item, label), 1.0)
    posteriors = majority / majority.sum(axis=1, keepdims=True)
    priors = posteriors.mean(axis=0)
    errors = m_step(posteriors)

    history: list[float] = []
    done, converged = 0, False
    if tol is None:
        for _ in range(max_iter):
            posteriors, log_likelihood = e_step(priors, errors)
            history.append(log_likelihood)
            priors = posteriors.mean(axis=0)
            errors = m_step(posteriors)
        done = max_iter
    else:
        posteriors, history, done, converged = _squarem(posteriors, e_step, m_step, max_iter, tol)
        priors, errors = posteriors.mean(axis=0), m_step(posteriors)

    index = pd.Index(items, name="item")
    class_index = pd.Index(classes, name="label")
    posterior_frame = pd.DataFrame(posteriors, index=index, columns=class_index)
    error_index = pd.MultiIndex.from_product([annotators, classes], names=["annotator", "label"])
    error_frame = pd.DataFrame(errors.reshape(n_annotators * k, k), index=error_index, columns=class_index)
    accuracy = np.einsum("c,acc->a", priors, errors)
    unestimated = unestimable_annotators(labels)
    accuracy = np.where(pd.Index(annotators).isin(list(unestimated)), np.nan, accuracy)
    return DawidSkeneResult(
        labels=pd.Series(classes[posteriors.argmax(axis=1)], index=index, name="label"),
        posteriors=posterior_frame,
        priors=pd.Series(priors, index=class_index, name="prior"),
        errors=error_frame,
        accuracy=pd.Series(accuracy, index=pd.Index(annotators, name="annotator"), name="accuracy"),
        log_likelihood=history,
        n_iter=done,
        converged=converged,
        unestimated=unestimated,
    )


def _squarem(posteriors, e_step, m_step, max_iter: int, tol: float):
    """Dawid-Skene's EM accelerated by SQUAREM (Varadhan & Roland 2008, scheme S3) on the posteriors, from the
    majority shares ``posteriors``; see :func:`dawid_skene`.

    The EM map is G(T) = E-step(M-step(T)) on posteriors T (items × classes). Each cycle, from T₀: T₁ = G(T₀),
    T₂ = G(T₁); r = T₁ − T₀, v = T₂ − 2T₁ + T₀, α = −‖r‖/‖v‖ clipped to at most −1; T′ = T₀ − 2αr + α²v,
    clipped at 0 and each row renormalised. The M-step of T′ is the extrapolated parameter θ′; the cycle goes
    on from its E-step (G(T′), the stabilising EM step) when its log-likelihood is at least that of T₂'s
    parameters, else from T₂. Returns (posteriors, log-likelihood history, EM steps, converged).
    """
    history: list[float] = []
    done = 0

    def em_step(previous):
        """G(previous) and the log-likelihood of the parameters it came from (the M-step of ``previous``)."""
        nonlocal done
        current, log_likelihood = e_step(previous.mean(axis=0), m_step(previous))
        done += 1
        return current, log_likelihood

    # The first step from the majority shares is plain EM's first iteration.
    current, log_likelihood = em_step(posteriors)
    history.append(log_likelihood)
    converged = False
    while done < max_iter:
        first, log_likelihood = em_step(current)
        history.append(log_likelihood)
        if done == max_iter:
            current = first
            break
        second, log_likelihood = em_step(first)
        history.append(log_likelihood)
        r = first - current
        v = second - 2.0 * first + current
        # The fixed point is reached when the EM step moves no posterior by tol, and the steps shrink fast
        # enough that what is left to go, δ₂·ρ/(1 − ρ) at the observed rate ρ = δ₂/δ₁, is under tol too.
        step1, step2 = np.abs(r).max(), np.abs(second - first).max()
        rate = step2 / step1 if step1 > 0 else 0.0
        if step2 < tol and rate < 1.0 and step2 * rate < tol * (1.0 - rate):
            current, converged = second, True
            break
        norm_v = np.linalg.norm(v)
        alpha = min(-np.linalg.norm(r) / norm_v, -1.0) if norm_v > 0 else -1.0
        if alpha == -1.0 or done == max_iter:  # T′ = T₂, or no step left to try it
            current = second
            continue
        extrapolated = np.maximum(current - 2.0 * alpha * r + alpha * alpha * v, 0.0)
        extrapolated /= extrapolated.sum(axis=1, keepdims=True)
        stabilised, log_likelihood = em_step(extrapolated)
        if np.isfinite(log_likelihood) and log_likelihood >= history[-1]:
            history.append(log_likelihood)
            current = stabilised
        else:  # the extrapolation lost likelihood: keep the plain double step
            current = second
    return current, history, done, converged


def unestimable_annotators(labels: pd.DataFrame) -> dict:
    """Annotators whose accuracy nothing in ``labels`` (``item``, ``annotator``, ``label``) can estimate, with
    the reason: annotator → text.

    A Dawid-Skene accuracy is only measured against other annotators. With one annotator the posteriors are
    their own labels; an annotator who shares no item with anyone is likewise their own reference; and where
    every label is the same there is nothing to be wrong about. Each would read as a perfect 0.99999…
    """
    if labels.empty:
        return {}
    annotators = pd.unique(labels["annotator"])
    if len(annotators) == 1:
        return {annotators[0]: "only one annotator: there is no one to compare with"}
    if labels["label"].nunique() == 1:
        reason = "every label in the data is the same: nothing tells a careful annotator from a careless one"
        return {a: reason for a in annotators}
    others = labels.groupby("item")["annotator"].transform("nunique")
    shared = set(labels.loc[others > 1, "annotator"])
    return {a: "shares no item with another annotator" for a in annotators if a not in shared}


def majority_vote(labels: pd.DataFrame) -> pd.Series:
    """The most frequent label of each item; ties go to the label that sorts first."""
    counts = labels.groupby(["item", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["item", "n", "label"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates("item").set_index("item")["label"]


# --- Bradley-Terry with ties, skill and position bias --------------------------------------------------------

FIRST, SECOND, TIE = "first", "second", "tie"


@dataclass
class BradleyTerryResult:
    """What :func:`noisy_bradley_terry` estimates.

    ``scores``: log-strength of each compared object (centred on 0). ``tie``: Davidson's ν (ties are likely in
    proportion to ν·√(π_i π_j)); ``tie_probability``: the chance of a tie between equal objects, ν / (2 + ν).
    ``skill``: per annotator, the probability γ that a vote follows merit. ``first_when_guessing``: per annotator,
    the probability q of picking the response shown first when a vote does not follow merit (crowd-kit's
    "bias"). ``position_bias``: per annotator, the probability of picking the response shown first between two
    equally good responses (ties aside), γ/2 + (1 − γ)q: 0.5 is no bias, and unlike q it is well determined
    even for annotators who rarely stray from merit.
    """

    scores: pd.Series
    tie: float
    tie_probability: float
    skill: pd.Series
    position_bias: pd.Series
    first_when_guessing: pd.Series
    log_likelihood: float
    converged: bool
    n_iter: int


def noisy_bradley_terry(
    comparisons: pd.DataFrame,
    *,
    annotator_effects: bool = True,
    regularization: float = 1e-2,
    max_iter: int = 500,
    tol: float = 1e-9,
) -> BradleyTerryResult:
    """Fit a Davidson–Bradley-Terry model with per-annotator skill and position bias by maximum likelihood.

    ``comparisons`` has one row per vote: ``annotator``, ``first`` and ``second`` (the objects, e.g. response
    ids, in the order shown) and ``outcome``: ``"first"``, ``"second"`` or ``"tie"``.

    The model (a vote of annotator a between f shown first and g shown second, d = s_f − s_g):

    - with probability γ_a the vote follows merit, by Davidson (1970):
      P(f) = e^{d/2} / D, P(g) = e^{−d/2} / D, P(tie) = ν / D, with D = e^{d/2} + e^{−d/2} + ν;
    - otherwise it ignores merit: a tie with the probability of a tie between equals, θ = ν / (2 + ν), else f
      with probability q_a (``first_when_guessing``) and g with 1 − q_a.

    This is crowd-kit's noisy Bradley-Terry mixture (skill γ, bias q) extended to ties. With
    ``annotator_effects=False``, γ = 1 and the model is plain Davidson. The log-likelihood and its gradient
    are vectorised over votes (``np.bincount`` per parameter) and maximised by L-BFGS-B, with a Gaussian
    penalty ``regularization``·Σ(s² + logit(γ)² + logit(q)²)/2 that keeps scores finite when an object always
    wins and pulls annotators with few votes towards γ = 1/2, q = 1/2.
    """
    objects_codes, objects = pd.factorize(pd.concat([comparisons["first"], comparisons["second"]], ignore_index=True))
    n = len(comparisons)
    first, second = objects_codes[:n], objects_codes[n:]
    annotator, annotators = pd.factorize(comparisons["annotator"])
    outcome = comparisons["outcome"].to_numpy()
    unknown = set(pd.unique(outcome)) - {FIRST, SECOND, TIE}
    if unknown:
        raise ValueError(f"outcome must be 'first', 'second' or 'tie', not {sorted(map(str, unknown))}")
    is_first, is_second, is_tie = outcome == FIRST, outcome == SECOND, outcome == TIE
    n_objects, n_annotators = len(objects), len(annotators)
    # Parameter vector: scores, log ν, then logit γ and logit q per annotator.
    s_end = n_objects
    g_end = s_end + 1 + n_annotators

    def unpack(x):
        s = x[:s_end]
        log_nu = x[s_end]
        if annotator_effects:
            eta, rho = x[s_end + 1 : g_end], x[g_end:]
        else:
            eta, rho = np.full(n_annotators, 40.0), np.zeros(n_annotators)
        return s, log_nu, eta, rho

    def objective(x):
        s, log_nu, eta, rho = unpack(x)
        nu = np.exp(log_nu)
        d = s[first] - s[second]
        half = d / 2.0
        # Davidson probabilities, stably: divide through by e^{|d|/2}.
        big = np.abs(half)
        e_f, e_s, e_t = np.exp(half - big), np.exp(-half - big), nu * np.exp(-big)
        denominator = e_f + e_s + e_t
        p_f, p_s, p_t = e_f / denominator, e_s / denominator, e_t / denominator
        gamma = expit(eta)[annotator]
        q = expit(rho)[annotator]
        theta = nu / (2.0 + nu)
        merit = np.where(is_first, p_f, np.where(is_second, p_s, p_t))
        noise = np.where(is_first, q * (1 - theta), np.where(is_second, (1 - q) * (1 - theta), theta))
        p = gamma * merit + (1 - gamma) * noise
        p = np.maximum(p, 1e-300)
        loglik = np.sum(np.log(p))

        # d log p / d parameter, per vote.
        sign = is_first.astype(float) - is_second.astype(float)
        dmerit_dd = merit * 0.5 * (sign - (p_f - p_s))
        dmerit_dlognu = merit * (is_tie - p_t)
        dnoise_dlognu = noise * np.where(is_tie, 1 - theta, -theta)
        dnoise_drho = np.where(
            is_first, (1 - theta) * q * (1 - q), np.where(is_second, -(1 - theta) * q * (1 - q), 0.0)
        )
        w_d = gamma * dmerit_dd / p
        grad = np.zeros_like(x)
        grad[:s_end] = np.bincount(first, weights=w_d, minlength=n_objects) - np.bincount(
            second, weights=w_d, minlength=n_objects
        )
        grad[s_end] = np.sum((gamma * dmerit_dlognu + (1 - gamma) * dnoise_dlognu) / p)
        if annotator_effects:
            w_eta = (merit - noise) / p * (gamma * (1 - gamma))
            grad[s_end + 1 : g_end] = np.bincount(annotator, weights=w_eta, minlength=n_annotators)
            grad[g_end:] = np.bincount(annotator, weights=(1 - gamma) * dnoise_drho / p, minlength=n_annotators)
            penalty = 0.5 * regularization * (np.sum(s * s) + np.sum(eta * eta) + np.sum(rho * rho))
            grad_penalty = np.concatenate([s, [0.0], eta, rho]) * regularization
        else:
            penalty = 0.5 * regularization * np.sum(s * s)
            grad_penalty = np.concatenate([s, [0.0]]) * regularization
        return -(loglik - penalty), -(grad - grad_penalty)

    tie_share = max(is_tie.mean(), 1e-3) if n else 0.1
    # Start: equal scores, ν from the share of ties (between equals P(tie) = ν / (2 + ν)), annotators
    # following merit more often than not, unbiased.
    x0 = [np.zeros(n_objects), [np.log(2 * tie_share / (1 - min(tie_share, 0.9)))]]
    if annotator_effects:
        x0 += [np.full(n_annotators, 1.0), np.zeros(n_annotators)]
    x0 = np.concatenate(x0)
    from scipy import optimize

    fit = optimize.minimize(
        objective, x0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-6}
    )
    s, log_nu, eta, rho = unpack(fit.x)
    nu = float(np.exp(log_nu))
    annotator_index = pd.Index(annotators, name="annotator")
    return BradleyTerryResult(
        scores=pd.Series(s - s.mean(), index=pd.Index(objects, name="object"), name="score"),
        tie=nu,
        tie_probability=nu / (2.0 + nu),
        skill=pd.Series(expit(eta), index=annotator_index, name="skill"),
        position_bias=pd.Series(
            expit(eta) / 2 + (1 - expit(eta)) * expit(rho), index=annotator_index, name="position_bias"
        ),
        first_when_guessing=pd.Series(expit(rho), index=annotator_index, name="first_when_guessing"),
        log_likelihood=float(-fit.fun),
        converged=bool(fit.success),
        n_iter=int(fit.nit),
    )


# --- bias diagnostics ----------------------------------------------------------------------------------------


@dataclass
class BiasReport:
    """``overall``: ``{"n", "k", "rate", "p_value"}`` over every vote; ``annotators``: the same per annotator
    (a frame indexed by annotator). ``p_value`` is the exact two-sided binomial test of rate = 1/2."""

    overall: dict
    annotators: pd.DataFrame


def binomial_p_values(k, n) -> np.ndarray:
    """Exact two-sided binomial test p-values against p = 1/2, vectorised.

    For p = 1/2 the distribution is symmetric, so the outcomes at least as unlikely as k are those at least as
    far from n/2: p = min(1, 2·P(X ≤ min(k, n − k))) — what ``scipy.stats.binomtest(k, n).pvalue`` returns.
    """
    from scipy import stats

    k = np.asarray(k, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    low = np.minimum(k, n - k)
    p = np.minimum(1.0, 2.0 * stats.binom.cdf(low, n, 0.5))
    return np.where(2 * low == n, 1.0, p)


def choice_bias(frame: pd.DataFrame, column: str) -> BiasReport:
    """The rate of ``column`` (a boolean per vote) overall and per ``annotator``, each with its p-value."""
    chosen = frame[column].astype(bool)
    grouped = chosen.groupby(frame["annotator"]).agg(["size", "sum"])
    grouped.columns = ["n", "k"]
    grouped["k"] = grouped["k"].astype(np.int64)
    grouped["rate"] = grouped["k"] / grouped["n"]
    grouped["p_value"] = binomial_p_values(grouped["k"], grouped["n"]) if len(grouped) else []
    n, k = int(len(chosen)), int(chosen.sum())
    overall = {
        "n": n,
        "k": k,
        "rate": k / n if n else None,
        "p_value": float(binomial_p_values(k, n)) if n else None,
    }
    return BiasReport(overall, grouped)


def position_bias(frame: pd.DataFrame) -> BiasReport:
    """How often the response shown first wins: ``frame`` has ``annotator`` and ``chose_first`` (bool), one row
    per vote with a winner (ties left out by the caller)."""
    return choice_bias(frame, "chose_first")


def length_bias(frame: pd.DataFrame) -> BiasReport:
    """How often the longer response wins: ``frame`` has ``annotator`` and ``chose_longer`` (bool), one row per
    vote with a winner between responses of different lengths."""
    return choice_bias(frame, "chose_longer")

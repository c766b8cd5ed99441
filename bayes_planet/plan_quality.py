"""Does the planner choose well under the true dynamics? Pure functions of imagined and true returns.

At one state of a real episode, take the planner's plan and alternatives around it and elsewhere, score
each with the world model (``imagined [N, K]``: its return under K transition weight samples) and with the
real simulator (``true [N]``), and ask: does the model rank the sequences as the simulator does, and how
much true return does the plan give up against the best alternative? Row 0 is always the plan.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def perturbed_count(count: int) -> int:
    """How many of `count` candidates `candidate_sequences` makes by perturbing the plan (rows 1 to this)."""
    return (count - 1) // 2


def candidate_sequences(rng: np.random.Generator, plan: np.ndarray, count: int, perturbation: float) -> np.ndarray:
    """``[count, H, A]`` action sequences in ``[-1, 1]``: row 0 the plan ``[H, A]``, then `perturbed_count`
    rows of the plan plus ``N(0, perturbation^2)`` noise (clipped), and the others uniform random."""
    if count < 3:
        raise ValueError(f"need at least 3 candidates (the plan, a perturbed one and a random one), got {count}")
    plan = np.asarray(plan, np.float32)
    perturbed = perturbed_count(count)
    near = np.clip(plan + perturbation * rng.standard_normal((perturbed, *plan.shape)), -1.0, 1.0)
    far = rng.uniform(-1.0, 1.0, (count - 1 - perturbed, *plan.shape))
    return np.concatenate([plan[None], near, far]).astype(np.float32)


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two ``[N]`` vectors (nan where one of them is constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def plan_quality(imagined: np.ndarray, true: np.ndarray, perturbed: int = 0) -> dict[str, float]:
    """Scores of one planning state from the imagined returns ``[N, K]`` and the true ones ``[N]`` (row 0:
    the plan; rows 1 to `perturbed`: perturbations of it, the rest unrelated sequences). Returns, in the
    env's reward units unless said otherwise:

    - ``rank_correlation``: Spearman's, between the imagined mean return and the true return;
    - ``plan_regret``: the best true return among the candidates minus the plan's (>= 0);
    - ``plan_percentile``: the fraction of the other candidates whose true return is at most the plan's,
      and with `perturbed` also ``plan_percentile_near`` and ``plan_percentile_far``, among the
      perturbations (is the plan a local optimum?) and among the others (does it beat chance?);
    - ``model_pick_regret``: the best true return minus that of the candidate the model ranks first;
    - ``plan_imagined``, ``plan_true`` and ``plan_imagined_error`` (imagined mean minus true) of the plan;
    - ``plan_spread``: the std of the plan's imagined return across the K weight samples (0 for K = 1);
    - ``true_range``: the best minus the worst true return, the scale the regrets are read against;
    - and what an uncertainty objective (``mean +- beta * std``, `bayes_planet.objectives`) can do with
      the spread, from `spread_scores`: ``spread_variation`` and ``spread_two_sample_rank``.
    """
    imagined, true = np.asarray(imagined, np.float64), np.asarray(true, np.float64)
    if imagined.ndim != 2 or true.shape != imagined.shape[:1] or len(true) < 2:
        raise ValueError(f"expected imagined [N, K] and true [N] with N >= 2, got {imagined.shape} and {true.shape}")
    if not 0 <= perturbed < len(true) - 1:
        raise ValueError(f"perturbed must leave at least one other candidate: 0 <= perturbed < {len(true) - 1}, "
                         f"got {perturbed}")
    mean, beaten = imagined.mean(axis=1), true[1:] <= true[0]
    groups = {"plan_percentile_near": float(np.mean(beaten[:perturbed])),
              "plan_percentile_far": float(np.mean(beaten[perturbed:]))} if perturbed else {}
    return {
        "rank_correlation": rank_correlation(mean, true),
        "plan_regret": float(true.max() - true[0]),
        "plan_percentile": float(np.mean(beaten)),
        **groups,
        "model_pick_regret": float(true.max() - true[int(np.argmax(mean))]),
        "plan_imagined": float(mean[0]),
        "plan_true": float(true[0]),
        "plan_imagined_error": float(mean[0] - true[0]),
        "plan_spread": float(imagined[0].std()),
        "true_range": float(np.ptp(true)),
        **spread_scores(imagined),
    }


def spread_scores(imagined: np.ndarray) -> dict[str, float]:
    """How much the spread across weight samples can steer an uncertainty objective, from the imagined
    returns ``[N, K]`` of N candidates under K weight samples:

    - ``spread_variation``: the std over candidates of each candidate's std across samples, over the std
      over candidates of their mean return. ``beta`` times this is roughly how strongly ``mean + beta *
      std`` reorders the candidates against the mean objective; near 0, optimism and risk aversion plan as
      the mean does (nan where every mean is equal);
    - ``spread_two_sample_rank``: Spearman's rank correlation between the std over samples 0 and 1 (a
      planner with K = 2) and the std over the other K - 2 samples, disjoint from them: near 1, two
      samples rank the candidates by uncertainty as many do; near 0, the bonus two samples give is noise
      (nan for K < 4).
    """
    imagined = np.asarray(imagined, np.float64)
    spread, mean_spread = imagined.std(axis=1), imagined.mean(axis=1).std()
    two_sample_rank = (rank_correlation(imagined[:, :2].std(axis=1), imagined[:, 2:].std(axis=1))
                       if imagined.shape[1] >= 4 else float("nan"))
    return {"spread_variation": float(spread.std() / mean_spread) if mean_spread > 0 else float("nan"),
            "spread_two_sample_rank": two_sample_rank}


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and std over states of every score in `rows` (`plan_quality` outputs), nan-aware (nan where a
    score is nan in every state, such as ``spread_two_sample_rank`` for K < 4)."""
    def moments(values: np.ndarray) -> dict[str, float]:
        values = values[~np.isnan(values)]
        return {"mean": float(values.mean()), "std": float(values.std())} if len(values) else \
            {"mean": float("nan"), "std": float("nan")}

    return {name: moments(np.array([r[name] for r in rows], np.float64)) for name in rows[0]}

"""Retrieval metrics for a video-text similarity matrix: R@1/5/10, median and mean rank, both ways."""

from __future__ import annotations

import numpy as np


def ranks_of_truth(sim: np.ndarray) -> np.ndarray:
    """sim[i, j] = score of query i against item j, truth on the diagonal -> 1-based rank per query.

    Ties count against the model (a tied item ranks ahead), so a constant model cannot score well.
    """
    truth = np.diag(sim)[:, None]
    return (sim >= truth).sum(axis=1)


def within_group_r1(sim_t2v: np.ndarray, groups: list) -> float | None:
    """t2v R@1 when each text competes only against videos of its own group (e.g. same colour and
    shape, so only the direction differs); None when no group has two members."""
    keys = np.array([str(g) for g in groups])
    same = keys[:, None] == keys[None, :]
    if same.sum() <= len(keys):
        return None
    masked = np.where(same, sim_t2v, -np.inf)
    return 100.0 * float(np.mean(ranks_of_truth(masked) <= 1))


def retrieval_metrics(sim_t2v: np.ndarray, groups: list | None = None) -> dict:
    """sim_t2v: [texts, videos] with text i describing video i; `groups` adds a within-group R@1."""
    out = {}
    if groups is not None:
        out["t2v_within_group_r1"] = within_group_r1(sim_t2v, groups)
    for name, sim in (("t2v", sim_t2v), ("v2t", sim_t2v.T)):
        r = ranks_of_truth(sim)
        out[name] = {
            "r1": 100.0 * float(np.mean(r <= 1)),
            "r5": 100.0 * float(np.mean(r <= 5)),
            "r10": 100.0 * float(np.mean(r <= 10)),
            "median_rank": float(np.median(r)),
            "mean_rank": float(np.mean(r)),
        }
    return out

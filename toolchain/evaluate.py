"""Retrieval metrics for a video-text similarity matrix: R@1/5/10, median and mean rank, both ways.

The standard protocol with several captions per video: text-to-video ranks each caption's own video
among all videos; video-to-text ranks, for each video, its best-ranked caption among all captions
(a hit on any of its captions). MSR-VTT 1k-A has one caption per clip, where both are the usual
diagonal ranks.
"""

from __future__ import annotations

import numpy as np


def ranks_of_truth(sim: np.ndarray) -> np.ndarray:
    """sim[i, j] = score of query i against item j, truth on the diagonal -> 1-based rank per query.

    Ties count against the model (a tied item ranks ahead), so a constant model cannot score well.
    """
    truth = np.diag(sim)[:, None]
    return (sim >= truth).sum(axis=1)


def t2v_ranks(sim_t2v: np.ndarray, video_of: np.ndarray) -> np.ndarray:
    """[captions, videos] -> rank of each caption's own video (ties count against the model)."""
    truth = sim_t2v[np.arange(len(video_of)), video_of][:, None]
    return (sim_t2v >= truth).sum(axis=1)


def v2t_ranks(sim_t2v: np.ndarray, video_of: np.ndarray) -> np.ndarray:
    """[captions, videos] -> per video, the rank of its best caption among all captions.

    Rank = 1 + captions of *other* videos scoring at least as high as the video's best caption.
    """
    n_videos = sim_t2v.shape[1]
    ranks = np.empty(n_videos, dtype=np.int64)
    for v in range(n_videos):
        col = sim_t2v[:, v]
        own = video_of == v
        if not own.any():
            raise ValueError(f"video {v} has no caption; every video needs at least one")
        best = col[own].max()
        ranks[v] = 1 + int((col[~own] >= best).sum())
    return ranks


def within_group_r1(sim_t2v: np.ndarray, groups: list) -> float | None:
    """t2v R@1 when each text competes only against videos of its own group (e.g. same colour and
    shape, so only the direction differs); None when no group has two members."""
    keys = np.array([str(g) for g in groups])
    same = keys[:, None] == keys[None, :]
    if same.sum() <= len(keys):
        return None
    masked = np.where(same, sim_t2v, -np.inf)
    return 100.0 * float(np.mean(ranks_of_truth(masked) <= 1))


def group_r1(sim_t2v: np.ndarray, groups: list) -> float:
    """Per video, is its top-scored caption of the video's own group (e.g. colour + shape right,
    whatever the direction)? Square sim, caption i of video i; in percent."""
    keys = np.array([str(g) for g in groups])
    return 100.0 * float(np.mean(keys[sim_t2v.argmax(axis=0)] == keys))


def pair_accuracy(sim_t2v: np.ndarray, rival: np.ndarray) -> float | None:
    """Per video i with a rival caption rival[i] (e.g. its caption with the direction reversed; -1: none),
    does its own caption score strictly higher? Square sim; in percent, None when no video has a rival."""
    has = rival >= 0
    if not has.any():
        return None
    idx = np.nonzero(has)[0]
    return 100.0 * float(np.mean(sim_t2v[idx, idx] > sim_t2v[rival[idx], idx]))


def summarize(r: np.ndarray) -> dict:
    return {
        "r1": 100.0 * float(np.mean(r <= 1)),
        "r5": 100.0 * float(np.mean(r <= 5)),
        "r10": 100.0 * float(np.mean(r <= 10)),
        "median_rank": float(np.median(r)),
        "mean_rank": float(np.mean(r)),
    }


def retrieval_metrics(sim_t2v: np.ndarray, groups: list | None = None, video_of=None, rival=None) -> dict:
    """sim_t2v: [texts, videos]. Without `video_of`, text i describes video i (square matrix);
    with it, caption i describes video video_of[i]. `groups` (one per video, one caption each)
    adds a within-group R@1 and the group R@1; `rival` (caption index per video, -1: none) the
    accuracy of the own caption against that rival."""
    out = {}
    if video_of is None:
        if sim_t2v.shape[0] != sim_t2v.shape[1]:
            raise ValueError(f"a {sim_t2v.shape} similarity matrix needs video_of (caption -> video)")
        video_of = np.arange(sim_t2v.shape[0])
    video_of = np.asarray(video_of)
    if groups is not None and sim_t2v.shape[0] == sim_t2v.shape[1] and (video_of == np.arange(len(video_of))).all():
        out["t2v_within_group_r1"] = within_group_r1(sim_t2v, groups)
        out["v2t_group_r1"] = group_r1(sim_t2v, groups)
        if rival is not None:
            out["reversed_caption_acc"] = pair_accuracy(sim_t2v, np.asarray(rival))
    out["t2v"] = summarize(t2v_ranks(sim_t2v, video_of))
    out["v2t"] = summarize(v2t_ranks(sim_t2v, video_of))
    out["captions"], out["videos"] = int(sim_t2v.shape[0]), int(sim_t2v.shape[1])
    return out

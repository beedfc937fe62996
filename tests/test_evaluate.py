"""Tests for the retrieval metrics: ranks with ties counted against, R@K and median/mean rank both ways."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.evaluate import ranks_of_truth, retrieval_metrics


def test_identity_is_perfect():
    m = retrieval_metrics(np.eye(10))
    for direction in ("t2v", "v2t"):
        d = m[direction]
        assert d["r1"] == 100.0 and d["r5"] == 100.0 and d["r10"] == 100.0
        assert d["median_rank"] == 1.0 and d["mean_rank"] == 1.0


def test_constant_matrix_does_not_score():
    n = 12
    m = retrieval_metrics(np.full((n, n), 0.3))
    for direction in ("t2v", "v2t"):
        assert m[direction]["r1"] < 100.0
        assert m[direction]["r1"] == 0.0
        assert m[direction]["median_rank"] == n


def test_tie_counts_against():
    sim = np.array([[0.5, 0.5], [0.0, 1.0]])
    assert ranks_of_truth(sim).tolist() == [2, 1]


def test_hand_made_three_by_three():
    sim_t2v = np.array([
        [0.9, 0.1, 0.5],  # text 0: its video scores highest -> rank 1
        [0.8, 0.2, 0.3],  # text 1: 0.2 is the lowest -> rank 3
        [0.1, 0.7, 0.4],  # text 2: only 0.7 beats 0.4 -> rank 2
    ])
    assert ranks_of_truth(sim_t2v).tolist() == [1, 3, 2]
    assert ranks_of_truth(sim_t2v.T).tolist() == [1, 2, 2]
    m = retrieval_metrics(sim_t2v)
    assert m["t2v"]["r1"] == pytest.approx(100 / 3)
    assert m["t2v"]["r5"] == 100.0
    assert m["t2v"]["median_rank"] == 2.0 and m["t2v"]["mean_rank"] == 2.0
    assert m["v2t"]["r1"] == pytest.approx(100 / 3)
    assert m["v2t"]["median_rank"] == 2.0 and m["v2t"]["mean_rank"] == pytest.approx(5 / 3)


def test_r5_and_r10_cut_offs():
    n = 12
    # Text i ranks its own video at position i + 1: scores fall away from the diagonal to the left.
    sim = np.zeros((n, n))
    for i in range(n):
        sim[i, :i] = 1.0
        sim[i, i] = 0.5
    assert ranks_of_truth(sim).tolist() == list(range(1, n + 1))
    t2v = retrieval_metrics(sim)["t2v"]
    assert t2v["r1"] == pytest.approx(100 / n)
    assert t2v["r5"] == pytest.approx(500 / n)
    assert t2v["r10"] == pytest.approx(1000 / n)
    assert t2v["mean_rank"] == pytest.approx((n + 1) / 2)


def test_a_non_square_matrix_needs_video_of():
    with pytest.raises(ValueError, match=r"\(5, 4\) similarity matrix needs video_of"):
        retrieval_metrics(np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\(4, 5\) similarity matrix needs video_of"):
        retrieval_metrics(np.zeros((4, 5)))


def test_several_captions_per_video_rank_against_every_caption():
    from toolchain.evaluate import v2t_ranks

    # captions 0,1 -> video 0; 2 -> video 1; 3,4 -> video 2
    sim = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.1, 0.7, 0.0], [0.0, 0.3, 0.9], [0.5, 0.0, 0.2]])
    video_of = np.array([0, 0, 1, 2, 2])
    ranks = v2t_ranks(sim, video_of)
    assert ranks.dtype == np.int64 and ranks.tolist() == [1, 2, 1]  # video 1: caption 1 (0.8) beats its 0.7
    m = retrieval_metrics(sim, None, video_of)
    assert m["captions"] == 5 and m["videos"] == 3
    assert m["t2v"]["r1"] == pytest.approx(60.0)  # captions 0, 2, 3 rank their own video first
    assert m["v2t"]["r1"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="video 1 has no caption"):
        v2t_ranks(sim, np.array([0, 0, 2, 2, 2]))


def test_within_group_needs_the_square_one_caption_per_video_case():
    """3 captions for 4 videos: no within-group R@1 (and video 3, with no caption, is an error)."""
    sim = np.eye(3, 4)
    with pytest.raises(ValueError, match="video 3 has no caption"):
        retrieval_metrics(sim, ["a", "a", "b", "b"], [0, 1, 2])


def test_group_r1_counts_a_top_caption_of_the_right_group_even_with_the_wrong_direction():
    """Videos 0, 1 are group 'a', video 2 group 'b'. Video 0's top caption is caption 1 (same group: a hit),
    video 1's is caption 2 (group b: a miss), video 2's its own."""
    sim = np.array([[0.1, 0.2, 0.0],
                    [0.9, 0.1, 0.1],
                    [0.0, 0.8, 0.7]])
    m = retrieval_metrics(sim, ["a", "a", "b"])
    assert m["v2t_group_r1"] == pytest.approx(200 / 3)


def test_reversed_caption_accuracy_compares_each_video_with_its_rival_caption():
    """Rivals: 0 <-> 1; video 2 has none. Video 0 prefers its own caption, video 1 ties (a miss)."""
    sim = np.array([[0.9, 0.5, 0.0],
                    [0.2, 0.5, 0.0],
                    [0.0, 0.0, 1.0]])
    m = retrieval_metrics(sim, ["a", "a", "b"], rival=[1, 0, -1])
    assert m["reversed_caption_acc"] == pytest.approx(50.0)
    assert "reversed_caption_acc" not in retrieval_metrics(sim, ["a", "a", "b"])
    assert retrieval_metrics(sim, ["a", "a", "b"], rival=[-1, -1, -1])["reversed_caption_acc"] is None

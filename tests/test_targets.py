"""What the contrastive loss is told to learn: caption_targets, the loss's use of them, and the
direction metric (within_group_r1) that says whether the order of frames was learnt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toolchain.data.clips import caption_targets
from toolchain.evaluate import retrieval_metrics, within_group_r1
from toolchain.tasks.retrieval import contrastive_loss


def test_unique_captions_target_their_own_clip():
    t = caption_targets(["a red circle moves left", "a red circle moves right", "a blue square moves up"])
    assert t.dtype == torch.float32 and t.shape == (3, 3)
    assert torch.equal(t, torch.eye(3))


def test_clips_sharing_a_caption_are_all_positives():
    caps = ["x", "y", "x", "z", "x", "y"]
    t = caption_targets(caps)
    for i, a in enumerate(caps):
        same = [j for j, b in enumerate(caps) if b == a]
        want = torch.zeros(len(caps))
        want[same] = 1.0 / len(same)
        assert torch.allclose(t[i], want), (i, t[i])
    assert torch.allclose(t.sum(dim=1), torch.ones(len(caps)))
    assert torch.equal(t > 0, (t > 0).T)  # "a is a positive of b" is symmetric


def test_a_caption_is_matched_by_its_text_not_by_its_position():
    assert torch.equal(caption_targets(["b", "a", "b"]), caption_targets(["a", "b", "a"]))
    assert caption_targets(["a", "a"]).tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert caption_targets(["a"]).tolist() == [[1.0]]


class FixedEmbeddings(torch.nn.Module):
    """Stands in for VideoCLIP: the video and text parts are rows of the given embeddings, scored by cosine."""

    def __init__(self, video: torch.Tensor, text: torch.Tensor, scale: float = 10.0):
        super().__init__()
        self.video, self.text, self.scale = video, text, scale

    def encode_video_parts(self, pixels, motion):
        return F.normalize(self.video[pixels], dim=-1), None  # no X-CLIP context

    def encode_text_features(self, ids, mask):
        return self.text[ids]

    def scores(self, video, context, text_features):
        return video @ F.normalize(text_features, dim=-1).T

    def logit_scale(self):
        return torch.tensor(self.scale)


def loss_of(video, text, captions, scale=10.0) -> torch.Tensor:
    idx = torch.arange(len(captions))
    return contrastive_loss(FixedEmbeddings(video, text, scale), idx, None, idx, None, captions)


def test_loss_is_the_symmetric_cross_entropy_against_caption_targets():
    g = torch.Generator().manual_seed(0)
    video, text = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    caps = ["a", "b", "a", "c", "d"]
    logits = 7.0 * F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).T
    target = caption_targets(caps)
    want = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert torch.allclose(loss_of(video, text, caps, 7.0), want, atol=1e-6)


def test_loss_rewards_each_clip_matching_its_own_caption():
    emb = torch.eye(4) * 5
    caps = ["a red circle moves left", "a red circle moves right", "a blue square moves up", "a green circle"]
    matched = loss_of(emb, emb, caps, 100.0)
    assert matched < 1e-3  # every pair aligned with its own caption: the loss is ~0
    for shift in (1, 2, 3):  # each clip aligned with another clip's caption
        assert loss_of(emb, emb.roll(shift, dims=0), caps, 100.0) > 10.0


def test_two_clips_sharing_a_caption_embedded_alike_leave_nothing_to_learn():
    """Two clips captioned alike are both positives: embedding them alike (and their captions with them)
    is a minimum of the loss: it equals the targets' own entropy (KL 0) and has no gradient. A plain
    diagonal target would call the same embedding wrong by ln 2 on each twin's row."""
    caps = ["a red circle moves left", "a red circle moves left", "a blue square moves up"]
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = loss_of(emb, emb.detach(), caps, 50.0)
    target = caption_targets(caps)
    entropy = -(target * torch.log(target.clamp(min=1e-12))).sum(1).mean()  # (ln 2 + ln 2 + 0) / 3
    assert entropy == pytest.approx(2 * np.log(2) / 3)
    assert float(loss) == pytest.approx(float(entropy), abs=1e-4)
    loss.backward()
    assert emb.grad.abs().max() < 1e-6
    logits = 50.0 * emb.detach() @ emb.detach().T
    diagonal = (F.cross_entropy(logits, torch.eye(3)) + F.cross_entropy(logits.T, torch.eye(3))) / 2
    assert float(diagonal) - 0.0 > 0.4  # its entropy is 0: it still sees ln 2 per twin to "fix"


def test_a_gradient_step_on_the_loss_pulls_each_clip_to_its_caption():
    g = torch.Generator().manual_seed(1)
    video = torch.randn(6, 16, generator=g, requires_grad=True)
    text = torch.randn(6, 16, generator=g)
    caps = [f"caption {i}" for i in range(6)]
    opt = torch.optim.SGD([video], lr=1.0)
    cos = lambda: (F.normalize(video, dim=-1) * F.normalize(text, dim=-1)).sum(-1).detach()  # noqa: E731
    before = cos()
    for _ in range(20):
        opt.zero_grad()
        loss_of(video, text, caps).backward()
        opt.step()
    after = cos()
    assert (after > before).all() and (after - before).mean() > 0.2, (before, after)
    sim = (F.normalize(text, dim=-1) @ F.normalize(video, dim=-1).T).detach().numpy()
    assert retrieval_metrics(sim)["t2v"]["r1"] == 100.0


# --- within_group_r1: the direction metric ---------------------------------------------------------


def test_within_group_r1_ranks_only_against_the_same_group():
    # texts 0,1 and videos 0,1 share group "a"; 2,3 share "b".
    sim = np.array([
        [0.5, 0.4, 0.9, 0.9],  # beaten by other-group videos only: a hit within its group
        [0.6, 0.3, 0.0, 0.0],  # its group-mate scores higher: a miss
        [0.0, 0.0, 0.2, 0.1],  # a hit
        [0.9, 0.9, 0.3, 0.8],  # a hit (0.8 beats 0.3), the other group ignored
    ])
    assert within_group_r1(sim, ["a", "a", "b", "b"]) == 75.0
    assert retrieval_metrics(sim)["t2v"]["r1"] == 25.0  # plain R@1 sees the other group


def test_within_group_r1_counts_ties_against_and_needs_a_group_of_two():
    tie = np.array([[0.5, 0.5], [0.1, 0.7]])
    assert within_group_r1(tie, ["g", "g"]) == 50.0
    assert within_group_r1(np.eye(3), ["a", "b", "c"]) is None  # no one to compete with: undefined
    assert within_group_r1(np.eye(3), ["a", "b", "a"]) == 100.0
    assert within_group_r1(np.eye(2)[::-1], ["a", "a"]) == 0.0


def test_within_group_r1_with_groups_of_four_has_chance_25():
    """The shapes eval set: 12 appearance groups x 4 directions; a direction-blind model scores 25."""
    rng = np.random.default_rng(0)
    groups = [g for g in range(12) for _ in range(4)]
    blind = np.kron(np.eye(12), np.ones((4, 4))) + 0.01 * rng.random((48, 48))  # appearance only, noise decides
    scores = [within_group_r1(blind + 0.01 * rng.random((48, 48)), groups) for _ in range(200)]
    assert 20.0 < float(np.mean(scores)) < 30.0
    assert within_group_r1(np.kron(np.eye(12), np.ones((4, 4))), groups) == 0.0  # all tied: every rank is 4


def test_retrieval_metrics_reports_within_group_only_for_one_caption_per_video():
    sim = np.eye(4)
    groups = ["a", "a", "b", "b"]
    assert retrieval_metrics(sim, groups)["t2v_within_group_r1"] == 100.0
    assert "t2v_within_group_r1" not in retrieval_metrics(sim)
    several = np.vstack([sim, sim[:1]])  # 5 captions, 4 videos
    assert "t2v_within_group_r1" not in retrieval_metrics(several, groups, [0, 1, 2, 3, 0])


def test_load_and_stream_lines_say_the_numbers():
    from toolchain.data.clips import ClipSet, load_line, stream_line
    from toolchain.recipe import DataSection

    clips = ClipSet(torch.zeros(1000, 4, 3, 32, 32), torch.zeros(1000, 4), torch.zeros(1000, 4), ["v"] * 1000,
                    ["c"] * 1500, torch.zeros(1500, dtype=torch.int64),
                    load={"videos": 1000, "seconds": 0.5, "cache_hits": 7, "cache_misses": 993})
    assert load_line("train", clips) == ("data train: 1000 clips (1500 captions) loaded in 0.50 s, 2000.0 clips/s; "
                                         "frame cache 7 hits, 993 misses")
    line = stream_line("eval", clips, DataSection(in_memory_gb=0.01))
    assert line == ("data eval: the prepared pixels (1000 x 4x3x32x32 float32, 0.0 GB) exceed data.in_memory_gb (0.01): "
                    "each batch is prepared again from the frame cache")
    # MSR-VTT-sized: 90,000 videos of 12 x 3 x 224 x 224 float32 = 650,280,960,000 bytes = 605.6 GiB
    clips.videos = ["v"] * 90_000
    clips.video_pixels = type("Pixels", (), {"shape": (90_000, 12, 3, 224, 224)})()
    line = stream_line("train", clips, DataSection(in_memory_gb=8, cache=False))
    assert "(90000 x 12x3x224x224 float32, 605.6 GB) exceed data.in_memory_gb (8)" in line
    assert line.endswith("; data.cache is false, so every batch decodes its videos again (slow): set data.cache: true")

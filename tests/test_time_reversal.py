"""train.time_reversal: word pairs, which rows get a reversed copy, and what the trainer feeds it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CAPTION_RECIPE, QA_RECIPE, SHIPPED_RECIPE
from tokenizers import Tokenizer

from toolchain.data.clips import ClipSet
from toolchain.errors import RecipeError
from toolchain.models.prompt import PromptFormat, training_example
from toolchain.recipe import load_recipe
from toolchain.tasks.generative import GenerativeData, augment, batches
from toolchain.time_reversal import reversed_rows, swap_words, symmetric_pairs

PAIRS = "train.time_reversal={left: right, up: down}"
TOKENIZER = Path(__file__).parents[1] / "toolchain" / "models" / "tiny_video_llm" / "tokenizer.json"


def test_pairs_are_made_symmetric_and_conflicts_are_refused():
    assert symmetric_pairs({"Left": "right", "up": "down"}) == {"left": "right", "right": "left", "up": "down", "down": "up"}
    assert symmetric_pairs({"left": "right", "right": "left"}) == {"left": "right", "right": "left"}
    for bad, message in (({"left": "right", "right": "up"}, "paired with both"), ({"up": "up"}, "with itself"),
                         ({"turns left": "turns right"}, "single words")):
        with pytest.raises(ValueError, match=message):
            symmetric_pairs(bad)


def test_swap_words_swaps_whole_words_both_ways_at_once():
    pairs = symmetric_pairs({"left": "right"})
    assert swap_words("moves Left then right .", pairs) == ("moves right then left .", 2)
    assert swap_words("the leftover box stays", pairs) == ("the leftover box stays", 0)
    assert swap_words(None, pairs) == (None, 0)


def test_only_rows_naming_a_pair_word_get_a_reversed_copy():
    pairs = symmetric_pairs({"left": "right", "up": "down"})
    captions = ["a red circle moves left", "a red circle", "up"]
    questions = [None, "what colour is it ?", "which way does the red circle move ?"]
    assert reversed_rows(captions, questions, pairs) == [(0, "a red circle moves right", None),
                                                        (2, "down", "which way does the red circle move ?")]


def test_recipes_accept_pairs_for_generative_tasks_only():
    assert load_recipe(CAPTION_RECIPE, [PAIRS]).train.time_reversal == {"left": "right", "up": "down"}
    assert load_recipe(QA_RECIPE, [PAIRS]).train.time_reversal == {"left": "right", "up": "down"}
    with pytest.raises(RecipeError, match="train.time_reversal.*task: retrieval"):
        load_recipe(SHIPPED_RECIPE, [PAIRS])
    with pytest.raises(RecipeError, match="train.time_reversal.*paired with both"):
        load_recipe(CAPTION_RECIPE, ["train.time_reversal={left: right, right: up}"])
    with pytest.raises(RecipeError, match=r"read True as a bool: quote the words"):
        load_recipe(CAPTION_RECIPE, ["train.time_reversal={on: off}"])
    assert load_recipe(CAPTION_RECIPE, ["train.time_reversal={'on': 'off'}"]).train.time_reversal == {"on": "off"}


def toy_data(captions: list[str]) -> GenerativeData:
    tok = Tokenizer.from_file(str(TOKENIZER))
    fmt = PromptFormat("{video} describe the video .", tok.token_to_id("<video>"), 3, 3, 0)
    n, k = len(captions), 4
    clips = ClipSet(video_pixels=torch.randn(n, k, 3, 2, 2), video_indices=torch.arange(k).repeat(n, 1),
                    video_motion=torch.rand(n, k), videos=[f"v{i}.mp4" for i in range(n)], captions=captions,
                    video_of=torch.arange(n), questions=[None] * n, qtypes=[None] * n)
    return GenerativeData(clips, tok, fmt, [training_example(tok, fmt, c) for c in captions])


def test_a_reversed_example_plays_its_clip_backwards_with_the_swapped_caption():
    data = toy_data(["a red circle moves left", "a blue square", "a green triangle moves up"])
    recipe = load_recipe(CAPTION_RECIPE, [PAIRS])
    aug = augment(recipe, data)
    assert len(aug) == 5 and aug.reversed_from == [0, 2]
    assert aug.examples[3] == training_example(data.tok, data.fmt, "a red circle moves right")
    assert len(augment(load_recipe(CAPTION_RECIPE), data)) == 3  # off by default
    pixels, motion, ids, mask, labels = next(batches(aug, iter([torch.tensor([3, 0, 4])]), "cpu"))
    clips = data.clips
    assert torch.equal(pixels[0], clips.video_pixels[0].flip(0)) and torch.equal(pixels[1], clips.video_pixels[0])
    assert torch.equal(pixels[2], clips.video_pixels[2].flip(0))
    assert torch.equal(motion[0], clips.video_motion[0].flip(0)) and torch.equal(motion[1], clips.video_motion[0])
    assert ids[0, : len(aug.examples[3][0])].tolist() == aug.examples[3][0]
    assert ids[2, : len(aug.examples[4][0])].tolist() == training_example(data.tok, data.fmt, "a green triangle moves down")[0]


def test_finetune_says_how_many_rows_time_reversal_added():
    from rich.console import Console

    from toolchain.progress import Reporter
    from toolchain.tasks import TASKS
    from toolchain.train import augmented

    console = Console(record=True, width=200)
    data = toy_data(["a red circle moves left", "a blue square"])
    out = augmented(TASKS["captioning"], load_recipe(CAPTION_RECIPE, [PAIRS]), data, Reporter(console))
    assert len(out) == 3
    assert "1 of 2 training rows name a pair word and also train reversed (3 examples)" in console.export_text()
    silent = Console(record=True, width=200)
    assert len(augmented(TASKS["captioning"], load_recipe(CAPTION_RECIPE), data, Reporter(silent))) == 2
    assert silent.export_text() == ""

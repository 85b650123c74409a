"""E2VPT pruning counts follow the official integer-percent arithmetic, not float multiplication."""

from __future__ import annotations

import pytest
import torch

from vpt_peft.tuners.e2vpt.pruning import MIN_SEGMENTS, MIN_TOKENS, pruned_count, select_pruning

OFFICIAL_PERCENTS = range(10, 100, 10)  # the official CLS_TOKEN_MASK_PERCENT grid


def official_count(total: int, percent: int) -> int:
    """The official code's count, written as it is there: an integer percent, then int()."""
    return int(total * percent / 100)


def test_float_multiplication_would_disagree_on_the_grid():
    # Guards the test itself: the grid contains cases where p * (percent / 100) rounds below the official count.
    assert int(90 * 0.7) == 62 and official_count(90, 70) == 63
    assert int(100 * 0.29) == 28 and official_count(100, 29) == 29


@pytest.mark.parametrize("percent", OFFICIAL_PERCENTS)
def test_counts_match_the_official_formula_for_every_prompt_count_up_to_200(percent):
    ratio = percent / 100
    for total in range(201):
        assert pruned_count(total, ratio) == official_count(total, percent), (total, percent)


def test_counts_match_for_every_integer_percent_and_numpy_floats():
    np = pytest.importorskip("numpy")
    for percent in range(100):
        for total in (1, 7, 16, 50, 90, 100, 170, 180, 200):
            assert pruned_count(total, percent / 100) == official_count(total, percent), (total, percent)
            assert pruned_count(total, np.float64(percent) / 100) == official_count(total, percent)
    assert pruned_count(64, 0.125) == 8  # a ratio finer than a percent keeps its exact meaning


@pytest.mark.parametrize("num_prompts", [1, 5, 10, 32, 90, 100, 170, 200])
@pytest.mark.parametrize("percent", OFFICIAL_PERCENTS)
def test_select_pruning_uses_the_official_counts_and_caps(num_prompts, percent):
    generator = torch.Generator().manual_seed(num_prompts * 100 + percent)
    token_scores = torch.randn(num_prompts, generator=generator)
    segment_scores = torch.randn(num_prompts, 16, generator=generator)
    result = select_pruning(token_scores, segment_scores, percent / 100, percent / 100)
    pruned_tokens = min(official_count(num_prompts, percent), num_prompts - MIN_TOKENS)
    assert len(result.kept_tokens) == num_prompts - pruned_tokens
    # The pruned tokens are the lowest-scoring ones.
    kept = torch.zeros(num_prompts, dtype=torch.bool)
    kept[result.kept_tokens] = True
    if pruned_tokens:
        assert token_scores[~kept].max() <= token_scores[kept].min()
    pruned_segments = min(official_count(16, percent), 16 - MIN_SEGMENTS)
    assert result.segment_mask.sum(1).tolist() == [16.0 - pruned_segments] * num_prompts


def test_segment_counts_are_the_official_set():
    # Spec §3.3: {1, 3, 4, 6, 8, 9, 11, 12} pieces pruned per token over the grid (capped at 16 - 4).
    counts = [min(pruned_count(16, p / 100), 16 - MIN_SEGMENTS) for p in OFFICIAL_PERCENTS]
    assert counts == [1, 3, 4, 6, 8, 9, 11, 12, 12]

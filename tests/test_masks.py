"""Training masks come in the promised kinds, with the promised coverage."""

from __future__ import annotations

import pytest
import torch

from pipeline.masks import KNOWN_FRACTION, MASK_KINDS, random_masks


@pytest.mark.parametrize("kind", ["full", "rectangle", "strokes", "half"])
def test_each_kind_keeps_its_promised_known_fraction(kind):
    masks, kinds = random_masks(60, 32, generator=torch.Generator().manual_seed(0), kind_weights={kind: 1.0})
    assert set(kinds) == {kind}
    assert masks.shape == (60, 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    lo, hi = KNOWN_FRACTION[kind]
    known = masks.mean(dim=(1, 2, 3))
    assert (known >= lo - 1e-6).all() and (known <= hi + 1e-6).all()


def test_default_mix_draws_every_kind():
    _, kinds = random_masks(400, 16, generator=torch.Generator().manual_seed(1))
    assert set(kinds) == set(MASK_KINDS)


def test_masks_are_reproducible_from_the_generator_seed():
    a, _ = random_masks(8, 16, generator=torch.Generator().manual_seed(5))
    b, _ = random_masks(8, 16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown mask kinds"):
        random_masks(2, 16, generator=torch.Generator(), kind_weights={"circles": 1.0})

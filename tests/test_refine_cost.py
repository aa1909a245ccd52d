"""What a refinement step costs: the generator and the perceptual net on the synthesis, forward and
backward, and nothing of size besides. FLOP counts (torch's FlopCounterMode) are deterministic."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.losses.discriminator_features import DiscriminatorFeatureLoss
from benchmarks.stand_in_weights import save_random_backbone
from pipeline.losses.lpips_loss import LPIPSLoss
from pipeline.stages.refine import refine as _refine
from tests.conftest import tiny_discriminator, tiny_generator


def refine(*args, **kwargs):
    """latentmill's refine in fp32 unless a test says otherwise: these tests compare numbers, whatever
    `--precision auto` would pick on this machine."""
    return _refine(*args, **{"precision": "fp32", **kwargs})


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def lpips(tmp_path_factory):
    return LPIPSLoss("vgg", str(save_random_backbone(tmp_path_factory.mktemp("w") / "vgg16.pth", seed=1)))


class Unprepared(nn.Module):
    """A perceptual distance without `reference`: refinement must then compare against the target
    at every step, as it did before target features were hoisted."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.inner(x, y)


def test_lpips_from_prepared_target_features_is_the_lpips_packages_distance(lpips):
    x, y = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(lpips.distance(x, lpips.reference(y)), lpips.model(x, y).flatten())
    torch.testing.assert_close(lpips(x, y), lpips.model(x, y).flatten())


def test_hoisting_the_targets_features_changes_no_result(lpips):
    G = tiny_generator(32)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    init = G.w_avg.expand(2, G.num_ws, -1).clone()
    for perceptual in (lpips, DiscriminatorFeatureLoss(tiny_discriminator(32))):
        hoisted = refine(G, images, init, steps=4, perceptual=perceptual)
        per_step = refine(G, images, init, steps=4, perceptual=Unprepared(perceptual))
        torch.testing.assert_close(hoisted.ws, per_step.ws)
        torch.testing.assert_close(hoisted.losses["perceptual"], per_step.losses["perceptual"])


def step_and_parts(G, perceptual, resolution: int, n: int) -> tuple[float, float, float]:
    """(FLOPs of one refinement step, of G + perceptual forward and backward on the synthesis alone,
    of one pass of the perceptual net over the targets)."""
    torch.manual_seed(0)
    images = torch.rand(n, 3, resolution, resolution) * 2 - 1
    init = G.w_avg.expand(n, G.num_ws, -1).clone()
    one = flops(lambda: refine(G, images, init, steps=1, perceptual=perceptual))
    three = flops(lambda: refine(G, images, init, steps=3, perceptual=perceptual))
    reference = perceptual.reference(images)

    def forward_backward() -> None:
        ws = init.clone().requires_grad_(True)
        perceptual.distance(G.synthesis(ws, noise_mode="const", fused_modconv=False), reference).sum().backward()

    return (three - one) / 2, flops(forward_backward), flops(lambda: perceptual.reference(images))


def test_a_step_is_the_generator_and_the_perceptual_net_on_the_synthesis_only(lpips):
    step, parts, target_pass = step_and_parts(tiny_generator(32), lpips, 32, 2)
    assert step == pytest.approx(parts, rel=0.02)
    assert target_pass > 0.1 * parts, "re-encoding the targets would show"


@pytest.mark.slow
def test_a_256px_step_with_lpips_costs_at_most_the_official_step_minus_its_target_pass(lpips):
    from benchmarks.generator import official_generator

    step, parts, target_pass = step_and_parts(official_generator(256).requires_grad_(False), lpips, 256, 1)
    # The official projector's step: G forward + backward, VGG16 forward + backward on the synthesis
    # and, at every step, VGG16 on the target: about 170 GFLOP at 256 px. Ours leaves the last out.
    assert step == pytest.approx(parts, rel=0.02)
    assert step / 1e9 <= 145, f"{step / 1e9:.1f} GFLOP per image-step"
    assert target_pass / 1e9 > 25

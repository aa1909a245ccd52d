"""`latentmill fit-flow` on a real local Ray: it beats the gaussianized prior it starts from."""

from __future__ import annotations

import csv

import pytest
import torch

from jobs.fit_flow import FitFlowConfig, run, run_directory
from pipeline.models.bundle import write_bundle
from pipeline.priors.flow import FlowPrior
from pipeline.priors.gaussian import mapped_samples
from pipeline.priors.load import load_prior
from tests.conftest import tiny_generator

pytestmark = pytest.mark.slow  # Ray Train start-up: tens of seconds on 2 cores


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "g.safetensors"
    write_bundle(str(path), {"G_ema": tiny_generator(16)})
    return str(path)


def config(generator: str, output, steps: int) -> FitFlowConfig:
    return FitFlowConfig(generator=generator, output=str(output), steps=steps, batch_size=256, couplings=4,
                         init_samples=5_000, eval_samples=2_000, checkpoint_every=30, progress=False, lr=3e-3)


def test_a_fitted_flow_beats_the_gaussianized_prior_and_leaves_resume_points(ray_local, generator_file, tmp_path):
    """One Ray Train run; resuming is the training loop every job shares (tested with the encoder and
    generator jobs), so here only its resume points are checked."""
    from pipeline.training.checkpointing import latest_checkpoint

    output = tmp_path / "flow.safetensors"
    assert run(config(generator_file, output, steps=90)) == str(output)
    assert latest_checkpoint(tmp_path / "flow.run").name == "step-00000090"
    rows = list(csv.DictReader((tmp_path / "flow.run" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 91))
    evals = list(csv.DictReader((tmp_path / "flow.run" / "eval_log.csv").open()))
    assert [int(r["step"]) for r in evals] == [30, 60, 90]
    assert float(evals[-1]["gain_nats"]) > 0.5, evals[-1]  # the tiny random mapping is far from Gaussian in V
    flow = load_prior(str(output))
    assert isinstance(flow, FlowPrior)
    z = flow.to_latent(mapped_samples(tiny_generator(16), 5_000, torch.Generator().manual_seed(11)))
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1) < 0.1  # mapped samples become N(0, I)


def test_a_remote_output_needs_a_run_directory(generator_file):
    with pytest.raises(ValueError, match="--run-directory"):
        run_directory(config(generator_file, "s3://bucket/flow.safetensors", 1))


def test_the_training_loop_runs_and_resumes_in_this_process_without_ray(generator_file, tmp_path):
    """run_training with the in-process checkpoint sink: a run that dies after its step-2 checkpoint and is
    resumed from it ends with exactly the weights of a run that never stopped (each step's stream is
    seeded by the step), and Ray is never started."""
    import dataclasses

    import ray

    from pipeline.training.flow_task import FlowTask
    from pipeline.training.checkpointing import latest_checkpoint
    from pipeline.training.loop import LocalSink, run_training

    class DiesAtStep3(FlowTask):
        def update(self, step, rng):
            if step == 3:
                raise RuntimeError("killed")
            return super().update(step, rng)

    def settings(name: str):
        return dataclasses.replace(config(generator_file, tmp_path / name, steps=4), batch_size=64, init_samples=2000,
                                   eval_samples=500, checkpoint_every=2)

    if ray.is_initialized():
        ray.shutdown()
    cpu = torch.device("cpu")
    whole = settings("whole")
    run_training(FlowTask(whole, cpu), whole, rank=0, device=cpu, resume_from=None, info={}, sink=LocalSink())
    broken = settings("broken")
    with pytest.raises(RuntimeError, match="killed"):
        run_training(DiesAtStep3(broken, cpu), broken, rank=0, device=cpu, resume_from=None, info={})
    assert latest_checkpoint(tmp_path / "broken").name == "step-00000002"
    resumed = FlowTask(broken, cpu)
    run_training(resumed, broken, rank=0, device=cpu, resume_from=str(latest_checkpoint(tmp_path / "broken")), info={})
    assert not ray.is_initialized()
    ours, theirs = load_prior(str(tmp_path / "broken" / "flow.safetensors")), load_prior(
        str(tmp_path / "whole" / "flow.safetensors"))
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

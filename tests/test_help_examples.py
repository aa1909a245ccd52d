"""Every `latentmill ...` example in every command's --help names options and arguments the command has:
each line is parsed by the command line itself, as a user would type it (files it names need not exist)."""

from __future__ import annotations

import shlex
import time

import click
import pytest

from latentmill.cli import main
from tests.user_files import put_downloaded_weights, put_user_files


def examples() -> list[tuple[str, str]]:
    """(command, example line) for every example in every --help, continuation lines joined, comments cut."""
    found = []
    for name, command in main.commands.items():
        lines = (command.help or "").splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1].rstrip() + " " + lines[i].strip()
            if line.startswith("latentmill "):
                for part in line.split("&&"):
                    part = part.split("#", 1)[0].strip()
                    if part.startswith("latentmill ") and "..." not in part:
                        found.append((name, part))
            i += 1
    return found


def test_every_command_with_options_shows_an_example():
    shown = {name for name, _ in examples()}
    assert {"demo", "invert", "verify", "report", "curate", "rebalance", "augment", "export", "reconstruct",
            "channels", "evaluate",
            "fit-prior", "fit-flow", "train-encoder", "train-generator", "train-identity", "inspect", "convert",
            "generate", "make-demo-data", "align"} <= shown


@pytest.mark.parametrize("line", [line for _, line in examples()], ids=lambda line: line[:60])
def test_each_example_parses_as_written(line):
    args = shlex.split(line)[1:]
    command = main.commands[args[0]]
    try:
        with command.make_context(args[0], args[1:], parent=click.Context(main, info_name="latentmill")) as ctx:
            assert ctx.params is not None
    except click.UsageError as exc:
        pytest.fail(f"`{line}` does not parse: {exc.format_message()}")


# What each example needs that CI lacks: those examples are parsed above but not run.
NOT_RUN = {
    "latentmill demo": "the whole bundled sample (about 10 minutes; tests/test_demo.py runs it on a subset)",
    "latentmill demo --limit 8": "8 images x 200 steps through every stage: half a minute; tests/test_demo.py runs "
                                 "the same command on 4 images x 2 steps, and reruns it",
    "latentmill align --input photos/ --output aligned/ --faces all --resolution 1024":
        "photographs of faces (tests/test_align.py aligns real-detector fixtures)",
    "latentmill invert --input aligned/images --output out/store --generator ffhq.pkl":
        "align's output on photographs of faces",
    "latentmill fit-flow --generator ffhq.pkl --output ffhq-flow.safetensors":
        "5,000 training steps (tests/test_fit_flow_job.py runs the job with few)",
    "latentmill fit-flow --generator ffhq.pkl --output s3://team/flows/ffhq.safetensors --run-directory runs/ffhq-flow "
    "--num-workers 4 --use-gpu": "a cloud bucket and 4 GPUs",
    "latentmill evaluate --output out/eval": "every study on 32 images: tens of minutes on 2 cores "
                                             "(tests/test_evaluate.py runs the six on the demo model, small)",
    "latentmill evaluate --output out/eval --studies inversion --num-images 8":
        "8 images x 100 steps by each method compared: minutes on 2 cores (tests/test_evaluate.py runs it small)",
    "latentmill evaluate --output out/eval --studies lia --generator ffhq.pkl --prior ffhq-prior.safetensors "
    "--flow ffhq-flow.safetensors --encoder ffhq-encoder.safetensors --images faces/":
        "the LIA study's 100-step inversions of 32 images (tests/test_lia_study.py runs it small)",
    "latentmill report out/store --self-contained": "nothing `latentmill report out/store` does not (it runs above; "
                                                   "tests/test_report.py checks the embedded page)",
    "latentmill invert --input photos/ --output store/ --generator ffhq.pkl --prior ffhq-flow.safetensors":
        "fit-flow's output (tests/test_flow.py inverts with a flow prior)",
    "latentmill train-encoder --generator ffhq.pkl --output runs/encoder --num-workers 4 --use-gpu": "4 GPUs",
    "latentmill train-generator --data emoji/ --output runs/generator --resolution 32 --steps 20000":
        "20,000 training steps",
    "latentmill augment out/store --output gs://bucket/aug --edits compose:half,jitter:0.2 --address auto "
    "--concurrency 8 --num-gpus 1 --min-identity 0.6": "a cloud bucket and a Ray cluster with GPUs (tests/test_augment.py "
                                                       "runs compose with the identity filter)",
    "latentmill export out/store --format lance --output s3://team/latents.lance --column w_encoded "
    "--exclude-flagged": "a cloud bucket (its first example runs; tests/test_export.py tests --exclude-flagged's "
                         "parts and the column)",
    "latentmill curate out/test-store --against out/store --duplicates-by latent":
        "a second store of other images (tests/test_curate.py curates one store against another)",
    "latentmill train-identity --data emoji/ --output runs/identity":
        "2,000 training steps (tests/test_identity_embedding.py runs the job with few)",
}

def not_run_because(line: str) -> str | None:
    return NOT_RUN.get(line)


def test_every_example_either_runs_or_says_what_it_needs():
    lines = [line for _, line in examples()]
    assert not set(NOT_RUN) - set(lines), "NOT_RUN names examples no --help shows as written"
    assert len([line for line in lines if not_run_because(line) is None]) >= 16


@pytest.mark.slow
def test_every_example_that_needs_no_outside_file_runs_against_the_demo_model(ray_local, tmp_path, monkeypatch):
    """Run in the order a user reads them (invert's store before the commands that read it), each as written,
    in a folder holding the demo model and images where the example names the user's own."""
    from click.testing import CliRunner

    put_user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    put_downloaded_weights()
    monkeypatch.setenv("LATENTMILL_PLAIN_PROGRESS", "1")
    order = ["make-demo-data", "inspect", "convert", "generate", "fit-prior", "invert", "verify", "curate", "report",
             "rebalance", "augment", "export", "reconstruct", "channels", "fit-flow", "evaluate", "demo"]
    runnable = [(name, line) for name, line in examples() if not_run_because(line) is None]
    runnable.sort(key=lambda item: order.index(shlex.split(item[1])[1]))
    failed = []
    for _, line in runnable:
        started = time.monotonic()
        result = CliRunner().invoke(main, shlex.split(line)[1:], prog_name="latentmill")
        print(f"{time.monotonic() - started:6.1f} s  {line}")
        if result.exit_code != 0:
            failed.append(f"`{line}` exit {result.exit_code}:\n{result.output[-2000:]}\n{result.exception!r}")
    assert not failed, "\n\n".join(failed)
    assert (tmp_path / "grid.png").exists() and (tmp_path / "out" / "store" / "report.html").exists()
    assert len(list((tmp_path / "renders").glob("*.png"))) == 2

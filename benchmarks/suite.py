"""Every GPU figure of BENCHMARKS.md in one call, headline figures first, within a time budget.

Each step is one benchmark command run in its own process (its own process group) under its own
timeout; it writes its --json file into OUT_DIR and its output to OUT_DIR/<step>.log. The figures
declared for it are read from that JSON into OUT_DIR/summary.json, one entry per figure:
{figure, value, unit, step, status, reason, command, commit, machine, date, seconds}, and a
markdown table into OUT_DIR/summary.md; both are rewritten after every step, so a suite cut short
still leaves what it measured. A step that fails or runs past its timeout is recorded as such and
the suite goes on; a step whose expected time no longer fits in the budget (default 8 minutes on
a GPU) is recorded as skipped, as is a step that needs --official-repo without it.

MFU figures divide a benchmark's achieved GFLOP/s by the matmul ceiling of the precision the work
ran in, measured by the first step (benchmarks/ceilings.py): bf16 work against the bf16 ceiling,
fp32 convolutions on a GPU against TF32 (cuDNN runs them in TF32 by default), never everything
against a no-TF32 fp32 matmul.

--smoke runs every benchmark at tiny sizes (tiny networks, a few steps) on whatever device there
is, the CPU included, in a few minutes: the suite cannot rot between GPU runs. Its figures
measure nothing.

  python -m benchmarks.suite OUT_DIR [--official-repo DIR] [--smoke] [--device cpu] [--budget SECONDS]
  bash benchmarks/gpu_suite.sh OUT_DIR [--official-repo DIR] [--smoke]      # the same, then the table
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CEILINGS_STEP = "ceilings"  # the step whose rows (dtype, tflop_per_s) are the MFU denominators
GPU_BUDGET_S = 480.0  # one H200: 8 minutes, so that the run fits beside the machine's set-up
SMOKE_BUDGET_S = 900.0
SMOKE_TIMEOUT_S = 300.0
TINY = ("--resolution", "32", "--channel-max", "16")  # a smoke run's generator: 32 px, 16 channels


@dataclass(frozen=True)
class Figure:
    """The `key` of each row of a benchmark's JSON, named by formatting `name` with the row's fields
    (and the JSON's top-level scalars). `rows`: the JSON key holding the list (or object) of rows, ""
    for the top level itself. `ceiling`: an MFU figure: the value (GFLOP/s) over the matmul ceiling of
    this precision (formatted like `name`; see `ceiling_dtype`). Rows without the key, or with null
    (not measured on this device), give no figure."""

    key: str
    unit: str
    name: str
    rows: str = "rows"
    ceiling: str | None = None


@dataclass(frozen=True)
class Step:
    """One benchmark command. `argv` and `smoke_argv` follow `python`; in them {json}, {device},
    {num_gpus} and {official_repo} are filled in. `seconds`: the time it is expected to take on one
    H200 (`smoke_seconds`: at smoke sizes on a 2-core CPU), what the budget checks before starting it;
    `timeout_s`: when it is stopped. `smoke_argv` None: --smoke skips it, another step runs its
    benchmark at tiny sizes."""

    name: str
    argv: tuple[str, ...]
    smoke_argv: tuple[str, ...] | None
    seconds: float
    timeout_s: float
    figures: tuple[Figure, ...]
    smoke_seconds: float = 10.0
    needs_official_repo: bool = False


def _refine_figures() -> tuple[Figure, ...]:
    what = "refine {resolution} px, batch {batch}, {precision}"
    return (Figure("ratio", "x", what + ": images/s vs the official projector's recipe", rows=""),
            Figure("ours_img_per_s", "images/s", what + ": latentmill, {steps} steps per image", rows=""),
            Figure("baseline_img_per_s", "images/s", what + ": official recipe, {baseline_steps} steps per image",
                   rows=""),
            Figure("per_image_step_ratio", "x", what + ": per image-step throughput vs the official recipe", rows=""),
            Figure("gpu_mib_per_image", "MiB/image", what + ": GPU memory", rows=""))


def _refine(batch: int, precision: str, smoke: bool, seconds: float) -> Step:
    return Step(
        f"refine-b{batch}-{precision}",
        ("-m", "benchmarks.refine", "--batch", str(batch), "--precision", precision, "--timing-steps", "5,25",
         "--device", "{device}", "--json", "{json}"),
        ("-m", "benchmarks.refine", *TINY, "--batch", "2", "--precision", precision, "--timing-steps", "1,2",
         "--repeats", "1", "--device", "{device}", "--json", "{json}") if smoke else None,
        seconds=seconds, timeout_s=150, smoke_seconds=20, figures=_refine_figures())


def _memory(precision: str, smoke: bool) -> Step:
    what = "refine memory {architecture} {resolution} px, {precision}"
    return Step(
        f"refine-memory-{precision}",
        ("-m", "benchmarks.refine_memory", "--archs", "stylegan2,stylegan3-t", "--resolutions", "256,1024",
         "--batches", "2,6", "--precision", precision, "--device", "{device}", "--json", "{json}"),
        ("-m", "benchmarks.refine_memory", "--archs", "stylegan2,stylegan3-t", "--resolutions", "32",
         "--channel-max", "16", "--batches", "1,2",
         "--precision", precision, "--device", "{device}", "--json", "{json}") if smoke else None,
        seconds=25, timeout_s=150, smoke_seconds=20,
        figures=(Figure("measured_mib", "MiB/image", what + ": measured"),
                 Figure("estimated_mib", "MiB/image", what + ": --batch-size auto's estimate"),
                 Figure("ratio", "x", what + ": estimate / measured"),
                 Figure("auto_batch", "images", what + ": --batch-size auto on this device")))


GENERATOR_FIGURES = (
    Figure("forward_img_per_s", "images/s", "generator {arch} {resolution} px, batch {batch}, {dtype}, {modconv}: forward"),
    Figure("forward_backward_img_per_s", "images/s",
           "generator {arch} {resolution} px, batch {batch}, {dtype}, {modconv}: forward+backward"))

CURATE_FIGURES = (
    Figure("rows_per_s", "rows/s", "curate near-duplicates, {search} search, {rows} rows x {dim}"),
    Figure("seconds", "s", "curate near-duplicates, {search} search, {rows} rows x {dim}"),
    Figure("recall_vs_exact", "recall", "curate near-duplicates, {search} search, {rows} rows x {dim}: pairs of the "
           "exact search found"),
    Figure("speedup", "x", "curate near-duplicates, {search} search, {rows} rows x {dim}: speed vs the exact search"),
    Figure("projected_10m_hours", "h", "curate near-duplicates, {search} search, {dim}-d: 10M rows, projected from "
           "{rows} rows (growth exponent {growth_exponent})"))

# Headline figures first: the ceilings (every MFU needs them), refinement against the official projector,
# end-to-end invert, generator throughput, 1M-row curation; then the rest of BENCHMARKS.md's GPU figures.
STEPS: tuple[Step, ...] = (
    Step(CEILINGS_STEP, ("-m", "benchmarks.ceilings", "--device", "{device}", "--json", "{json}"),
         ("-m", "benchmarks.ceilings", "--size", "256", "--copy-mib", "16", "--repeats", "3", "--device", "{device}",
          "--json", "{json}"),
         seconds=15, timeout_s=90, smoke_seconds=5,
         figures=(Figure("tflop_per_s", "TFLOP/s", "ceiling: matmul {size}^3 {dtype}"),
                  Figure("tb_per_s", "TB/s", "ceiling: copy {mib} MiB (read + write)"))),
    _refine(16, "bf16", smoke=True, seconds=25),
    Step("refine-official",
         ("-m", "benchmarks.refine", "--official-repo", "{official_repo}", "--batches", "1,16,64", "--repeats", "3",
          "--timing-steps", "2,6", "--equal-images", "2", "--precision", "fp32", "--device", "{device}",
          "--json", "{json}"),
         ("-m", "benchmarks.refine", "--official-repo", "{official_repo}", *TINY, "--batches", "1", "--repeats", "1",
          "--timing-steps", "1,2", "--equal-images", "1", "--official-steps", "5", "--ladder", "0,5",
          "--precision", "fp32", "--device", "{device}", "--json", "{json}"),
         seconds=90, timeout_s=300, smoke_seconds=40, needs_official_repo=True,
         figures=(Figure("s_per_image_step", "s/image-step", "vs NVlabs project(), {resolution} px {precision}: {method}",
                         rows="per_step"),
                  Figure("speed_vs_official", "x", "vs NVlabs project(), {resolution} px {precision}: {method}, speed",
                         rows="per_step"),
                  Figure("gflop_per_s", "GFLOP/s", "vs NVlabs project(), {resolution} px {precision}: {method}, achieved",
                         rows="per_step"),
                  Figure("gflop_per_s", "MFU", "vs NVlabs project(), {resolution} px {precision}: {method}, MFU",
                         rows="per_step", ceiling="{precision}"),
                  Figure("speed_vs_official", "x", "vs NVlabs project(), demo model, {images} images: time to the "
                         "official LPIPS, encoder + {ours_steps} steps vs {official_steps} steps", rows="equal_lpips"),
                  Figure("official_s_per_image", "s/image", "vs NVlabs project(), demo model: official, "
                         "{official_steps} steps", rows="equal_lpips"),
                  Figure("ours_s_per_image", "s/image", "vs NVlabs project(), demo model: latentmill, encoder + "
                         "{ours_steps} steps", rows="equal_lpips"))),
    Step("invert",
         ("-m", "benchmarks.invert", "--images", "32", "--steps", "200", "--batch-size", "16", "--precision", "bf16",
          "--num-gpus", "{num_gpus}", "--json", "{json}"),
         ("-m", "benchmarks.invert", "--images", "1", "--steps", "1", "--batch-size", "1", "--num-gpus", "{num_gpus}",
          "--json", "{json}"),
         seconds=60, timeout_s=240, smoke_seconds=50,
         figures=(Figure("images_per_second_wall", "images/s", "invert 256 px, {images} images, {steps} steps, batch "
                         "{batch_size}, {precision}: end to end (Ray start-up and model loading included)", rows=""),
                  Figure("images_per_second_in_actors", "images/s", "invert 256 px, {images} images, {steps} steps, "
                         "batch {batch_size}, {precision}: in the actors", rows=""),
                  Figure("gpu_utilization_mean", "%", "invert 256 px, {images} images, {steps} steps, batch "
                         "{batch_size}, {precision}: mean GPU utilization", rows=""),
                  Figure("ok", "images", "invert 256 px, {images} images: inverted", rows=""))),
    Step("precision-quality",
         ("-m", "benchmarks.precision_quality", "--images", "64", "--steps", "100", "--device", "{device}",
          "--json", "{json}"),
         ("-m", "benchmarks.precision_quality", "--images", "4", "--steps", "2", "--batch", "4", "--device", "{device}",
          "--json", "{json}"),
         seconds=20, timeout_s=120, smoke_seconds=15,
         figures=(Figure("median_lpips", "LPIPS (random VGG)", "quality {precision}, demo model, {images} images, "
                         "{steps} steps: median final LPIPS"),
                  Figure("lpips_vs_fp32", "x", "quality {precision}, demo model: median final LPIPS vs fp32"),
                  Figure("median_mse", "MSE", "quality {precision}, demo model: median final MSE"),
                  Figure("share_worse_than_fp32", "fraction", "quality {precision}, demo model: images > 1% worse "
                         "than fp32"),
                  Figure("auto_lpips_cost", "fraction", "quality: --precision auto ({auto}), LPIPS cost vs fp32",
                         rows=""))),
    Step("generator",
         ("-m", "benchmarks.generator", "--resolutions", "256,1024", "--batch-sizes", "1,8,32", "--dtypes", "fp32,bf16",
          "--repeats", "5", "--device", "{device}", "--json", "{json}"),
         ("-m", "benchmarks.generator", "--resolutions", "32", "--channel-max", "16", "--batch-sizes", "1",
          "--dtypes", "fp32,bf16", "--repeats", "1", "--device", "{device}", "--json", "{json}"),
         seconds=50, timeout_s=180, smoke_seconds=8, figures=GENERATOR_FIGURES),
    Step("curate",
         ("-m", "benchmarks.curate", "--rows", "100000,1000000", "--dim", "512", "--baseline-max-rows", "100000",
          "--device", "{device}", "--json", "{json}"),
         ("-m", "benchmarks.curate", "--rows", "500,1000", "--dim", "16", "--planted", "5", "--baseline-max-rows",
          "1000", "--device", "{device}", "--json", "{json}"),
         seconds=30, timeout_s=180, smoke_seconds=5, figures=CURATE_FIGURES),
    _memory("auto", smoke=True),
    Step("stylegan3",
         ("-m", "benchmarks.generator", "--archs", "stylegan2,stylegan3-t,stylegan3-r", "--resolutions", "256,1024",
          "--batch-sizes", "1,4", "--dtypes", "bf16", "--modes", "unfused", "--repeats", "3", "--device", "{device}",
          "--json", "{json}"),
         ("-m", "benchmarks.generator", "--archs", "stylegan2,stylegan3-t,stylegan3-r", "--resolutions", "16",
          "--channel-max", "16", "--batch-sizes", "1", "--dtypes", "fp32", "--modes", "unfused", "--repeats", "1",
          "--device", "{device}", "--json", "{json}"),
         seconds=40, timeout_s=180, smoke_seconds=10, figures=GENERATOR_FIGURES),
    Step("flow",
         ("-m", "benchmarks.flow", "--generators", "demo,official", "--samples", "200000", "--batch-size", "500",
          "--device", "{device}", "--json", "{json}"),
         ("-m", "benchmarks.flow", "--generators", "demo", "--samples", "1000", "--batch-size", "500",
          "--log-prob-batch", "500", "--device", "{device}", "--json", "{json}"),
         seconds=30, timeout_s=150, smoke_seconds=10,
         figures=(Figure("train_s_per_1e6_samples", "s per 1e6 samples",
                         "flow prior, {generator} ({w_dim}-d), batch {batch_size}: fit-flow"),
                  Figure("flow_over_fit_prior", "x", "flow prior, {generator} ({w_dim}-d), batch {batch_size}: "
                         "fit-flow time / fit-prior time"),
                  Figure("gain_nats", "nats/latent", "flow prior, {generator} ({w_dim}-d), {samples} samples: "
                         "held-out gain over the gaussianized prior"),
                  Figure("flow_log_prob_per_s", "latents/s", "flow prior, {generator} ({w_dim}-d): log_prob"),
                  Figure("gaussianized_log_prob_per_s", "latents/s",
                         "flow prior, {generator} ({w_dim}-d): gaussianized prior's log_prob"))),
    Step("pretrained-encoder",
         ("-m", "benchmarks.pretrained_encoder", "--encoders", "psp,restyle", "--batch", "8", "--repeats", "2",
          "--device", "{device}", "--json", "{json}"),
         ("-m", "benchmarks.pretrained_encoder", "--encoders", "restyle", "--resolution", "256", "--batch", "1",
          "--repeats", "1", "--device", "{device}", "--json", "{json}"),
         seconds=40, timeout_s=180, smoke_seconds=20,
         figures=(Figure("load_encoder_s", "s", "pretrained {encoder} ({encoder_type}): load_encoder"),
                  Figure("torch_load_s", "s", "pretrained {encoder} ({encoder_type}): plain torch.load of the file"),
                  Figure("images_per_s", "images/s", "pretrained {encoder} ({encoder_type}), batch {batch}: encode"),
                  Figure("gflops", "MFU", "pretrained {encoder} ({encoder_type}), batch {batch}: encode, MFU",
                         ceiling="fp32"))),
    Step("curate-exact",
         ("-m", "benchmarks.curate", "--search", "exact", "--rows", "1000000", "--dim", "512", "--block-size", "4096",
          "--baseline-max-rows", "0", "--device", "{device}", "--json", "{json}"),
         ("-m", "benchmarks.curate", "--search", "exact", "--rows", "500", "--dim", "16", "--planted", "5",
          "--block-size", "128", "--baseline-max-rows", "0", "--device", "{device}", "--json", "{json}"),
         seconds=25, timeout_s=120, smoke_seconds=5, figures=CURATE_FIGURES),
    _refine(64, "bf16", smoke=False, seconds=30),
    _refine(16, "fp32", smoke=False, seconds=25),
    _memory("fp32", smoke=False),
    Step("encoder",
         ("-m", "benchmarks.encoder", "--backbones", "convnet,resnet18", "--batch-sizes", "1,16", "--train-batch", "8",
          "--repeats", "3", "--device", "{device}", "--json", "{json}"),
         ("-m", "benchmarks.encoder", "--backbones", "convnet", "--batch-sizes", "1", "--train-batch", "1",
          "--repeats", "1", "--channel-max", "16", "--device", "{device}", "--json", "{json}"),
         seconds=20, timeout_s=120, smoke_seconds=10,
         figures=(Figure("value", "per s", "encoder {backbone}, batch {batch}: {measure}"),)),
    Step("load-pickle",
         ("-m", "benchmarks.generator", "--load-official-repo", "{official_repo}", "--repeats", "3", "--json", "{json}"),
         ("-m", "benchmarks.generator", "--load-official-repo", "{official_repo}", "--repeats", "1", "--json", "{json}"),
         seconds=35, timeout_s=240, smoke_seconds=40, needs_official_repo=True,
         figures=(Figure("cold", "s", "load a {pickle_mib} MiB NVlabs pickle, {loader}: cold"),
                  Figure("warm", "s", "load a {pickle_mib} MiB NVlabs pickle, {loader}: warm"),
                  Figure("peak_mib", "MiB", "load a {pickle_mib} MiB NVlabs pickle, {loader}: peak RSS"))),
)


def ceiling_dtype(precision: str, device: str) -> str:
    """The ceiling a precision's work is measured against: on a GPU, fp32 convolutions run in TF32
    (torch.backends.cudnn.allow_tf32 is True by default; the MFU figures here are convolution networks)."""
    return "tf32" if precision == "fp32" and device == "cuda" else precision


def figures_of(step: Step, data: dict, ceilings: dict[str, float], device: str) -> list[tuple[str, float, str]]:
    """(figure, value, unit) for each declared figure found in a benchmark's JSON."""
    top = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    out = []
    for source in dict.fromkeys(fig.rows for fig in step.figures):  # row by row: a row's figures together
        rows = data.get(source) if source else data
        for row in [rows] if isinstance(rows, dict) else rows or []:
            fields = top | row
            for fig in (fig for fig in step.figures if fig.rows == source):
                value = row.get(fig.key)
                if value is None or isinstance(value, bool):
                    continue
                name, unit = fig.name.format(**fields), fig.unit
                if fig.ceiling:
                    dtype = ceiling_dtype(fig.ceiling.format(**fields), device)
                    if dtype not in ceilings:
                        continue  # the ceilings step did not run: no MFU
                    value, unit = value / (ceilings[dtype] * 1e3), f"MFU (of the {dtype} matmul ceiling)"
                out.append((name, value, unit))
    return out


def ceilings_of(data: dict) -> dict[str, float]:
    return {row["dtype"]: row["tflop_per_s"] for row in data.get("rows", []) if row.get("measure") == "matmul"}


@dataclass
class Run:
    """What one step did: its status (ok, failed, timeout, skipped) and why, and its figures."""

    step: Step
    status: str
    reason: str | None = None
    command: str = ""
    seconds: float | None = None
    date: str = ""
    figures: list[tuple[str, float, str]] = field(default_factory=list)
    machine: str | None = None  # as the benchmark wrote it in its JSON, where it did


def commit_of(repo: Path) -> str:
    """HEAD, with "+dirty" when the working tree differs from it (untracked files included)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def _stop(proc: subprocess.Popen) -> None:
    """End a step's whole process group: SIGINT first (Python's atexit hooks, such as Ray's shutdown,
    still run), then SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


_RUNNING: set[subprocess.Popen] = set()  # the steps' processes running now


def run_step(argv: Sequence[str], log: Path, timeout: float) -> tuple[str, str | None, float]:
    """Run one command in its own process group; (status, reason, seconds)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | {"PYTHONUNBUFFERED": "1"}, start_new_session=True)
        _RUNNING.add(proc)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return "timeout", f"stopped after {timeout:.0f} s", time.perf_counter() - start
        except BaseException:  # the suite itself is stopped: take the step down with it
            _stop(proc)
            raise
        finally:
            _RUNNING.discard(proc)
    seconds = time.perf_counter() - start
    if code != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return "failed", f"exit status {code}: {lines[-1].strip() if lines else 'no output'}", seconds
    return "ok", None, seconds


def _fill(argv: Sequence[str], values: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


def collect(run: Run, json_path: Path, ceilings: dict[str, float], device: str) -> dict | None:
    """Read a finished step's JSON into `run.figures`; a JSON unlike its declaration fails the step."""
    try:
        data = json.loads(json_path.read_text())
        run.figures = figures_of(run.step, data, ceilings, device)
    except (OSError, ValueError, KeyError, TypeError) as error:
        run.status, run.reason = "failed", f"its JSON: {type(error).__name__}: {error}"
        return None
    if not run.figures:
        run.status, run.reason = "failed", f"no declared figure in {json_path.name}"
    run.machine = data.get("machine")
    return data


SMOKE_SIDE_BY_SIDE = 2  # a smoke run checks that each benchmark runs and writes its figures: no timing is kept


def run_suite(steps: Sequence[Step], out_dir: Path, *, device: str, smoke: bool, budget_s: float,
              official_repo: str | None = None, machine: str = "", invocation: str = "") -> list[Run]:
    """Run `steps` in order within `budget_s`, writing summary.json and summary.md after each. A smoke run
    runs its steps SMOKE_SIDE_BY_SIDE at a time (the ceilings first, which every MFU needs): its seconds are
    not figures; a full run runs one step at a time, so no step's timing shares the machine."""
    out_dir = out_dir.resolve()  # the steps run in the repository's root
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"invocation": invocation, "commit": commit_of(REPO), "machine": machine, "device": device,
            "smoke": smoke, "budget_s": budget_s,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    start = time.monotonic()
    runs: list[Run] = []
    ceilings: dict[str, float] = {}
    pending: list[tuple[int, Run, Path, Future]] = []

    def finish(i: int, run: Run, json_path: Path, outcome: Future | None) -> None:
        nonlocal ceilings
        if outcome is not None:
            run.status, run.reason, run.seconds = outcome.result()
            if run.status == "ok":
                data = collect(run, json_path, ceilings, device)
                if data is not None and run.step.name == CEILINGS_STEP:
                    ceilings = ceilings_of(data)
        print(f"[{i}/{len(steps)}] {run.step.name}: {run.status}"
              + (f" in {run.seconds:.1f} s" if run.seconds is not None else "")
              + (f", {len(run.figures)} figures" if run.figures else "")
              + (f" ({run.reason})" if run.reason else ""), file=sys.stderr, flush=True)
        meta["wall_s"] = round(time.monotonic() - start, 1)
        write_summary(out_dir, runs, meta)

    def drain(keep: int) -> None:
        """Until at most `keep` steps are pending: each recorded as it ends, so a long step never keeps a free
        place idle."""
        while len(pending) > keep:
            running = [outcome for *_, outcome in pending if outcome is not None and not outcome.done()]
            if len(running) == len(pending):
                wait(running, return_when=FIRST_COMPLETED)
            for item in [item for item in pending if item[3] is None or item[3].done()]:
                pending.remove(item)
                finish(*item)

    with ThreadPoolExecutor(max_workers=SMOKE_SIDE_BY_SIDE if smoke else 1) as pool, _stopped_with_the_suite():
        for i, step in enumerate(steps, 1):
            argv = step.smoke_argv if smoke else step.argv
            expected = step.smoke_seconds if smoke else step.seconds
            timeout = SMOKE_TIMEOUT_S if smoke else step.timeout_s
            left = budget_s - (time.monotonic() - start)
            json_path = out_dir / f"{step.name}.json"
            values = {"json": str(json_path), "device": device, "num_gpus": "1" if device == "cuda" else "0",
                      "official_repo": official_repo or ""}
            run = Run(step, "skipped", date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            runs.append(run)
            outcome = None
            if argv is None:
                run.reason = "smoke: its benchmark runs at tiny sizes in another step"
            elif step.needs_official_repo and not official_repo:
                run.reason = "needs --official-repo DIR (an export of NVlabs/stylegan2-ada-pytorch)"
            else:
                argv = _fill(argv, values)
                run.command = shlex.join(["python", *argv])
                if left < expected:
                    run.reason = f"budget: expected to take {expected:.0f} s, {max(left, 0):.0f} s of {budget_s:.0f} s left"
                else:
                    print(f"[{i}/{len(steps)}] {step.name}: {run.command}", file=sys.stderr, flush=True)
                    json_path.unlink(missing_ok=True)
                    limit = min(timeout, left)
                    outcome = pool.submit(_run_within, argv, out_dir / f"{step.name}.log", limit, timeout)
            pending.append((i, run, json_path, outcome))
            # the ceilings come before any step that needs them; a full run waits for every step
            drain(0 if step.name == CEILINGS_STEP or not smoke else SMOKE_SIDE_BY_SIDE - 1)
        drain(0)
    return runs


@contextmanager
def _stopped_with_the_suite() -> Iterator[None]:
    """The suite itself stopped (SIGTERM, Ctrl-C): take its running steps down with it."""
    try:
        yield
    except BaseException:
        for proc in list(_RUNNING):
            _stop(proc)
        raise


def _run_within(argv: Sequence[str], log: Path, limit: float, timeout: float) -> tuple[str, str | None, float]:
    """run_step, saying when the suite's budget, not the step's own timeout, stopped it."""
    status, reason, seconds = run_step(argv, log, limit)
    if status == "timeout" and limit < timeout:
        reason = f"{reason} (the end of the suite's budget)"
    return status, reason, seconds


def entries(runs: Sequence[Run], meta: dict) -> list[dict]:
    """One entry per figure; a step without figures (skipped, failed, timed out) is one entry of its own."""
    out = []
    for run in runs:
        common = {"step": run.step.name, "status": run.status, "reason": run.reason, "command": run.command,
                  "commit": meta["commit"], "machine": run.machine or meta["machine"], "date": run.date,
                  "seconds": None if run.seconds is None else round(run.seconds, 1)}
        if run.figures:
            out += [{"figure": name, "value": value, "unit": unit, **common} for name, value, unit in run.figures]
        else:
            out.append({"figure": run.step.name, "value": None, "unit": None, **common})
    return out


def _value(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if isinstance(value, int) or abs(value) >= 1000 else f"{value:.4g}"


def write_summary(out_dir: Path, runs: Sequence[Run], meta: dict) -> None:
    rows = entries(runs, meta)
    (out_dir / "summary.json").write_text(json.dumps({**meta, "entries": rows}, indent=2) + "\n")
    lines = [f"`{meta['invocation']}`: commit {meta['commit']}, {meta['machine']}, {meta['started']}, "
             f"{'smoke (tiny sizes: no figure means anything)' if meta['smoke'] else 'full sizes'}, "
             f"{meta.get('wall_s', 0):.0f} s of a {meta['budget_s']:.0f} s budget.", "",
             "| figure | value | unit | step | status |", "|---|---|---|---|---|"]
    lines += [f"| {r['figure']} | {_value(r['value'])} | {r['unit'] or ''} | {r['step']} | "
              f"{r['status']}{': ' + r['reason'] if r['reason'] else ''} |" for r in rows]
    lines += ["", "| step | status | seconds | expected s | command |", "|---|---|---|---|---|"]
    for run in runs:
        expected = f"{run.step.smoke_seconds if meta['smoke'] else run.step.seconds:.0f}" if run.command else ""
        seconds = "" if run.seconds is None else f"{run.seconds:.1f}"
        command = f"`{run.command}`" if run.command else ""
        lines.append(f"| {run.step.name} | {run.status} | {seconds} | {expected} | {command} |")
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--official-repo", help="an export of NVlabs/stylegan2-ada-pytorch: the steps that compare "
                        "with the official code run too")
    parser.add_argument("--smoke", action="store_true", help="every benchmark at tiny sizes, on any device")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda where there is one")
    parser.add_argument("--budget", type=float, help=f"seconds for the whole suite (default {GPU_BUDGET_S:.0f}; "
                        f"{SMOKE_BUDGET_S:.0f} with --smoke)")
    parser.add_argument("--only", help="comma-separated step names, in the suite's order (a rerun of some)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stops the running step too
    import torch

    from benchmarks.timing import machine_description

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; use --device cpu (with --smoke: tiny sizes)")
    steps = STEPS
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {s.name for s in STEPS}
        if unknown:
            parser.error(f"--only: no step {', '.join(sorted(unknown))}; steps: {', '.join(s.name for s in STEPS)}")
        steps = tuple(s for s in STEPS if s.name in names)
    official_repo = str(Path(args.official_repo).resolve()) if args.official_repo else None
    invocation = shlex.join(["python", "-m", "benchmarks.suite", *(argv if argv is not None else sys.argv[1:])])
    runs = run_suite(steps, args.out_dir, device=device, smoke=args.smoke,
                     budget_s=args.budget or (SMOKE_BUDGET_S if args.smoke else GPU_BUDGET_S),
                     official_repo=official_repo, machine=machine_description(torch.device(device)),
                     invocation=invocation)
    return 0 if all(run.status in ("ok", "skipped") for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

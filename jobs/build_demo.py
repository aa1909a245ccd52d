"""Build the demo bundle from scratch: `python -m jobs.build_demo --work DIR [--steps ...]`.

The recipe behind pipeline/assets/demo (every step is one of latentmill's own jobs, each resumable,
so rerunning continues where it stopped):
  1. make-demo-data    Noto colour emoji rendered at --resolution into tar shards
  2. train-generator   StyleGAN2 on them (G_ema and D are bundled; D gives the perceptual loss)
  3. fit-prior         the gaussianized prior of G_ema
  4. fit-flow          the flow prior of G_ema (LIA's exact latent, post hoc)
  5. train-encoder     the latent regressor for G_ema
  6. train-identity    the emoji identity embedding
  7. assemble          write the bundle, a sample of the data and MODEL_CARD.md into --bundle
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import tarfile
import time
from pathlib import Path

import torch

from pipeline.data.webdataset import TarShardWriter, read_samples
from pipeline.demo import DEMO_DIR, DEMO_FILES


def _last_row(path: Path) -> dict[str, str]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def _first_row(path: Path) -> dict[str, str]:
    with path.open() as f:
        return next(csv.DictReader(f), {})


def write_sample(data: Path, bundle: Path, *, per_shard: int, shards: int) -> list[str]:
    """An even spread of the data set (faces kept in proportion) as `shards` tar shards in bundle/sample."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(data.glob("*.tar")):
        samples.update(read_samples(shard))
    keys = sorted(samples)
    count = per_shard * shards
    chosen = [keys[round(i * (len(keys) - 1) / (count - 1))] for i in range(count)]
    out = bundle / "sample"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with TarShardWriter(str(out), "demo", per_shard) as writer:
        for key in chosen:
            writer.add(key, dict(sorted(samples[key].items())))
    return chosen


def assemble(work: Path, bundle: Path, *, timings: dict[str, float], per_shard: int, shards: int) -> None:
    from pipeline.models.bundle import write_bundle
    from pipeline.models.checkpoints import describe_checkpoint, load_networks, read_checkpoint

    bundle.mkdir(parents=True, exist_ok=True)
    generator_file = work / "generator" / "generator.safetensors"
    nets = load_networks(str(generator_file))
    gen_info = read_checkpoint(str(generator_file)).info
    write_bundle(str(bundle / DEMO_FILES["generator"]), {"G_ema": nets["G_ema"], "D": nets["D"]},
                 info={**gen_info, "bundled_from": "G_ema and D of jobs/train_generator.py output"})
    shutil.copy2(work / "prior.safetensors", bundle / DEMO_FILES["prior"])
    shutil.copy2(work / "flow.safetensors", bundle / DEMO_FILES["flow"])
    shutil.copy2(work / "encoder" / "encoder.safetensors", bundle / DEMO_FILES["encoder"])
    shutil.copy2(work / "identity" / "identity.safetensors", bundle / DEMO_FILES["identity"])
    chosen = write_sample(work / "data", bundle, per_shard=per_shard, shards=shards)
    labels = []
    for shard in sorted((bundle / "sample").glob("*.tar")):
        with tarfile.open(shard) as tar:
            labels += [json.loads(tar.extractfile(m).read())["group"] for m in tar.getmembers()
                       if m.name.endswith(".json")]
    gen_cfg = json.loads((work / "generator" / "config.json").read_text())
    enc_cfg = json.loads((work / "encoder" / "config.json").read_text())
    id_cfg = json.loads((work / "identity" / "config.json").read_text())
    flow_cfg = json.loads((work / "flow.run" / "config.json").read_text())
    flow_eval = _last_row(work / "flow.run" / "eval_log.csv")
    g = describe_checkpoint(str(bundle / DEMO_FILES["generator"]))["networks"]
    kid_first = _first_row(work / "generator" / "eval_log.csv")
    kid_last = _last_row(work / "generator" / "eval_log.csv")
    enc_eval = _last_row(work / "encoder" / "eval_log.csv")
    id_eval = _last_row(work / "identity" / "eval_log.csv")
    sizes = {name: (bundle / name).stat().st_size for name in DEMO_FILES.values()}
    sample_size = sum(p.stat().st_size for p in (bundle / "sample").glob("*.tar"))
    hardware = f"{platform.machine()} CPU, {torch.get_num_threads()} threads" if not torch.cuda.is_available() \
        else torch.cuda.get_device_name(0)
    card = f"""# latentmill demo bundle: model card

Made by `python -m jobs.build_demo` (latentmill's own jobs, in this order) on {time.strftime('%Y-%m-%d')},
hardware: {hardware} (trained on the CPU alone). Everything here loads through the
public loaders (`load_generator`, `load_networks`, `load_encoder`, `load_prior`,
`load_identity_model`); weights are safetensors, nothing is pickled.
Times below are wall-clock on that machine, which other jobs shared at times.

## Data
Noto Color Emoji (Debian `fonts-noto-color-emoji`, SIL Open Font License) rendered with Pillow by
`latentmill make-demo-data --resolution {gen_cfg['resolution']}`: every single-codepoint emoji the font draws,
centred on white; labels `group` = face / other from the Unicode names. `sample/` holds {len(chosen)} of them
({labels.count('face')} faces) in {shards} tar shards ({sample_size / 1e6:.2f} MB), an even spread over codepoints;
they are training images, so the demo shows in-distribution inversions.

## Files
| file | what | size |
|---|---|---|
| {DEMO_FILES['generator']} | StyleGAN2 G_ema ({g['G_ema']['parameters']:,} parameters) and D ({g['D']['parameters']:,}) | {sizes[DEMO_FILES['generator']] / 1e6:.2f} MB |
| {DEMO_FILES['prior']} | gaussianized prior (mean, covariance of lrelu_5(w / sqrt 2)) | {sizes[DEMO_FILES['prior']] / 1e6:.2f} MB |
| {DEMO_FILES['flow']} | flow prior: the gaussianized prior plus {flow_cfg['couplings']} {flow_cfg['coupling']} couplings (exact z of every w) | {sizes[DEMO_FILES['flow']] / 1e6:.2f} MB |
| {DEMO_FILES['encoder']} | latent regressor E(x * m, m) -> W+ | {sizes[DEMO_FILES['encoder']] / 1e6:.2f} MB |
| {DEMO_FILES['identity']} | emoji identity embedding (EmbeddingNet, {id_cfg['embedding_dim']}-d) | {sizes[DEMO_FILES['identity']] / 1e6:.2f} MB |

## Generator
{gen_cfg['resolution']} px, z/w {gen_cfg['z_dim']}/{gen_cfg['w_dim']}, {gen_cfg['mapping_layers']} mapping layers, channel_base
{gen_cfg['channel_base']}, channel_max {gen_cfg['channel_max']}; {kid_last.get('step')} steps of batch {gen_cfg['batch_size']}
(non-saturating loss, lazy R1 gamma {gen_cfg['r1_gamma']}, style mixing {gen_cfg['style_mixing_prob']}, EMA half-life
{gen_cfg['ema_images']:g} images, DiffAugment {gen_cfg['augment']}), {timings.get('train-generator', float('nan')) / 60:.0f} min.
Quality: KID on a fixed random-feature convnet (no pretrained extractor can be had offline, so this
KID is comparable only between runs of latentmill, not with published FID/KID), {gen_cfg['kid_samples']}
samples: {float(kid_first.get('kid_random_features', 'nan')):.3f} at step {kid_first.get('step')} -> {float(kid_last.get('kid_random_features', 'nan')):.3f}
at step {kid_last.get('step')}.

## Prior
1,000,000 mapped z draws (`latentmill fit-prior`), {timings.get('fit-prior', float('nan')):.0f} s.

## Flow
`latentmill fit-flow`: {flow_cfg['steps']} steps of {flow_cfg['batch_size']} fresh mapped samples ({flow_cfg['steps'] * flow_cfg['batch_size']:,}), starting
from the gaussianized fit on {flow_cfg['init_samples']:,}, {timings.get('fit-flow', float('nan')):.0f} s. Held-out log p(w) on {flow_cfg['eval_samples']:,} mapped samples:
{float(flow_eval.get('held_out_log_prob', 'nan')):.1f} nats per latent against the gaussianized prior's {float(flow_eval.get('gaussianized_log_prob', 'nan')):.1f}.

## Encoder
backbone {enc_cfg['backbone']}, mode {enc_cfg['mode']}, {enc_cfg['steps']} steps of batch {enc_cfg['batch_size']} on
generated pairs with random masks, perceptual term {enc_cfg['perceptual']}, {timings.get('train-encoder', float('nan')) / 60:.0f} min.
Held-out figures at the end: {json.dumps({k: round(float(v), 4) for k, v in enc_eval.items() if k != 'step'})}.

## Identity embedding
EmbeddingNet trained with InfoNCE on two reconstruction-like degradations per emoji (`latentmill
train-identity`), {id_cfg['steps']} steps of batch {id_cfg['batch_size']}, {timings.get('train-identity', float('nan')) / 60:.0f} min.
Finding each emoji from a degraded view among all training emoji: top-1
{float(id_eval.get('top1', 'nan')):.3f}; mean cosine of matching pairs {float(id_eval.get('cosine_same', 'nan')):.3f}, of
non-matching pairs {float(id_eval.get('cosine_other', 'nan')):.3f}. It is a demo stand-in for FaceNet, which stays
the default identity model for faces.

## Limits
A toy: {gen_cfg['resolution']} px, about 1,300 training images, CPU-trained. Use it to see the pipeline work, not
as a research model.
"""
    (bundle / "MODEL_CARD.md").write_text(card)
    print(f"bundle written to {bundle}: {sum(sizes.values()) / 1e6:.2f} MB of weights + {sample_size / 1e6:.2f} MB sample")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="Working directory for data, checkpoints and logs.")
    parser.add_argument("--bundle", default=str(DEMO_DIR), help="Where to write the bundle.")
    parser.add_argument("--resolution", type=int, default=32, help="Image resolution.")
    parser.add_argument("--generator-steps", type=int, default=10_000, help="Generator training steps.")
    parser.add_argument("--encoder-steps", type=int, default=3000, help="Encoder training steps.")
    parser.add_argument("--identity-steps", type=int, default=1500, help="Identity embedding training steps.")
    parser.add_argument("--sample-per-shard", type=int, default=48, help="Sample images per shard.")
    parser.add_argument("--sample-shards", type=int, default=2, help="Sample shards.")
    parser.add_argument("--use-gpu", action="store_true", help="Train on a GPU.")
    args = parser.parse_args(argv)

    from jobs import fit_flow, fit_prior, make_demo_data, train_encoder, train_generator, train_identity

    work = Path(args.work)
    timings_file = work / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}

    def timed(name: str, fn) -> None:
        start = time.perf_counter()
        fn()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        timings_file.write_text(json.dumps(timings, indent=1))

    if not (work / "data").exists():
        timed("make-demo-data", lambda: make_demo_data.run(str(work / "data"), resolution=args.resolution))
    timed("train-generator", lambda: train_generator.run(train_generator.GeneratorTrainingConfig(
        data=str(work / "data"), output=str(work / "generator"), resolution=args.resolution,
        steps=args.generator_steps, z_dim=64, w_dim=64, channel_base=2048, channel_max=128, kid_samples=500,
        use_gpu=args.use_gpu)))
    generator = str(work / "generator" / "generator.safetensors")
    if not (work / "prior.safetensors").exists():
        timed("fit-prior", lambda: fit_prior.run(fit_prior.FitPriorConfig(generator=generator,
                                                                          output=str(work / "prior.safetensors"))))
    timed("fit-flow", lambda: fit_flow.run(fit_flow.FitFlowConfig(generator=generator,
                                                                  output=str(work / "flow.safetensors"),
                                                                  use_gpu=args.use_gpu)))
    # The bundled encoder predates the adversarial term (study 6(d) of `latentmill evaluate` measures it),
    # so the recipe keeps it off to rebuild the same model.
    timed("train-encoder", lambda: train_encoder.run(train_encoder.EncoderTrainingConfig(
        generator=generator, output=str(work / "encoder"), steps=args.encoder_steps, base_channels=32,
        max_channels=128, adversarial_weight=0.0, use_gpu=args.use_gpu)))
    timed("train-identity", lambda: train_identity.run(train_identity.IdentityTrainingConfig(
        data=str(work / "data"), output=str(work / "identity"), resolution=args.resolution,
        steps=args.identity_steps, use_gpu=args.use_gpu)))
    assemble(work, Path(args.bundle), timings=timings, per_shard=args.sample_per_shard, shards=args.sample_shards)


if __name__ == "__main__":
    main()

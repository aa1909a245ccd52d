"""`latentmill demo`: the whole pipeline on the bundled demo model and sample, on an embedded Ray.

The bundle (pipeline/assets/demo/, see its MODEL_CARD.md) was made by latentmill's own jobs:
make-demo-data -> train-generator -> fit-prior -> fit-flow -> train-encoder -> train-identity. The demo
inverts the bundled sample with every stage (encode, refine with the discriminator-feature
perceptual loss, compress, identity with the bundled emoji embedding) and writes report.html.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.webdataset import add_sample, read_samples
from pipeline.demo_settings import DemoConfig
from pipeline.invert.config import InvertConfig

DEMO_DIR = Path(__file__).parent / "assets" / "demo"
DEMO_FILES = {"generator": "generator.safetensors", "encoder": "encoder.safetensors", "prior": "prior.safetensors",
              "flow": "flow.safetensors", "identity": "identity.safetensors"}


@dataclass(frozen=True)
class DemoBundle:
    generator: str
    encoder: str
    prior: str
    flow: str
    identity: str
    sample: str  # folder of webdataset tar shards

    @classmethod
    def locate(cls, root: Path = DEMO_DIR) -> DemoBundle:
        paths = {key: root / name for key, name in DEMO_FILES.items()}
        missing = [str(p) for p in [*paths.values(), root / "sample"] if not p.exists()]
        if missing:
            raise FileNotFoundError(f"the demo bundle is incomplete, missing {missing}; reinstall latentmill")
        return cls(**{k: str(p) for k, p in paths.items()}, sample=str(root / "sample"))


def subset_tar(sample: str, limit: int, destination: Path) -> str:
    """The first `limit` samples of the bundled shards as one tar in `destination` (for quick runs)."""
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / f"demo-first-{limit}.tar"
    if target.exists():
        return str(destination)
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(Path(sample).glob("*.tar")):
        for key, parts in read_samples(shard).items():
            if len(samples) < limit:
                samples[key] = parts
    tmp = target.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as out:
        for key, parts in samples.items():
            add_sample(out, key, parts)
    tmp.rename(target)
    return str(destination)


def demo_config(settings: DemoConfig) -> InvertConfig:
    """The invert settings of the demo: every stage, the bundled models, the sample (or its first `limit`)."""
    bundle, output, limit = DemoBundle.locate(), settings.output, settings.limit
    source = bundle.sample if limit is None else subset_tar(bundle.sample, limit, Path(output) / "input")
    store = "store" if limit is None else f"store-first-{limit}"  # a subset is another store, never a mismatch
    return InvertConfig(input=source, output=str(Path(output) / store), generator=bundle.generator,
                        encoder=bundle.encoder, prior=bundle.prior, identity_model=bundle.identity,
                        perceptual="discriminator", steps=settings.steps, batch_size=settings.batch_size,
                        address=settings.address, verbose=settings.verbose, num_gpus=settings.num_gpus,
                        progress=settings.progress,
                        concurrency=1 if settings.num_gpus > 0 else max(1, min(2, os.cpu_count() or 1)))

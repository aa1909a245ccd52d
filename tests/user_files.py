"""A user's folder for the tests that run documented commands as written (--help examples, the docs): the
demo model's files under the names the examples give a user's checkpoints, demo images as photos/, and the
weights invert downloads on a first run, as random networks where torch caches them."""

from __future__ import annotations

import json
from pathlib import Path

# The files examples name that a user brings, and what the run below puts there: the demo model's files, and
# three images of its sample (with their JSON sidecars, which hold `group`: two groups) as the user's photos.
DEMO_MODEL_AS = {"ffhq.pkl": "generator", "stylegan2-ffhq-config-f.pkl": "generator", "encoder.safetensors": "encoder",
                 "prior.safetensors": "prior", "ffhq-prior.safetensors": "prior", "ffhq-flow.safetensors": "flow"}


def put_user_files(root: Path) -> None:
    """The demo model under the names examples give a user's checkpoints; three demo images (two emoji that
    are not faces, one that is) as photos/ (named face1.png...), and a list of positives for `channels`."""
    import shutil
    import tarfile

    from pipeline.demo import DemoBundle

    bundle = DemoBundle.locate()
    for name, role in DEMO_MODEL_AS.items():
        shutil.copyfile(getattr(bundle, role), root / name)
    with tarfile.open(sorted(Path(bundle.sample).glob("*.tar"))[0]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({name.rsplit(".", 1)[0] for name in members})
    group = {key: json.loads(members[f"{key}.json"])["group"] for key in keys}
    chosen = [k for k in keys if group[k] != "face"][:2] + [k for k in keys if group[k] == "face"][:1]
    (root / "photos").mkdir()
    for i, key in enumerate(chosen, 1):
        (root / "photos" / f"face{i}.png").write_bytes(members[f"{key}.png"])
        (root / "photos" / f"face{i}.json").write_bytes(members[f"{key}.json"])
    (root / "smiling.txt").write_text("face1.png\nface3.png\n")


def put_downloaded_weights() -> None:
    """What invert downloads on a user's first run (LPIPS's VGG16, FaceNet), as random networks where torch
    caches them ($TORCH_HOME)."""
    from benchmarks.stand_in_weights import save_random_backbone, save_random_facenet
    from pipeline.models.known_weights import FACENET, VGG16

    for weights in (VGG16, FACENET):
        weights.default_path().parent.mkdir(parents=True, exist_ok=True)
    save_random_backbone(VGG16.default_path())
    save_random_facenet(str(FACENET.default_path()))

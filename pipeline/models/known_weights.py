"""Third-party weights latentmill uses by default, fetched on first use when the network allows.

LPIPS needs torchvision's VGG16 backbone and identity scoring needs facenet-pytorch's VGGFace2
InceptionResnetV1. Both libraries download these from fixed URLs into torch's cache; latentmill
reads the same files at the same places (so a machine that has them already, from either library,
downloads nothing), and downloads them there itself when absent and reachable, with a progress bar
and torchvision's hash check where its file name carries one. Offline (or with $LATENTMILL_OFFLINE set, for
clusters where a download attempt would hang), the error names the file, where to put it, and the
option that does without it.
"""

from __future__ import annotations

import dataclasses

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import WeightsNotFoundError

DOWNLOAD_TIMEOUT_S = 20  # for the connection; a reachable server then streams at its own pace
OFFLINE_VARIABLE = "LATENTMILL_OFFLINE"  # set (to anything but 0 or empty): never try to download


def downloads_allowed() -> bool:
    return os.environ.get(OFFLINE_VARIABLE, "") in ("", "0")


@dataclass(frozen=True)
class KnownWeights:
    name: str  # what it is, for messages
    url: str  # where the library that made it publishes it
    file: str  # its file name in torch's cache
    subdir: str  # under torch.hub.get_dir()'s parent ($TORCH_HOME): where that library caches it
    setting: str  # the option that points at another copy
    offline: str  # how to run without it
    hash_prefix: str | None = None  # leading hex digits of its sha256, when the file name carries them

    def default_path(self) -> Path:
        import torch

        return Path(torch.hub.get_dir()).parent / self.subdir / self.file


VGG16 = KnownWeights(
    name="LPIPS's VGG16 backbone (torchvision)", url="https://download.pytorch.org/models/vgg16-397923af.pth",
    file="vgg16-397923af.pth", subdir="hub/checkpoints", setting="--lpips-weights", hash_prefix="397923af",
    offline="--perceptual discriminator (the checkpoint's own discriminator features) or --perceptual none")
# for a checkpoint without a discriminator, only what can stand in for VGG16 there
VGG16_WITHOUT_DISCRIMINATOR = dataclasses.replace(
    VGG16, offline="--perceptual none (--perceptual discriminator needs a discriminator, which this checkpoint does "
                   "not hold)")
FACENET = KnownWeights(
    name="FaceNet (facenet-pytorch's InceptionResnetV1, VGGFace2)",
    url="https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    file="20180402-114759-vggface2.pt", subdir="checkpoints", setting="--facenet-weights",
    offline="leave identity out of --stages, or --identity-model BUNDLE (from `latentmill train-identity`)")


def ensure_weights(weights: KnownWeights, *, progress: bool = True) -> Path:
    """The local file of `weights` at its default place, downloaded first if it is absent.

    Raises WeightsNotFoundError naming the URL, the place and the offline alternative when the file
    is absent and cannot be downloaded (no network, proxy refusal, a wrong hash)."""
    path = weights.default_path()
    if path.is_file():
        return path
    if not downloads_allowed():
        raise WeightsNotFoundError(missing_message(weights, f"downloads are off (${OFFLINE_VARIABLE} is set)"))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        print(f"latentmill: downloading {weights.name} from {weights.url} to {path}", file=sys.stderr)
        _download(weights.url, partial, hash_prefix=weights.hash_prefix, progress=progress)
        os.replace(partial, path)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a hash mismatch a RuntimeError
        partial.unlink(missing_ok=True)
        raise WeightsNotFoundError(missing_message(weights, f"the download failed ({type(exc).__name__}: {exc})")) \
            from None
    return path


def missing_message(weights: KnownWeights, why: str) -> str:
    return (f"{weights.name} is not on this machine and {why}. Fix: download {weights.url} to "
            f"{weights.default_path()} (or anywhere, then {weights.setting} PATH). Without it: {weights.offline}.")


def _download(url: str, destination: Path, *, hash_prefix: str | None, progress: bool) -> None:
    """torch.hub's downloader (progress bar, sha256 prefix check), with a connection timeout."""
    import socket

    import torch

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(destination), hash_prefix=hash_prefix, progress=progress)
    finally:
        socket.setdefaulttimeout(previous)

"""Face alignment (`--align ffhq|faces`) from the MTCNN that ships with facenet-pytorch.

FFHQ-trained generators reconstruct faces well only when the face sits where FFHQ put it. FFHQ's
recipe (NVlabs/ffhq-dataset) places an oriented square on the photo from three points, the two eye
centres and the mouth centre: centred at eye_avg + 0.1 * eye_to_mouth, turned so the eyes are level,
with a half-side of max(2 * |eye_to_eye|, 1.8 * |eye_to_mouth|). MTCNN's five landmarks (eyes, nose,
mouth corners) give those points directly; the nose is not needed. `faces` is the simpler
axis-aligned square around the detection box, with a relative margin.

The square is resampled to the output resolution in high quality (downscale first when it is much
larger, a 4x supersampled bilinear warp, then Lanczos). Where the square leaves the photo, pixels are
unknown: they come back with mask 0 so refinement never tries to reproduce them; `padding="reflect"`
fills them the way FFHQ did instead (mirrored photo, blurred toward the edge) and counts them known.

The detector's weights are inside the facenet-pytorch package, so nothing is downloaded.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

ALIGN_MODES = ("none", "faces", "ffhq")
FACE_MODES = ("best", "all")
PADDING_MODES = ("unknown", "reflect")
SUPERSAMPLE = 4  # the warp is drawn at this multiple of the output side, then reduced with Lanczos
UNKNOWN_FILL = (127, 127, 127)  # the colour of unknown pixels in the image (the mask is what counts)


@dataclass(frozen=True)
class Face:
    """One detected face, in the photo's pixel coordinates (after EXIF orientation)."""

    index: int  # rank by detection confidence: 0 is the most confident face of the photo
    confidence: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    landmarks: tuple[tuple[float, float], ...]  # (x, y) of: eye (image left), eye (image right), nose,
    # mouth corner (image left), mouth corner (image right)

    @property
    def eyes(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.landmarks[0]), np.asarray(self.landmarks[1])

    @property
    def mouth(self) -> np.ndarray:
        return (np.asarray(self.landmarks[3]) + np.asarray(self.landmarks[4])) / 2


@dataclass
class AlignedFace:
    face: Face
    image: Image.Image  # RGB, resolution x resolution
    known: np.ndarray | None  # float32 [1, R, R], 1 = a pixel of the photo; None when every pixel is
    quad: np.ndarray  # [4, 2] photo coordinates of the output's corners: top-left, bottom-left,
    # bottom-right, top-right


def ffhq_quad(face: Face) -> np.ndarray:
    """FFHQ's oriented square for a face: corners [4, 2] in photo coordinates (see the module docstring)."""
    left_eye, right_eye = face.eyes
    eye_avg = (left_eye + right_eye) / 2
    eye_to_eye = right_eye - left_eye
    eye_to_mouth = face.mouth - eye_avg
    # the square's horizontal axis: between the eye line and the perpendicular of the eye-mouth line
    across = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    across = across / np.hypot(*across)
    half_side = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    x = across * half_side
    y = np.array([-x[1], x[0]])  # x turned 90 degrees: pointing down the face
    centre = eye_avg + eye_to_mouth * 0.1
    return np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])


def box_quad(face: Face, margin: float) -> np.ndarray:
    """The axis-aligned square around the detection box, widened by `margin` of its side on each side."""
    x0, y0, x1, y1 = face.box
    half = max(x1 - x0, y1 - y0) * (1 + 2 * margin) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([[cx - half, cy - half], [cx - half, cy + half], [cx + half, cy + half], [cx + half, cy - half]])


def _side(quad: np.ndarray) -> float:
    return float(np.hypot(*(quad[3] - quad[0])))


def _reflect_pad(img: Image.Image, quad: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """FFHQ's padding: mirror the photo past its edges as far as the quad needs, blurred and pulled
    toward the photo's median colour with the distance from the edge; returns the quad moved with it."""
    side = _side(quad)
    border = max(int(round(side * 0.1)), 3)
    width, height = img.size
    left = max(int(math.ceil(-quad[:, 0].min())) + border, 0)
    top = max(int(math.ceil(-quad[:, 1].min())) + border, 0)
    right = max(int(math.ceil(quad[:, 0].max() - width)) + border, 0)
    bottom = max(int(math.ceil(quad[:, 1].max() - height)) + border, 0)
    if not (left or top or right or bottom):
        return img, quad
    array = np.pad(np.asarray(img, dtype=np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w = array.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    pads = [max(p, 1) for p in (left, top, right, bottom)]
    edge = np.maximum(1 - np.minimum(xx / pads[0], (w - 1 - xx) / pads[2]),
                      1 - np.minimum(yy / pads[1], (h - 1 - yy) / pads[3]))[..., None]
    blurred = np.asarray(Image.fromarray(array.clip(0, 255).astype(np.uint8))
                         .filter(ImageFilter.GaussianBlur(max(side * 0.02, 0.5))), dtype=np.float32)
    array = array + (blurred - array) * np.clip(edge * 3 + 1, 0, 1)
    array = array + (np.median(array, axis=(0, 1)) - array) * np.clip(edge, 0, 1)
    return Image.fromarray(array.clip(0, 255).round().astype(np.uint8)), quad + np.array([left, top])


def warp_quad(img: Image.Image, quad: np.ndarray, resolution: int,
              padding: str = "unknown") -> tuple[Image.Image, np.ndarray | None]:
    """The photo's `quad` resampled to a resolution x resolution square, and which pixels are known."""
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    shrink = int(math.floor(_side(quad) / resolution * 0.5))
    if shrink > 1:  # a much larger face: reduce the photo first so the warp does not alias
        img = img.reduce(shrink)
        quad = quad / shrink
    if padding == "reflect":
        img, quad = _reflect_pad(img, quad)
    size = resolution * SUPERSAMPLE
    corners = tuple((quad + 0.5).flatten())
    warped = img.transform((size, size), Image.Transform.QUAD, corners, Image.Resampling.BILINEAR,
                           fillcolor=UNKNOWN_FILL)
    image = warped.resize((resolution, resolution), Image.Resampling.LANCZOS)
    if padding == "reflect":
        return image, None
    inside = Image.new("L", img.size, 255).transform((size, size), Image.Transform.QUAD, corners,
                                                     Image.Resampling.BILINEAR, fillcolor=0)
    inside = inside.resize((resolution, resolution), Image.Resampling.BOX)
    known = (np.asarray(inside, dtype=np.float32)[None] >= 250).astype(np.float32)  # wholly inside the photo
    return image, None if known.min() == 1 else known


class FaceAligner:
    """Detects faces (MTCNN) and warps each to the generator's square; shared by decode threads."""

    def __init__(self, mode: str = "ffhq", *, faces: str = "best", padding: str = "unknown",
                 min_confidence: float = 0.9, margin: float = 0.25, device: str = "cpu") -> None:
        if mode not in ALIGN_MODES[1:]:
            raise ValueError(f"align mode must be one of {ALIGN_MODES[1:]}, got {mode!r}")
        if faces not in FACE_MODES:
            raise ValueError(f"faces must be one of {FACE_MODES}, got {faces!r}")
        from facenet_pytorch import MTCNN

        self.detector = MTCNN(keep_all=True, post_process=False, device=device)
        self.mode, self.faces, self.padding = mode, faces, padding
        self.min_confidence, self.margin = min_confidence, margin
        self._lock = threading.Lock()  # MTCNN is not documented as thread-safe; decode threads share it

    def detect(self, img: Image.Image) -> tuple[list[Face], str | None]:
        """Faces above the confidence threshold, most confident first, or [] and the reason."""
        with self._lock:
            boxes, probs, points = self.detector.detect(img, landmarks=True)
        if boxes is None or len(boxes) == 0:
            return [], "no face: the detector found none"
        order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")
        faces = [Face(index=rank, confidence=float(probs[i]), box=tuple(float(v) for v in boxes[i]),
                      landmarks=tuple((float(x), float(y)) for x, y in points[i]))
                 for rank, i in enumerate(order) if probs[i] >= self.min_confidence]
        if not faces:
            return [], f"no face: best detection confidence {float(np.max(probs)):.2f} < {self.min_confidence}"
        return (faces if self.faces == "all" else faces[:1]), None

    def quad(self, face: Face) -> np.ndarray:
        return ffhq_quad(face) if self.mode == "ffhq" else box_quad(face, self.margin)

    def align(self, img: Image.Image, resolution: int) -> tuple[list[AlignedFace], str | None]:
        """Every wanted face of an RGB photo, aligned to resolution x resolution; or [] and the reason."""
        faces, reason = self.detect(img)
        aligned = []
        for face in faces:
            quad = self.quad(face)
            image, known = warp_quad(img, quad, resolution, self.padding)
            aligned.append(AlignedFace(face, image, known, quad))
        return aligned, reason

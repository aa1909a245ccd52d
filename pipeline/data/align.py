"""Optional face alignment (`--align faces`) with the MTCNN that ships with facenet-pytorch.

The detector's weights are inside the facenet-pytorch package, so nothing is downloaded. The most
confident face is cropped square with a relative margin and resized to the generator's resolution;
an image with no face becomes an error row ("no face"), never a silently uncropped input.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image



class FaceAligner:
    def __init__(self, margin: float = 0.25, min_confidence: float = 0.9, device: str = "cpu") -> None:
        from facenet_pytorch import MTCNN

        self.detector = MTCNN(keep_all=False, post_process=False, device=device)
        self.margin, self.min_confidence = margin, min_confidence
        self._lock = threading.Lock()  # MTCNN is not documented as thread-safe; decode threads share it

    def crop(self, img: Image.Image) -> tuple[Image.Image | None, str | None]:
        """The square face crop of an RGB image (with margin), or None and the reason."""
        with self._lock:
            boxes, probs = self.detector.detect(img)
        if boxes is None or len(boxes) == 0:
            return None, "no face: the detector found none"
        best = int(np.argmax(probs))
        if probs[best] < self.min_confidence:
            return None, f"no face: best detection confidence {probs[best]:.2f} < {self.min_confidence}"
        x0, y0, x1, y1 = boxes[best]
        side = max(x1 - x0, y1 - y0) * (1 + 2 * self.margin)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        return img.crop(box), None  # parts outside the image are filled with black by Pillow

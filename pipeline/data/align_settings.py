"""Settings of `latentmill align`, declared once (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.data.align import ALIGN_MODES
from pipeline.data.decode import DecodeSettings, FaceSettings
from pipeline.data.planning import InputSettings
from pipeline.settings import ProgressSettings, check_settings, setting


@dataclass(kw_only=True)
class AlignConfig(InputSettings, FaceSettings, ProgressSettings):
    output: str = setting(MISSING, "Folder for images/ (aligned PNGs, with .mask.png where pixels are unknown) and "
                                   "faces.parquet; images/ is an input folder for `latentmill invert`.")
    align: str = setting("ffhq", "ffhq: FFHQ's oriented square from MTCNN's eye and mouth landmarks; faces: a square "
                                 "box around the detection.", choices=ALIGN_MODES[1:])
    resolution: int = setting(1024, "Side of the aligned squares in pixels (FFHQ: 1024; use your generator's).",
                          minimum=8, maximum=4096)
    sheet_size: int = setting(12, "Photos shown in OUTPUT/contact_sheet.png: each with its faces' squares, then the "
                                  "aligned crops (pixels from outside the photo tinted red); 0 for none.", minimum=0)
    threads: int = setting(4, "Photos decoded, searched and warped at once.", minimum=1)
    overwrite: bool = setting(False, "Replace an existing output's faces.parquet and images.")

    def check(self) -> None:
        check_settings(self)

    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings(align=self.align, faces=self.faces, align_padding=self.align_padding)

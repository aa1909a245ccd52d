"""Faces as FFHQ-trained models expect them: FFHQ's alignment from MTCNN landmarks, every face of a
photo, pixels outside the photo unknown. Real photos: tests/data/photos (public domain)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.align import Face, FaceAligner, box_quad, ffhq_quad, warp_quad
from pipeline.data.decode import DecodeSettings, input_id
from tests import photos

RESOLUTION = 256


def jpeg(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner("ffhq", faces="all")


def face_geometry(aligner: FaceAligner, image: Image.Image) -> tuple[np.ndarray, float, float]:
    """Measured on an aligned crop by detecting its face again: (the point FFHQ centres, in units of
    the side; the side FFHQ's recipe asks for, in units of the side; the eye line's angle in degrees)."""
    faces, _ = aligner.detect(image)
    face = faces[0]
    left, right = face.eyes
    eye_avg = (left + right) / 2
    eye_to_eye, eye_to_mouth = right - left, face.mouth - eye_avg
    centre = (eye_avg + 0.1 * eye_to_mouth) / image.width
    side = 2 * max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth)) / image.width
    return centre, side, math.degrees(math.atan2(eye_to_eye[1], eye_to_eye[0]))


def synthetic_face(eye_left, eye_right, mouth_left, mouth_right) -> Face:
    nose = tuple((np.add(eye_left, eye_right) / 2 + np.add(mouth_left, mouth_right) / 2) / 2)
    return Face(index=0, confidence=1.0, box=(0, 0, 1, 1),
                landmarks=(tuple(eye_left), tuple(eye_right), nose, tuple(mouth_left), tuple(mouth_right)))


def test_ffhq_quad_follows_the_recipe_on_exact_landmarks():
    # eyes 40 px apart, mouth 48 px below their midpoint: the side is 2 * max(2 * 40, 1.8 * 48) = 172.8
    face = synthetic_face((80, 100), (120, 100), (85, 148), (115, 148))
    quad = ffhq_quad(face)
    centre = quad.mean(axis=0)
    assert np.allclose(centre, [100, 100 + 0.1 * 48])
    assert np.allclose(np.hypot(*(quad[3] - quad[0])), 172.8) and np.allclose(np.hypot(*(quad[1] - quad[0])), 172.8)
    assert np.allclose(quad[0], [100 - 86.4, 104.8 - 86.4]), "upright face: an axis-aligned square, top-left first"


def test_ffhq_quad_turns_with_the_face():
    face = synthetic_face((80, 100), (120, 100), (85, 148), (115, 148))
    angle = math.radians(30)
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    turned = Face(0, 1.0, (0, 0, 1, 1), tuple(tuple(turn @ np.array(p)) for p in face.landmarks))
    assert np.allclose(ffhq_quad(turned), (turn @ ffhq_quad(face).T).T, atol=1e-9)


@pytest.mark.parametrize("degrees", [0, 20, -35])
def test_an_aligned_real_face_is_centred_sized_and_level_as_in_ffhq(aligner, degrees):
    aligned, reason = aligner.align(photos.rotated(degrees), RESOLUTION)
    assert reason is None and len(aligned) == 1
    centre, side, angle = face_geometry(aligner, aligned[0].image)
    assert np.allclose(centre, [0.5, 0.5], atol=0.03), centre
    assert side == pytest.approx(1.0, abs=0.06)
    assert abs(angle) < 4.0
    assert aligned[0].known is None, "the whole square lies inside the photo"


def test_every_face_of_a_group_photo_is_aligned_most_confident_first(aligner):
    aligned, reason = aligner.align(photos.group(), RESOLUTION)
    assert reason is None and [a.face.index for a in aligned] == [0, 1, 2]
    confidences = [a.face.confidence for a in aligned]
    assert confidences == sorted(confidences, reverse=True) and min(confidences) >= 0.9
    centres = sorted(((a.face.box[0] + a.face.box[2]) / 2 for a in aligned))
    assert centres[0] < 400 < centres[1] < 950 < centres[2], "three different faces, one per copy"
    for a in aligned:
        centre, side, angle = face_geometry(aligner, a.image)
        assert np.allclose(centre, [0.5, 0.5], atol=0.03) and side == pytest.approx(1.0, abs=0.06) and abs(angle) < 4


def test_best_keeps_only_the_most_confident_face():
    aligned, _ = FaceAligner("ffhq", faces="best").align(photos.group(), 64)
    everything, _ = FaceAligner("ffhq", faces="all").align(photos.group(), 64)
    assert len(aligned) == 1 and aligned[0].face == everything[0].face


def test_pixels_outside_the_photo_are_unknown_and_the_rest_are_the_photo():
    full = photos.astronaut()
    cut = photos.cut_at_edge()
    face = FaceAligner("ffhq").detect(full)[0][0]
    quad = ffhq_quad(face)
    whole, known_whole = warp_quad(full, quad, RESOLUTION)
    part, known = warp_quad(cut, quad - [photos.CUT_LEFT, 0], RESOLUTION)
    assert known_whole is None
    assert known is not None and 0.3 < known.mean() < 0.9
    # where each output pixel's centre falls in the photo (the square maps affinely; quads are in
    # pixel-centre coordinates, so the cut is at CUT_LEFT - 0.5), and how far that is right of the
    # cut, in output pixels: left of the cut unknown, clear of it known
    v, u = (np.mgrid[:RESOLUTION, :RESOLUTION] + 0.5) / RESOLUTION
    x = quad[0, 0] + u * (quad[3, 0] - quad[0, 0]) + v * (quad[1, 0] - quad[0, 0])
    pixel = np.hypot(*(quad[3] - quad[0])) / RESOLUTION
    right_of_cut = (x - (photos.CUT_LEFT - 0.5)) / pixel
    assert (known[0][right_of_cut < 0] == 0).all()
    assert (known[0][right_of_cut > 1.5] == 1).all()
    inside = known[0].astype(bool)
    difference = np.abs(np.asarray(part, dtype=float) - np.asarray(whole, dtype=float))[inside]
    assert difference.mean() < 1.0, "known pixels are the photo's, resampled the same way"


def test_a_face_cut_by_the_edge_is_aligned_with_a_mask(aligner):
    decoded = DecodeSettings(align="ffhq").decode(jpeg(photos.cut_at_edge()), resolution=64, channels=3,
                                                  aligner=FaceAligner("ffhq"))
    assert decoded.ok and decoded.valid is not None and 0 < decoded.valid.mean() < 1
    assert decoded.face is not None and decoded.quad.shape == (4, 2)


def test_reflect_padding_fills_the_outside_as_ffhq_did_and_counts_it_known():
    face = FaceAligner("ffhq").detect(photos.astronaut())[0][0]
    image, known = warp_quad(photos.cut_at_edge(), ffhq_quad(face) - [photos.CUT_LEFT, 0], 64, padding="reflect")
    assert known is None
    left = np.asarray(image, dtype=float)[:, :8]
    assert left.std() > 2, "mirrored photo, not a flat fill"


def test_box_alignment_masks_the_outside_too():
    face = FaceAligner("faces").detect(photos.cut_at_edge())[0][0]
    _, known = warp_quad(photos.cut_at_edge(), box_quad(face, 0.25), 64)
    assert known is not None and known.mean() < 1


def test_row_ids_name_each_face_and_lead_back_to_the_input():
    settings = DecodeSettings(align="ffhq", faces="all")
    rows = settings.decode_rows(jpeg(photos.group()), resolution=32, channels=3, aligner=settings.aligner())
    ids = settings.row_ids("party/group.jpg", rows)
    assert ids == ["party/group.jpg#face0", "party/group.jpg#face1", "party/group.jpg#face2"]
    assert {input_id(i) for i in ids} == {"party/group.jpg"}
    assert input_id("a#face-card.png") == "a#face-card.png", "only a trailing #face<k> is a face suffix"
    best = DecodeSettings(align="ffhq")
    assert best.row_ids("x.jpg", best.decode_rows(jpeg(photos.group()), resolution=32, channels=3,
                                                  aligner=best.aligner())) == ["x.jpg"]


def test_a_photo_without_a_face_stays_one_error_row():
    settings = DecodeSettings(align="ffhq", faces="all")
    blank = Image.new("RGB", (120, 120), (30, 160, 60))
    rows = settings.decode_rows(jpeg(blank), resolution=32, channels=3, aligner=settings.aligner())
    assert len(rows) == 1 and not rows[0].ok and rows[0].error.startswith("no face")
    assert settings.row_ids("blank.jpg", rows) == ["blank.jpg"]


def face_folder(root) -> None:
    root.mkdir(parents=True)
    (root / "group.jpg").write_bytes(jpeg(photos.group()))
    (root / "cut.jpg").write_bytes(jpeg(photos.cut_at_edge()))
    (root / "grass.jpg").write_bytes(jpeg(Image.new("RGB", (90, 90), (20, 170, 40))))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")


def test_invert_with_ffhq_alignment_makes_a_row_per_face(tmp_path, G):
    from pipeline.invert.config import InvertConfig
    from pipeline.store.store import open_store
    from tests.stores import invert_here

    face_folder(tmp_path / "in")
    from pipeline.models.bundle import write_bundle

    G_path = tmp_path / "G.safetensors"
    write_bundle(str(G_path), {"G_ema": G})
    cfg = InvertConfig(input=str(tmp_path / "in"), output=str(tmp_path / "store"), generator=str(G_path),
                       stages=["refine"], steps=1, perceptual="none", align="ffhq", faces="all", progress=False)
    rows = invert_here(cfg).set_index("image_id")
    assert sorted(rows.index) == ["broken.jpg", "cut.jpg#face0", "grass.jpg", "group.jpg#face0", "group.jpg#face1",
                                  "group.jpg#face2"]
    assert rows.loc["grass.jpg", "error"].startswith("no face")
    assert rows.loc["broken.jpg", "status"] == "error"
    faces = rows[rows.status == "ok"]
    assert (faces.face_confidence >= 0.9).all() and len(faces.face_landmarks.iloc[0]) == 10
    assert list(rows.loc[["group.jpg#face0", "group.jpg#face1", "group.jpg#face2"], "face_index"]) == [0, 1, 2]
    assert rows.loc["cut.jpg#face0", "known_fraction"] < 0.9
    assert (rows.loc[[i for i in faces.index if i.startswith("group")], "known_fraction"] == 1).all()
    store = open_store(str(tmp_path / "store"))
    inputs = store.read_inputs(list(faces.shard), list(faces.index))
    assert set(inputs) == set(faces.index), "a face row's input is found again by its id"
    assert not np.allclose(inputs["group.jpg#face0"], inputs["group.jpg#face2"])


def test_latentmill_align_writes_crops_masks_and_landmarks_ready_for_invert(tmp_path):
    from click.testing import CliRunner

    from latentmill.cli import main
    from pipeline.data.planning import plan_shards
    from pipeline.data.sources import read_shard

    face_folder(tmp_path / "in")
    out = tmp_path / "aligned"
    args = ["align", "--input", str(tmp_path / "in"), "--output", str(out), "--faces", "all", "--resolution", "64",
            "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "aligned 4 faces from 4 photos" in result.output and "file://" in result.output
    table = pd.read_parquet(out / "faces.parquet").set_index("image_id")
    assert len(table) == 6 and set(table.status) == {"ok", "error"}
    assert table.loc["cut.jpg#face0", "mask"] == "cut.face0.mask.png"
    assert table.loc["group.jpg#face1", "output"] == "group.face1.png" and pd.isna(table.loc["group.jpg#face1", "mask"])
    assert Image.open(out / "images" / "group.face1.png").size == (64, 64)
    records = {r.image_id: r for spec in plan_shards(str(out / "images")) for r in read_shard(spec)}
    assert set(records) == {"cut.face0.png", "group.face0.png", "group.face1.png", "group.face2.png"}
    assert records["cut.face0.png"].mask is not None, "the mask travels with its crop into invert"
    assert Image.open(out / "contact_sheet.png").width > 64 and "contact_sheet.png" in result.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--overwrite" in again.output

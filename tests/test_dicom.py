"""DICOM cine reading and writing: real Sunnybrook/scout data and synthetic folders built with pydicom.

The synthetic writer below is independent of napari_cinema.io.dicom.write_dicom_cine so that the
reader is tested against files we construct by hand (a writer bug cannot hide a reader bug).
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_cinema.io.dicom import (
    DicomCineWarning,
    read_dicom_cine,
    read_dicom_cines,
    scan_dicom,
    scan_dicom_report,
    view_from_description,
    write_dicom_cine,
)
from napari_cinema.io.study import CineLoadError, CineStudy, PatientInfo

MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _rotation(seed: int = 0) -> np.ndarray:
    """A double-oblique orthonormal frame (row cosines, column cosines, normal) in LPS."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 2] *= -1
    return q.T  # rows: row_cos, col_cos, normal = row_cos x col_cos


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def write_cine(
    folder: Path,
    image: np.ndarray,
    *,
    spacing=(40.0, 8.0, 1.5, 1.25),
    rotation: np.ndarray | None = None,
    origin=(10.0, -20.0, 30.0),
    description: str = "cine sax",
    series_uid: str | None = None,
    series_number: int = 5,
    per_slice_series: bool = False,
    skip_slices: tuple[int, ...] = (),
    skip_frames: tuple[tuple[int, int], ...] = (),
    shuffle: bool = False,
    misleading_slice_location: bool = False,
    trigger_jitter: float = 0.0,
    slope: float = 1.0,
    intercept: float = 0.0,
    patient: dict | None = None,
    reverse_instance_numbers: bool = False,
    size_override: dict[int, tuple[int, int]] | None = None,
) -> dict[tuple[int, int], Path]:
    """Write a cine image[t, z, y, x] (stored values, before rescale) as single-frame MR files.

    Returns {(t, z): path}. Slice z sits at origin + z * dz * normal (LPS)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_t, n_z, n_y, n_x = image.shape
    dt, dz, dy, dx = spacing
    rot = _rotation(0) if rotation is None else rotation
    row_cos, col_cos, normal = rot
    study_uid = "1.2.826.0.1.3680043.8.498.1"
    series_uid = series_uid or generate_uid()
    rng = random.Random(0)
    paths = {}
    names = list(range(n_t * n_z))
    if shuffle:
        rng.shuffle(names)
    for z in range(n_z):
        if z in skip_slices:
            continue
        s_uid = generate_uid() if per_slice_series else series_uid
        for t in range(n_t):
            if (t, z) in skip_frames:
                continue
            ds = Dataset()
            sop_uid = generate_uid()
            ds.file_meta = _meta(MR, sop_uid)
            ds.SOPClassUID = MR
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = s_uid
            ds.SeriesNumber = series_number + (z if per_slice_series else 0)
            ds.SeriesDescription = f"{description}_b{z + 1}" if per_slice_series else description
            ds.Modality = "MR"
            ds.PatientID = "P1"
            ds.PatientName = "Test^Patient"
            for key, value in (patient or {}).items():
                setattr(ds, key, value)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "CINE"]
            inst = z * n_t + t + 1
            ds.InstanceNumber = (n_t * n_z - inst + 1) if reverse_instance_numbers else inst
            ds.ImageOrientationPatient = [f"{v:.10f}" for v in np.concatenate([row_cos, col_cos])]
            ipp = np.asarray(origin) + z * dz * normal
            ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
            # Real scanners get SliceLocation wrong (Sunnybrook): make it lie on purpose.
            ds.SliceLocation = f"{(-6.7 * z if misleading_slice_location else float(ipp @ normal)):.3f}"
            ds.PixelSpacing = [f"{dy}", f"{dx}"]
            ds.SliceThickness = f"{dz}"
            ds.TriggerTime = f"{t * dt + trigger_jitter * z:.4f}"
            ds.CardiacNumberOfImages = n_t
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            rows, cols = (size_override or {}).get(z, (n_y, n_x))
            ds.Rows, ds.Columns = rows, cols
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.RescaleSlope = f"{slope}"
            ds.RescaleIntercept = f"{intercept}"
            pixels = np.zeros((rows, cols), np.uint16)
            pixels[: min(rows, n_y), : min(cols, n_x)] = image[t, z, :rows, :cols]
            ds.PixelData = pixels.tobytes()
            path = folder / f"{names[z * n_t + t]:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths[(t, z)] = path
    return paths


def coded_image(n_t=5, n_z=6, n_y=12, n_x=10) -> np.ndarray:
    """Stored values that say where they are: 1000 * z + 10 * t + a small in-plane ramp."""
    t, z, y, x = np.meshgrid(np.arange(n_t), np.arange(n_z), np.arange(n_y), np.arange(n_x), indexing="ij")
    return (1000 * z + 10 * t + (y + 2 * x) % 7).astype(np.uint16)


def expected_affine(rot, origin, spacing) -> np.ndarray:
    _, dz, dy, dx = spacing
    lps = np.eye(4)
    lps[:3, 0] = rot[0] * dx  # column index steps along the row cosines
    lps[:3, 1] = rot[1] * dy
    lps[:3, 2] = rot[2] * dz
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------
def _check_geometry_order(study: CineStudy) -> None:
    """Slice k of the array is the file whose ImagePositionPatient the affine predicts, and those
    positions rise strictly along the slice normal (never SliceLocation)."""
    normal = None
    projections = []
    for k, f in enumerate(study.dicom.files[0]):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        ipp = np.array(ds.ImagePositionPatient, float)
        predicted_lps = (LPS_TO_RAS @ study.affine @ [0, 0, k, 1])[:3]
        np.testing.assert_allclose(predicted_lps, ipp, atol=0.05)
        projections.append(float(ipp @ normal))
    assert np.all(np.diff(projections) > 0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sunnybrook_101(shared_data: Path) -> None:
    folder = shared_data / "sunnybrook" / "SCD0000101" / "dicom"
    groups = scan_dicom(folder)
    study = read_dicom_cine(folder)
    assert len(groups) == 1 and groups[0].n_positions == 12 and groups[0].n_frames_per_position == 20
    assert study.shape == (20, 12, 256, 256)
    dt, dz, dy, dx = study.spacing
    assert dz == pytest.approx(10.0, abs=0.01)  # SliceLocation steps 6.7: must not be used
    assert dy == pytest.approx(1.367, abs=0.001) and dx == pytest.approx(1.367, abs=0.001)
    assert study.view == "sax"
    assert dt is not None and 30 < dt < 45
    assert np.all(np.diff(study.frame_times_ms) > 0)
    assert study.patient.patient_id == "SCD0000101"
    assert study.patient.rr_interval_ms is not None and study.patient.heart_rate_bpm is not None
    assert study.image.dtype == np.float32 and study.image.max() > 100
    assert len(study.dicom.sop_instance_uids) == 20 and len(study.dicom.sop_instance_uids[0]) == 12
    _check_geometry_order(study)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sunnybrook_201(shared_data: Path) -> None:
    study = read_dicom_cine(shared_data / "sunnybrook" / "SCD0000201" / "dicom")
    assert study.n_slices == 13 and study.n_frames == 20
    assert study.spacing[1] == pytest.approx(10.0, abs=0.01)
    assert study.view == "sax"
    _check_geometry_order(study)


def test_scout_is_not_a_cine(shared_data: Path) -> None:
    folder = shared_data / "scout" / "SCD0000101"
    with pytest.raises(CineLoadError) as err:
        read_dicom_cine(folder)
    msg = str(err.value)
    assert str(folder) in msg and "no cine found" in msg
    for word in ("localiser", "axial", "sagittal", "coronal", "SCOUT", "single frame"):
        assert word in msg
    with pytest.raises(CineLoadError):
        read_dicom_cines(folder)
    groups = scan_dicom(folder)
    assert len(groups) == 3 and all(g.is_localizer and not g.is_cine for g in groups)


# ---------------------------------------------------------------------------------------------
# synthetic geometry and ordering
# ---------------------------------------------------------------------------------------------
def test_oblique_geometry_affine(tmp_path: Path) -> None:
    img = coded_image()
    rot, origin, spacing = _rotation(3), np.array([12.5, -40.0, 77.0]), (40.0, 8.0, 1.5, 1.25)
    write_cine(tmp_path, img, rotation=rot, origin=origin, spacing=spacing, slope=0.5, intercept=-3)
    study = read_dicom_cine(tmp_path)
    np.testing.assert_allclose(study.affine, expected_affine(rot, origin, spacing), atol=1e-5)
    np.testing.assert_allclose(study.image, img * 0.5 - 3)
    assert study.spacing == pytest.approx(spacing)
    # a voxel (z, y, x) lands where DICOM says: IPP + x * dx * row_cos + y * dy * col_cos (+ z)
    z, y, x = 4, 7, 3
    lps = origin + x * 1.25 * rot[0] + y * 1.5 * rot[1] + z * 8.0 * rot[2]
    np.testing.assert_allclose(study.world_coordinates(np.array([z, y, x])), lps * [-1, -1, 1], atol=1e-5)
    assert study.view == "sax" and study.description == "cine sax"
    np.testing.assert_allclose(study.frame_times_ms, np.arange(5) * 40.0)


def test_shuffled_files_and_lying_slice_location(tmp_path: Path) -> None:
    img = coded_image()
    write_cine(
        tmp_path,
        img,
        shuffle=True,
        misleading_slice_location=True,
        reverse_instance_numbers=True,
        trigger_jitter=1.5,
        description="",  # geometry alone must say SAX: 6 parallel oblique slices
    )
    study = read_dicom_cine(tmp_path)
    np.testing.assert_array_equal(study.image, img)  # z and t both in geometric / temporal order
    assert study.view == "sax"
    # trigger times differ per slice: the frame time is the mean over slices
    np.testing.assert_allclose(study.frame_times_ms, np.arange(5) * 40.0 + 1.5 * 2.5)
    assert study.spacing[0] == pytest.approx(40.0)
    assert study.spacing[1] == pytest.approx(8.0)


def test_missing_slice_is_named(tmp_path: Path) -> None:
    write_cine(tmp_path, coded_image(), skip_slices=(3,), origin=(0.0, 0.0, 0.0), rotation=np.eye(3))
    with pytest.raises(CineLoadError) as err:
        read_dicom_cine(tmp_path)
    msg = str(err.value)
    assert "missing slice" in msg and "24.00 mm" in msg  # slice 3 of an 8 mm stack along z
    assert str(tmp_path) in msg


def test_uneven_frames_error(tmp_path: Path) -> None:
    write_cine(tmp_path, coded_image(), skip_frames=((2, 1),))
    with pytest.raises(CineLoadError, match="different numbers of frames per slice position") as err:
        read_dicom_cine(tmp_path)
    assert "no frame near trigger time 80 ms, frame 2" in str(err.value)


def test_frames_missing_everywhere_is_incomplete(tmp_path: Path) -> None:
    write_cine(tmp_path, coded_image(), skip_frames=tuple((4, z) for z in range(6)))
    with pytest.raises(CineLoadError, match="incomplete cine: 4 frames per slice where CardiacNumberOf"):
        read_dicom_cine(tmp_path)


def test_different_sizes_error(tmp_path: Path) -> None:
    write_cine(tmp_path, coded_image(), size_override={2: (8, 10)})
    with pytest.raises(CineLoadError, match="different sizes"):
        read_dicom_cine(tmp_path)


def test_truncated_pixel_data_leaving_a_hole(tmp_path: Path) -> None:
    paths = write_cine(tmp_path, coded_image(n_y=32, n_x=32))
    victim = paths[(2, 3)]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(CineLoadError) as err:
        read_dicom_cine(tmp_path)
    assert victim.name in str(err.value) and "truncated" in str(err.value)


def test_truncated_header_leaving_a_hole(tmp_path: Path) -> None:
    paths = write_cine(tmp_path, coded_image())
    victim = paths[(1, 2)]
    victim.write_bytes(victim.read_bytes()[:300])  # cut inside the header: position unknown
    with pytest.raises(CineLoadError) as err:
        read_dicom_cine(tmp_path)
    msg = str(err.value)
    assert victim.name in msg and "corrupt" in msg


def test_only_corrupt_files(tmp_path: Path) -> None:
    paths = write_cine(tmp_path, coded_image(n_t=2, n_z=1))
    for p in paths.values():
        p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(CineLoadError) as err:
        read_dicom_cine(tmp_path)
    assert "no DICOM images found" in str(err.value) and paths[(0, 0)].name in str(err.value)


def test_non_image_and_text_files_are_ignored(tmp_path: Path) -> None:
    img = coded_image()
    write_cine(tmp_path / "cine", img)
    (tmp_path / "README.txt").write_text("not a DICOM file\n")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    sr = Dataset()  # a DICOM object with no pixel data (a report)
    sr.file_meta = _meta("1.2.840.10008.5.1.4.1.1.88.11", generate_uid())
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID
    sr.Modality = "SR"
    sr.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    bare = Dataset()  # no preamble, no meta: raw DICOM stream
    bare.PatientName = "Bare^Dataset"
    bare.PatientID = "X"
    bare.save_as(tmp_path / "bare.dcm", implicit_vr=True, little_endian=True)
    scan = scan_dicom_report(tmp_path)
    assert len(scan.not_dicom) == 2 and len(scan.not_image) == 2 and not scan.corrupt
    with warnings.catch_warnings():
        warnings.simplefilter("error", DicomCineWarning)  # nothing worth a warning here
        study = read_dicom_cine(tmp_path)
    np.testing.assert_array_equal(study.image, img)


def test_single_frame_stack_is_not_a_cine(tmp_path: Path) -> None:
    write_cine(tmp_path, coded_image(n_t=1), description="T2 haste")
    with pytest.raises(CineLoadError, match="single-frame series"):
        read_dicom_cine(tmp_path)
    with pytest.raises(CineLoadError, match="single frame per position"):
        read_dicom_cine(tmp_path, series="T2 haste")


def test_mixed_series_listed_and_split(tmp_path: Path) -> None:
    sax = coded_image()
    lax = coded_image(n_z=1)
    write_cine(tmp_path / "a", sax, description="cine SAX stack", series_number=7)
    write_cine(tmp_path / "b", lax, description="CINE 4CH", series_number=8, rotation=_rotation(5))
    with pytest.raises(CineLoadError) as err:
        read_dicom_cine(tmp_path)
    msg = str(err.value)
    assert "2 cine series" in msg and "cine SAX stack" in msg and "CINE 4CH" in msg
    studies = read_dicom_cines(tmp_path)
    assert sorted(s.view for s in studies) == ["lax_4c", "sax"]
    four = read_dicom_cine(tmp_path, series="cine 4ch")
    assert four.view == "lax_4c" and four.shape == (5, 1, 12, 10)
    assert four.spacing[1] == pytest.approx(8.0)  # single slice: SliceThickness
    by_number = read_dicom_cine(tmp_path, series="7")
    np.testing.assert_array_equal(by_number.image, sax)
    with pytest.raises(CineLoadError, match="no series matches"):
        read_dicom_cine(tmp_path, series="nonsense")
    # a single file selects its own series in its folder
    one = read_dicom_cine(next((tmp_path / "b").glob("*.dcm")))
    assert one.view == "lax_4c"


def test_one_series_per_slice_is_merged(tmp_path: Path) -> None:
    img = coded_image(n_z=7)
    write_cine(tmp_path, img, description="CINE_segmented_SAX", per_slice_series=True, shuffle=True)
    groups = scan_dicom(tmp_path)
    assert len(groups) == 1
    g = groups[0]
    assert g.n_positions == 7 and len(g.series_instance_uids) == 7 and g.n_frames_per_position == 5
    assert "merged" in g.describe()
    study = read_dicom_cine(tmp_path)
    np.testing.assert_array_equal(study.image, img)
    assert study.view == "sax" and study.description == "CINE_segmented_SAX"
    assert len(study.dicom.series_instance_uids) == 7


def test_repeated_slice_series_uses_the_later_one(tmp_path: Path) -> None:
    img = coded_image(n_z=6)
    rot, origin = _rotation(0), np.array([10.0, -20.0, 30.0])
    write_cine(tmp_path, img, description="sax", per_slice_series=True, rotation=rot, origin=origin)
    repeat = coded_image(n_z=1) + 7
    write_cine(tmp_path / "again", repeat, description="sax", per_slice_series=True, series_number=99,
               rotation=rot, origin=origin + 2 * 8.0 * rot[2])
    with pytest.warns(DicomCineWarning, match="series at slice position"):
        study = read_dicom_cine(tmp_path)
    expected = img.copy()
    expected[:, 2] = repeat[:, 0]
    np.testing.assert_array_equal(study.image, expected)


def test_patient_data(tmp_path: Path) -> None:
    patient = dict(
        PatientSize="1.72", PatientWeight="68.5", PatientSex="F", PatientAge="053Y", HeartRate=64,
        NominalInterval=937,
    )
    write_cine(tmp_path, coded_image(n_z=2), patient=patient)
    p = read_dicom_cine(tmp_path).patient
    assert p.height_cm == pytest.approx(172.0) and p.weight_kg == pytest.approx(68.5)
    assert p.sex == "F" and p.age_years == 53 and p.heart_rate_bpm == 64 and p.rr_interval_ms == 937
    assert p.patient_id == "P1"


@pytest.mark.parametrize(
    ("text", "view"),
    [
        ("CINE_segmented_SAX_b3", "sax"),
        ("sa cine", "sax"),
        ("Short Axis stack", "sax"),
        ("CINE_segmented_LAX_4Ch", "lax_4c"),
        ("cine HLA", "lax_4c"),
        ("tf2d 2CV", "lax_2c"),
        ("VLA cine", "lax_2c"),
        ("3ch", "lax_3c"),
        ("LVOT cine", "lax_3c"),
        ("cine_retro", None),
        ("sagittal", None),  # 'sa' must be a word, not a prefix
        ("", None),
    ],
)
def test_view_from_description(text: str, view: str | None) -> None:
    assert view_from_description(text) == view


# ---------------------------------------------------------------------------------------------
# enhanced multi-frame MR
# ---------------------------------------------------------------------------------------------
def write_enhanced(path: Path, image: np.ndarray, rot, origin, spacing) -> None:
    """An Enhanced MR Image Storage object holding the whole cine, frames in (z, t) order."""
    n_t, n_z, n_y, n_x = image.shape
    dt, dz, dy, dx = spacing
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _meta(ENHANCED_MR, sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_MR, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "MR", "cine_sax_enhanced", 3
    ds.PatientID = "E1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = n_t * n_z
    ds.Rows, ds.Columns = n_y, n_x
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    shared = Dataset()
    meas = Dataset()
    meas.PixelSpacing = [f"{dy}", f"{dx}"]
    meas.SliceThickness = f"{dz}"
    shared.PixelMeasuresSequence = Sequence([meas])
    ori = Dataset()
    ori.ImageOrientationPatient = [f"{v:.10f}" for v in np.concatenate([rot[0], rot[1]])]
    shared.PlaneOrientationSequence = Sequence([ori])
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = "2", "0", "US"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame, frames = [], []
    for z in range(n_z):
        for t in range(n_t):
            item = Dataset()
            pos = Dataset()
            pos.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + z * dz * rot[2]]
            item.PlanePositionSequence = Sequence([pos])
            sync = Dataset()
            sync.NominalCardiacTriggerDelayTime = t * dt
            item.CardiacSynchronizationSequence = Sequence([sync])
            content = Dataset()
            content.TemporalPositionIndex = t + 1
            content.InStackPositionNumber = z + 1
            content.StackID = "1"
            item.FrameContentSequence = Sequence([content])
            per_frame.append(item)
            frames.append(image[t, z])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(frames).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe(tmp_path: Path) -> None:
    img = coded_image(n_t=4, n_z=5)
    rot, origin, spacing = _rotation(7), np.array([5.0, 6.0, -7.0]), (35.0, 6.0, 1.1, 1.3)
    write_enhanced(tmp_path / "enhanced.dcm", img, rot, origin, spacing)
    for path in (tmp_path, tmp_path / "enhanced.dcm"):
        study = read_dicom_cine(path)
        np.testing.assert_array_equal(study.image, img * 2.0)
        np.testing.assert_allclose(study.affine, expected_affine(rot, origin, spacing), atol=1e-5)
        assert study.spacing == pytest.approx(spacing)
        np.testing.assert_allclose(study.frame_times_ms, np.arange(4) * 35.0)
        assert study.view == "sax"
        assert study.dicom.frame_numbers[2][3] == 3 * 4 + 2 + 1  # frame of (t=2, z=3)
        assert study.dicom.sop_class_uid == ENHANCED_MR
    g = scan_dicom(tmp_path)[0]
    assert g.n_files == 1 and g.n_positions == 5 and g.multi_frame


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _study(n_t=6, n_z=4, view="sax", seed=1) -> CineStudy:
    rng = np.random.default_rng(seed)
    rot, origin = _rotation(seed), np.array([-30.0, 55.5, 12.25])
    spacing = (33.3, 7.5, 1.4, 1.6)
    return CineStudy(
        image=(rng.random((n_t, n_z, 14, 11)) * 900.0 - 100.0).astype(np.float32),
        spacing=spacing,
        affine=expected_affine(rot, origin, spacing),
        view=view,
        frame_times_ms=np.arange(n_t) * 33.3 + 5.0,
        patient=PatientInfo(
            patient_id="W1", height_cm=181.0, weight_kg=79.5, sex="M", age_years=61, heart_rate_bpm=72
        ),
    )


@pytest.mark.parametrize(("view", "n_z"), [("sax", 4), ("lax_4c", 1), ("lax_2c", 1)])
def test_write_round_trip(tmp_path: Path, view: str, n_z: int) -> None:
    study = _study(n_z=n_z, view=view)
    paths = write_dicom_cine(study, tmp_path / "out")
    assert len(paths) == study.n_frames * study.n_slices
    for p in paths[:3]:
        assert p.read_bytes()[128:132] == b"DICM"  # preamble + prefix: a DICOM Part 10 file
        ds = pydicom.dcmread(p, force=False)
        pydicom.dataset.validate_file_meta(ds.file_meta, enforce_standard=True)
        assert ds.SOPClassUID == MR and ds.Modality == "MR"
    back = read_dicom_cine(tmp_path / "out")
    value_range = float(study.image.max() - study.image.min())
    assert np.max(np.abs(back.image - study.image)) <= 1e-3 * value_range
    np.testing.assert_allclose(back.affine, study.affine, atol=1e-4)
    assert back.spacing == pytest.approx(study.spacing, abs=1e-4)
    assert back.view == view
    np.testing.assert_allclose(back.frame_times_ms, study.frame_times_ms, atol=1e-3)
    assert back.patient.height_cm == pytest.approx(181.0) and back.patient.weight_kg == pytest.approx(79.5)
    assert back.patient.sex == "M" and back.patient.age_years == 61 and back.patient.heart_rate_bpm == 72
    assert back.patient.rr_interval_ms == pytest.approx(60000 / 72, abs=1)


def test_write_left_handed_affine_keeps_world_positions(tmp_path: Path) -> None:
    study = _study(n_z=3)
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, 2.0  # slice k -> 2 - k
    study.affine = study.affine @ flip  # same voxels, slices listed the other way round
    study.image = study.image[:, ::-1].copy()
    with pytest.warns(DicomCineWarning, match="left-handed"):
        write_dicom_cine(study, tmp_path)
    back = read_dicom_cine(tmp_path)  # always right-handed: slices along row x column
    value_range = float(study.image.max() - study.image.min())
    assert np.max(np.abs(back.image[:, ::-1] - study.image)) <= 1e-3 * value_range
    np.testing.assert_allclose(back.affine @ flip, study.affine, atol=1e-4)


def test_write_integer_image_is_lossless_and_named(tmp_path: Path) -> None:
    study = _study()
    study.image = np.round(study.image) + 100  # integers within uint16 are stored as they are
    paths = write_dicom_cine(study, tmp_path, series_description="post-op", patient_id="ABC")
    ds = pydicom.dcmread(paths[0])
    assert ds.SeriesDescription == "post-op sax" and ds.PatientID == "ABC"
    assert float(ds.RescaleSlope) == 1.0
    back = read_dicom_cine(tmp_path)
    np.testing.assert_array_equal(back.image, study.image)


def test_write_uses_spacing_when_the_affine_is_bare(tmp_path: Path) -> None:
    image = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    study = CineStudy(image=image, spacing=(None, 10.0, 1.5, 1.25))  # identity affine
    with pytest.warns(DicomCineWarning, match="differ from spacing"):
        write_dicom_cine(study, tmp_path)
    back = read_dicom_cine(tmp_path)
    assert back.spacing == pytest.approx((None, 10.0, 1.5, 1.25))
    assert back.frame_times_ms is None  # no timing written, frames ordered by InstanceNumber
    np.testing.assert_allclose(back.affine, np.diag([1.25, 1.5, 10.0, 1.0]), atol=1e-6)
    np.testing.assert_array_equal(back.image, study.image)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEGLSLossless"])
def test_compressed_transfer_syntaxes(tmp_path: Path, syntax: str) -> None:
    """Hospital exports are often compressed; pixels must decode to the same values."""
    import pydicom
    import pydicom.uid

    img = coded_image()
    plain = tmp_path / "plain"
    packed = tmp_path / "packed"
    write_cine(plain, img)
    packed.mkdir()
    for p in sorted(plain.iterdir()):
        ds = pydicom.dcmread(p)
        ds.compress(getattr(pydicom.uid, syntax))
        ds.save_as(packed / p.name)
    np.testing.assert_array_equal(read_dicom_cine(packed).image, read_dicom_cine(plain).image)

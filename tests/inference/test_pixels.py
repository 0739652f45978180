"""dicom_io.pixels: decode, rescale, window, MONOCHROME1, compression, multi-frame, resize."""

from __future__ import annotations

import numpy as np
import pytest
from inference_dicom_files import multiframe, radiograph, write

from dicom_io import pixels


@pytest.fixture
def image() -> np.ndarray:
    yy, xx = np.mgrid[0:96, 0:128]
    return ((xx / 127) * 0.8 + 0.1 * (yy > 48)).astype(np.float32)


def test_monochrome2_round_trip(tmp_path, image):
    path = write(radiograph(image), tmp_path / "a.dcm")
    (frame,) = pixels.load_frames(path)
    assert frame.dtype == np.float32 and frame.shape == image.shape
    np.testing.assert_allclose(frame, image, atol=2e-3)


def test_monochrome1_is_inverted_to_display(tmp_path, image):
    path = write(radiograph(image, monochrome1=True), tmp_path / "m1.dcm")
    (frame,) = pixels.load_frames(path)
    np.testing.assert_allclose(frame, image, atol=2e-3)  # bright stays bright after inversion
    (raw,) = pixels.load_frames(path, invert_monochrome1=False)
    np.testing.assert_allclose(raw, 1 - image, atol=2e-3)


@pytest.mark.parametrize("compression", ["rle", "j2k"])
def test_compressed_transfer_syntaxes_decode(tmp_path, image, compression):
    ref = pixels.load_frames(write(radiograph(image), tmp_path / "u.dcm"))[0]
    got = pixels.load_frames(write(radiograph(image), tmp_path / f"{compression}.dcm", compression))[0]
    np.testing.assert_array_equal(got, ref)


def test_rescale_and_explicit_window(tmp_path, image):
    ds = radiograph(image, slope=2.0, intercept=-1024.0)
    (frame,) = pixels.load_frames(ds)
    np.testing.assert_allclose(frame, image, atol=2e-3)
    # explicit window in modality units: centre of the range, half width -> contrast doubles
    lo, hi = -1024.0, 4095 * 2 - 1024.0
    (narrow,) = pixels.load_frames(ds, window_spec=((lo + hi) / 2, (hi - lo) / 2))
    mid = (image > 0.3) & (image < 0.7)
    np.testing.assert_allclose(narrow[mid], np.clip((image[mid] - 0.25) * 2, 0, 1), atol=5e-3)


def test_windowing_functions():
    v = np.array([0.0, 50.0, 100.0])
    np.testing.assert_allclose(pixels.window(v, 50, 100, "LINEAR_EXACT"), [0, 0.5, 1])
    assert pixels.window(v, 50, 100, "SIGMOID")[1] == pytest.approx(0.5)
    assert pixels.window(v, 50, 100, "LINEAR")[0] == 0.0


def test_multiframe_and_model_input(image):
    frames = np.stack([image, 1 - image, image * 0.5])
    batch = pixels.load_model_input(multiframe(frames), (64, 64), 1, {"window": "minmax"})
    assert batch.shape == (3, 1, 64, 64) and batch.dtype == np.float32
    assert batch[0].mean() > batch[2].mean()


def test_to_model_input_aspect_channels_and_zscore(image):
    x = pixels.to_model_input(image, (64, 64), channels=3, keep_aspect=True)
    assert x.shape == (3, 64, 64)
    assert x[:, :4].max() == 0 and x[:, -4:].max() == 0  # letterbox rows (96x128 is wider than tall)
    z = pixels.to_model_input(image, (32, 32), normalise="zscore", mean=0.5, std=0.25)
    assert z.min() < 0 < z.max()


def test_missing_pixel_data_is_a_clear_error(image):
    ds = radiograph(image)
    del ds.PixelData
    with pytest.raises(pixels.PixelDataError, match="no Pixel Data"):
        pixels.load_frames(ds)

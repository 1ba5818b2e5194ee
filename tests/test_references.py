"""Reference maps for ``faml run --reference`` (:mod:`faml.io.references`), planted answers.

A Gaussian blob off the centre, made on one grid and read onto another, must stay at the same
physical position and match the blob made directly on the new grid; the low-pass must keep
what lies below its cut-off and remove what lies beyond; every bad input is one sentence.
"""

import logging

import numpy as np
import pytest

from faml.geometry.masks import default_mask
from faml.io.mrc import write_volume
from faml.io.references import (
    check_reference_count,
    lowpass_map,
    read_reference,
    read_references,
)

BLOB = np.array([30.0, -20.0, 15.0])  # Å from the centre voxel, (x, y, z)
SIGMA = 25.0  # Å


def _blob(box: int, voxel: float, at=BLOB, sigma=SIGMA) -> np.ndarray:
    """`(N, N, N)` Gaussian of s.d. ``sigma`` Å at ``at`` Å (x, y, z) from voxel N // 2."""
    c = box // 2
    z, y, x = (np.mgrid[:box, :box, :box] - c) * voxel
    r2 = (x - at[0]) ** 2 + (y - at[1]) ** 2 + (z - at[2]) ** 2
    return np.exp(-0.5 * r2 / sigma**2).astype(np.float32)


def _centroid(volume: np.ndarray) -> np.ndarray:
    """The centre of mass (x, y, z) in voxels from voxel N // 2."""
    v = np.clip(volume.astype(np.float64), 0, None)
    idx = np.indices(v.shape).reshape(3, -1)
    zyx = idx @ v.reshape(-1) / v.sum()
    return zyx[::-1] - volume.shape[0] // 2


def _corr(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


@pytest.mark.parametrize(
    ("box", "voxel"),
    [(64, 5.0), (16, 20.0), (40, 10.0), (65, 5.0)],
    ids=["half-voxel-2x-box", "2x-voxel-half-box", "larger-box", "odd-box"],
)
def test_resampled_blob_keeps_its_place(tmp_path, caplog, box, voxel):
    """The particles' grid is 32^3 at 10 A; the map's centre voxel is the particles'."""
    path = tmp_path / "ref.mrc"
    write_volume(path, _blob(box, voxel), voxel)
    with caplog.at_level(logging.WARNING, logger="faml"):
        got = read_reference(path, box=32, voxel_size=10.0)
    assert got.shape == (32,) * 3 and got.dtype == np.float32
    direct = _blob(32, 10.0)
    assert np.all(np.abs(_centroid(got) - BLOB / 10.0) < 0.5), _centroid(got)
    assert _corr(got, direct) > 0.99
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    if voxel != 10.0:
        assert warnings[0] == (
            f"reference {path}: {box}^3 at {voxel:g} A resampled to the particles' 32^3 at 10 A"
        )
    else:
        assert warnings[0] == (
            f"reference {path}: 40^3 cropped to the particles' 32^3 about its centre voxel (10 A)"
        )


def test_the_same_grid_is_read_as_it_is(tmp_path, caplog):
    path = tmp_path / "ref.mrc"
    blob = _blob(24, 10.0)
    write_volume(path, blob, 10.0)
    with caplog.at_level(logging.WARNING, logger="faml"):
        got = read_reference(path, box=24, voxel_size=10.0)
    assert np.array_equal(got, blob) and not caplog.records


def test_no_voxel_size_in_the_header_is_the_particles(tmp_path, caplog):
    path = tmp_path / "ref.mrc"
    blob = _blob(24, 10.0)
    write_volume(path, blob, None)
    with caplog.at_level(logging.WARNING, logger="faml"):
        got = read_reference(path, box=24, voxel_size=10.0)
    assert np.array_equal(got, blob)
    assert [r.getMessage() for r in caplog.records] == [
        f"reference {path}: no voxel size in its header; taken to be the particles' 10 A"
    ]


def _shell_power(volume: np.ndarray) -> np.ndarray:
    n = volume.shape[0]
    k = np.fft.fftfreq(n, 1.0 / n)
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    shells = np.rint(r).astype(int)
    power = np.abs(np.fft.fftn(volume)) ** 2
    return np.bincount(shells.ravel(), power.ravel(), minlength=n)[: n // 2]


def test_lowpass_removes_beyond_and_keeps_below():
    """Cut-off 40 A on 32^3 at 10 A: shell 8; the edge spans shells 7-9."""
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((32,) * 3).astype(np.float32)
    before, after = _shell_power(noise), _shell_power(lowpass_map(noise, 40.0, 10.0))
    ratio = after / before
    assert np.all(ratio[10:] < 1e-3), ratio
    assert np.all(ratio[1:7] > 0.9), ratio
    assert 0.2 < ratio[8] < 0.8  # the cosine edge: half-way at the cut-off


def test_read_references_lowpassed_and_masked(tmp_path):
    paths = [tmp_path / "a.mrc", tmp_path / "b.mrc"]
    write_volume(paths[0], _blob(24, 10.0), 10.0)
    write_volume(paths[1], _blob(24, 10.0, at=-BLOB), 10.0)
    got = read_references(paths, box=24, voxel_size=10.0, classes=2, lowpass=60.0, mask=None)
    assert got.shape == (2, 24, 24, 24) and got.dtype == np.float32
    expected = lowpass_map(_blob(24, 10.0), 60.0, 10.0) * default_mask(24)
    np.testing.assert_allclose(got[0], expected, atol=1e-6)
    ones = np.ones((24,) * 3, np.float32)
    one = read_references(paths[:1], box=24, voxel_size=10.0, classes=3, lowpass=60.0, mask=ones)
    np.testing.assert_allclose(one[0], lowpass_map(_blob(24, 10.0), 60.0, 10.0), atol=1e-6)


def _bad(tmp_path, name, data, voxel=10.0):
    import warnings

    import mrcfile

    path = tmp_path / name
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN in the data
        m.set_data(np.asarray(data, dtype=np.float32))
        if voxel:
            m.voxel_size = voxel
    return path


def test_bad_references_are_one_sentence(tmp_path):
    image = _bad(tmp_path, "image.mrc", np.ones((24, 24)))
    flat = _bad(tmp_path, "flat.mrc", np.zeros((24, 24, 24)))
    cuboid = _bad(tmp_path, "cuboid.mrc", np.ones((20, 24, 24)))
    nan = _blob(24, 10.0)
    nan[3, 4, 5], nan[6, 7, 8] = np.nan, np.inf
    nan = _bad(tmp_path, "nan.mrc", nan)
    outside = np.zeros((24, 24, 24))
    outside[0, 0, 0] = 1.0  # the default mask is 0 there, and a low-pass to Nyquist keeps it
    good = _bad(tmp_path, "good.mrc", _blob(24, 10.0))
    cases = [
        ([image], 1, f"reference {image} is a 2D image of shape (24, 24), not a cubic 3D map"),
        ([cuboid], 1, f"reference {cuboid} has shape (20, 24, 24) (z, y, x), not that of a "
         "cubic 3D map"),
        ([flat], 1, f"reference {flat} is constant (every voxel is 0): it holds no structure "
         "to start from"),
        ([nan], 1, f"reference {nan} has 2 NaN or infinite voxels of 13824"),
        ([good, good], 3, "2 references for --classes 3: give one reference for every class "
         "or 3, one per class"),
    ]  # fmt: skip
    for paths, classes, message in cases:
        with pytest.raises(ValueError) as refused:
            read_references(paths, box=24, voxel_size=10.0, classes=classes, lowpass=60.0,
                            mask=None)  # fmt: skip
        assert str(refused.value) == message
    outside = _bad(tmp_path, "outside.mrc", outside)
    with pytest.raises(ValueError) as refused:
        read_references([outside], box=24, voxel_size=10.0, classes=1, lowpass=1.0,
                        mask=np.pad(np.ones((20,) * 3, np.float32), 2))  # fmt: skip
    assert str(refused.value) == (
        f"reference {outside} has nothing inside the reference mask on the particles' 24^3 grid"
    )
    with pytest.raises(FileNotFoundError):
        read_references([tmp_path / "none.mrc"], box=24, voxel_size=10.0, classes=1,
                        lowpass=60.0, mask=None)  # fmt: skip


def test_a_map_mostly_outside_the_mask_is_warned_about(tmp_path, caplog):
    path = tmp_path / "corner.mrc"
    write_volume(path, _blob(24, 10.0, at=(90.0, 0.0, 0.0), sigma=10.0), 10.0)
    with caplog.at_level(logging.WARNING, logger="faml"):
        read_references([path], box=24, voxel_size=10.0, classes=1, lowpass=60.0, mask=None)
    assert [r.getMessage() for r in caplog.records] == [
        f"reference {path}: only 42% of its power (low-passed to 60 A) lies inside the "
        "reference mask: is it centred on voxel 12, as the particles?"
    ]


def test_the_count_is_the_engines():
    """The same sentence as RunConfig's."""
    from faml.ml.config import RunConfig

    for count, classes in ((2, 3), (3, 2)):
        with pytest.raises(ValueError) as ours:
            check_reference_count(count, classes)
        with pytest.raises(ValueError) as engines:
            RunConfig(classes=classes, references=count)
        assert str(ours.value) == str(engines.value)
    with pytest.raises(ValueError, match="0 references for --classes 1"):
        check_reference_count(0, 1)
    check_reference_count(1, 4)
    check_reference_count(4, 4)

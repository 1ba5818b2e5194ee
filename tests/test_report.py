"""The run report (report.html) and the RELION export, on one tiny K = 2 run."""

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from matplotlib.image import imread

from conftest import make_dataset, polnet_map
from faml.cli import main
from faml.io.mrc import write_volume
from faml.report import export_relion, select_iterations, write_report

SECTIONS = (
    "summary",
    "maps",
    "fsc",
    "final",
    "classes",
    "noise",
    "probabilities",
    "poses",
    "timing",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """24^3, two structures, 6 particles each, K = 2, FA then FAML: `faml run --then-export`."""
    root = tmp_path_factory.mktemp("report")
    structures = [polnet_map("1bxn", 24), polnet_map("3cf3", 24)]
    make_dataset(root / "particles", structures, 6, 1.0, seed=3)
    write_volume(root / "truth.mrc", structures[0], 10.0)
    out = root / "run"
    args = ["run", str(root / "particles"), "--out", str(out), "--classes", "2",
            "--iterations", "2", "--starts", "1", "--fa-iterations", "1", "--candidates", "8",
            "--seed", "4", "--then-export", "relion"]  # fmt: skip
    assert main(args) == 0
    return root, out


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_the_run_writes_a_self_contained_report(tiny_run):
    _, out = tiny_run
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page), "external resource"
    assert "<script" not in page
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    images = _images(page)
    # 2 classes x 3 iterations of map strips + 7 figures (the final FSC of model.star too)
    assert len(images) == 2 * 3 + 7
    for png in images:
        pixels = imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 20
        assert np.ptp(pixels[..., :3]) > 0.1  # not blank
    assert len(page) < 2_000_000
    info = json.loads((out / "run.json").read_text())
    assert f"<td>particles</td><td>{info['particles']}</td>" in page
    assert f"{info['box']}³ voxels, {info['voxel_size']:g} Å/voxel" in page
    assert f"<td>classes K</td><td>{info['config']['classes']}</td>" in page
    assert f"<td>faml version</td><td>{info['faml_version']}</td>" in page
    last = info["iterations"][-1]
    assert f"{last['band_shells']} shells ({last['resolution_angstrom']:.1f} Å)" in page
    assert "<td>status</td><td>complete" in page
    # not --gold-standard: model.star says so, and the page too
    assert "The half maps were <b>not</b> refined independently" in page
    assert "(half-sets aligned to the joint average: optimistic)" in page


def test_gold_standard_report_shows_model_star(tmp_path):
    """A tiny --gold-standard run: the mask-corrected FSC of model.star, its 0.143
    resolution, the independence of the halves and links to the half maps."""
    from faml.io.particles import from_mrc_files
    from faml.ml.config import RunConfig, Tuning
    from faml.ml.engine import run
    from faml.report import ReportHook

    make_dataset(tmp_path / "p", [polnet_map("1bxn", 24)], 8, 1.0, seed=5)
    table = from_mrc_files(str(tmp_path / "p"), tilt_range=(-60.0, 60.0))
    out = tmp_path / "gold"
    config = RunConfig(
        gold_standard=True, iterations=2, seed=1, tuning=Tuning(fa_iterations=1, starts=1)
    )
    run(table, out, config, on_iteration=ReportHook())
    page = (out / "report.html").read_text()
    assert 'id="final"' in page
    model = starfile.read(out / "model.star", always_dict=True)
    res = float(model["model_classes"]["rlnEstimatedResolution"].iloc[0])
    assert f"<td>class 1</td><td>{res:.1f} Å</td><td>mask-corrected FSC</td>" in page
    assert f"class 1: {res:.1f} Å (gold standard, mask-corrected)" in page
    assert "refined independently after the common start (gold standard" in page
    assert "<b>not</b>" not in page
    for h in (1, 2):
        name = f"class_001_half{h}_unfil.mrc"
        assert f'<a href="{name}">' in page and (out / name).exists()
    # the final FSC figure follows the map strips of iterations 0-2 and the FSC figure
    images = _images(page)
    assert len(images) == 3 + 7
    final = imread(io.BytesIO(images[4]), format="png")
    assert np.ptp(final[..., :3]) > 0.1


def test_faml_report_rebuilds_with_the_truth(tiny_run, tmp_path, capsys):
    root, out = tiny_run
    page = tmp_path / "r.html"
    assert main(["report", str(out), "--truth", str(root / "truth.mrc"), "--out", str(page)]) == 0
    text = page.read_text()
    assert "against the truth" in text and "Green dashed: the final map against the true" in text
    assert re.search(r"class 1: correlation -?\d\.\d{3}, FSC 0\.5 at \d+\.\d Å", text)
    assert str(page) in capsys.readouterr().out


def test_a_run_in_progress_still_reports(tiny_run, tmp_path):
    _, out = tiny_run
    part = tmp_path / "part"
    shutil.copytree(out, part, ignore=shutil.ignore_patterns("report*", "relion"))
    (part / "run.json").unlink()
    (part / "iterations" / "002" / "manifest.json").unlink()  # iteration 2 is incomplete
    write_report(part)
    page = (part / "report.html").read_text()
    assert "in progress: iteration 1" in page
    assert len(_images(page)) == 2 * 2 + 6
    (part / "iterations" / "001" / "manifest.json").unlink()  # only the random start
    write_report(part, info={"particles": 12, "config": {"iterations": 2, "method": "faml"}})
    page = (part / "report.html").read_text()
    assert "in progress: iteration 0 of 2" in page
    assert json.loads((part / "report" / "run_info.json").read_text())["particles"] == 12
    (part / "iterations" / "000" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no complete iteration"):
        write_report(part)


def test_a_failing_report_only_warns(tmp_path, caplog):
    from faml.report import ReportHook

    ReportHook()(tmp_path, None)  # an empty folder: nothing to report
    assert "could not write the run report" in caplog.text
    assert not (tmp_path / "report.html").exists()


def test_select_iterations():
    assert select_iterations([0, 1, 2]) == [0, 1, 2]
    picked = select_iterations(list(range(20)), 6)
    assert picked[0] == 0 and picked[-1] == 19 and len(picked) == 6


def _power_beyond(vol: np.ndarray, radius: float) -> float:
    n = vol.shape[0]
    f = np.abs(np.fft.fftn(vol)) ** 2
    k = np.fft.fftfreq(n, 1.0 / n)
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return float(f[r > radius].sum() / f.sum())


def test_export_for_relion(tiny_run, tmp_path):
    _, out = tiny_run
    folder = out / "relion"  # written by `faml run --then-export relion`
    for k in (1, 2):
        with mrcfile.open(folder / f"class_{k:03d}_lp.mrc", permissive=False) as m:
            assert m.data.dtype == np.float32 and m.data.shape == (24, 24, 24)
            assert float(m.voxel_size.x) == pytest.approx(10.0)
            assert tuple(float(v) for v in m.header.origin.item()) == (0.0, 0.0, 0.0)
    done = export_relion(out, tmp_path / "lp", lowpass_angstrom=60.0)
    assert done.resolutions == (60.0, 60.0)
    with mrcfile.open(done.maps[0]) as m:
        lp = np.asarray(m.data)
    with mrcfile.open(out / "class_001.mrc") as m:
        original = np.asarray(m.data)
    cut = 24 * 10.0 / 60.0  # shells
    assert _power_beyond(lp, cut + 1.6) < 1e-8  # the cosine edge ends 1.5 shells beyond
    assert _power_beyond(original, cut + 1.6) > 1e-3  # there was power to remove
    blocks = starfile.read(done.star, always_dict=True)
    assert blocks["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(10.0)
    assert int(blocks["optics"]["rlnImageDimensionality"].iloc[0]) == 3
    p = blocks["particles"]
    required = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                "rlnOriginYAngst", "rlnOriginZAngst", "rlnClassNumber", "rlnOpticsGroup",
                "rlnRandomSubset"]  # fmt: skip
    assert all(c in p.columns for c in required)
    assert len(p) == 12 and all(Path(n).is_absolute() and Path(n).exists() for n in p.rlnImageName)
    counts = [len(starfile.read(s)["particles"]) for s in done.class_stars]
    assert sum(counts) == 12
    text = done.commands.read_text()
    assert "relion_refine --o Refine3D/faml_class001/run" in text
    assert "--ref class_001_lp.mrc --ini_high 60.0" in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("relion_refine") is None, reason="needs relion_refine")
def test_relion_accepts_the_export(tiny_run, tmp_path):
    """relion_refine runs one iteration with --ref on the exported map and particles."""
    _, out = tiny_run
    folder = out / "relion"
    cmd = ["relion_refine", "--o", str(tmp_path / "run"), "--i", "particles.star",
           "--ref", "class_001_lp.mrc", "--ini_high", "40", "--iter", "1",
           "--particle_diameter", "200", "--healpix_order", "1", "--offset_range", "2",
           "--offset_step", "2", "--pad", "1", "--j", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with mrcfile.open(tmp_path / "run_it001_class001.mrc") as m:
        assert m.data.shape == (24, 24, 24) and np.all(np.isfinite(m.data))
    data = starfile.read(tmp_path / "run_it001_data.star", always_dict=True)["particles"]
    assert len(data) == 12


@pytest.mark.browser
def test_report_renders_in_chromium(tiny_run, tmp_path):
    """Headless Chromium renders the page; the screenshot is large and not one colour."""
    _, out = tiny_run
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("the browser test needs Debian's chromium (apt-get install chromium)")
    shot = tmp_path / "report.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--window-size=1100,3000", f"--screenshot={shot}",
           (out / "report.html").resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    pixels = imread(shot)
    assert pixels.shape[:2] == (3000, 1100)
    gray = pixels[..., :3].mean(axis=2)
    assert (gray < 0.5).mean() > 0.02  # text, plots and maps, not a blank page
    assert len(np.unique(np.round(gray, 2))) > 50


def test_the_report_takes_at_most_its_share_of_a_run(monkeypatch, tmp_path):
    from faml.report import live

    now = [0.0]
    monkeypatch.setattr(live.time, "perf_counter", lambda: now[0])
    written = []

    def costs_two_seconds(out, info=None):
        now[0] += 2.0
        written.append(info)

    monkeypatch.setattr(live, "write_report", costs_two_seconds)
    hook = live.ReportHook(0.1)
    hook(tmp_path, {"iteration": 0})  # the first one always
    for _ in range(100):  # iterations of 1 s each
        now[0] += 1.0
        hook(tmp_path, {"iteration": 1})
    assert len(written) == 1 + 100 // 20  # one every 20 s of iterations: 2 s / 0.1
    assert 2.0 * len(written) / now[0] <= 0.1 + 2.0 / now[0]
    hook(tmp_path, None)  # the end of the run: always, with run.json
    assert len(written) == 2 + 100 // 20 and written[-1] is None

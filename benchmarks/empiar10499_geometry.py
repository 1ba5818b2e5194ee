"""Which geometry do the real EMPIAR-10499 tilt images obey? (RELION 5 / WarpTools 2D stacks)

Usage::

    python benchmarks/empiar10499_geometry.py

Independent of faml's reconstruction: the set's own 32³ reconstruction
(``warptools_test_box-32_angpix-12_reconstruct.mrc``) is rotated by a candidate matrix
``M`` built from each frame's projection matrix ``P`` (``rlnTomoProjX/Y/Z``) and the
particle's refined pose ``A`` (``rlnAngle*``), summed along z, multiplied by the frame's
CTF² (``rlnCtfDataAreCtfPremultiplied 1``: the images carry CTF × the raw image's CTF) and
correlated with the tilt image, both low-passed to 40 Å; the mean over the 1430 visible
tilt images of the 40 particles is printed per candidate: ``P`` or ``P^T``; ``A``, ``A^T``
or random poses; the reference or its z-mirror; eight image flips / transposes. Then the
hand of the reference is checked against the 70S ribosome's atomic model (PolNet's 4V4R
density): the reference and its mirror, each globally aligned and scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import starfile
from scipy.spatial.transform import Rotation

from faml.evaluate.maps import score_map
from faml.geometry.euler import euler_to_matrix
from faml.geometry.transform import transform_volume
from faml.imaging.ctf import ctf
from faml.io.mrc import read_volume
from faml.io.tiltstacks import _visible, read_tomograms_star
from faml.simulate.density import density_from_map

DATA = Path(__file__).resolve().parents[2] / "shared/data/structures"
SET = DATA / "subtomograms/tomodrgn_empiar10499_subtilts"
STEM = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12"
PIXEL, BOX, LOWPASS = 12.0, 32, 40.0


def _mirror_z(vol: np.ndarray) -> np.ndarray:
    """``v(x, y, -z)`` about the centre voxel ``N // 2``."""
    return np.ascontiguousarray(np.roll(vol[::-1], 1, axis=0))


def _flips():
    def flip(a, axes):
        out = a[(..., *[slice(None, None, -1) if ax in axes else slice(None) for ax in (-2, -1)])]
        return np.roll(out, [1] * len(axes), axis=axes) if axes else out  # about pixel N // 2

    swap = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    return {
        "id": lambda a: a,
        "flip x": lambda a: flip(a, (-1,)),
        "flip y": lambda a: flip(a, (-2,)),
        "rot 180": lambda a: flip(a, (-2, -1)),
        "transpose": swap,
        "transpose, flip x": lambda a: flip(swap(a), (-1,)),
        "transpose, flip y": lambda a: flip(swap(a), (-2,)),
        "transpose, rot 180": lambda a: flip(swap(a), (-2, -1)),
    }


def main() -> None:
    ref, _ = read_volume(SET / "warptools_test_box-32_angpix-12_reconstruct.mrc")
    series = read_tomograms_star(SET / f"{STEM}_tomograms.star")
    blocks = starfile.read(SET / f"{STEM}.star", always_dict=True)
    parts = blocks["particles"]
    premultiplied = bool(int(blocks["optics"]["rlnCtfDataAreCtfPremultiplied"].iloc[0]))
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(BOX), np.fft.rfftfreq(BOX), indexing="ij"))
    s = k / PIXEL
    band = (s <= 1.0 / LOWPASS) & (k > 0)
    mult = np.ones(band.shape)
    mult[:, 1:-1] = 2.0  # half-spectrum multiplicity
    images, mats, ctfs, owner = [], [], [], []
    for i, row in parts.iterrows():
        ts = series[row["rlnTomoName"]]
        stack, _ = read_volume(SET / row["rlnImageName"])
        use = _visible(row["rlnTomoVisibleFrames"], len(ts)) & (ts.scale > 0)
        for f in np.flatnonzero(use):
            u, _, vt = np.linalg.svd(ts.projections[f, :3, :3])
            images.append(stack[f])
            mats.append(u @ vt)
            c = ctf(s, 0.5 * (ts.defocus_u[f] + ts.defocus_v[f]), voltage_kv=ts.voltage,
                    cs_mm=ts.cs, amplitude_contrast=ts.amplitude_contrast)  # fmt: skip
            ctfs.append(c * c if premultiplied else c)
            owner.append(i)
    mats, owner = np.asarray(mats), np.asarray(owner)
    spec = np.fft.rfft2(np.fft.ifftshift(np.asarray(images), axes=(-2, -1))) * band
    filt = np.asarray(ctfs) * band
    poses = {
        "A": euler_to_matrix(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)),
        "random": Rotation.random(len(parts), random_state=1).as_matrix(),
    }
    poses["A^T"] = poses["A"].transpose(0, 2, 1)
    rows = []
    for ref_name, vol in (("reference", ref), ("z-mirrored reference", _mirror_z(ref))):
        for p_name, p in (("P", mats), ("P^T", mats.transpose(0, 2, 1))):
            for a_name, a in poses.items():
                proj = transform_volume(vol, p @ a[owner], None, order=1).sum(axis=1)
                for op_name, op in _flips().items():
                    g = np.fft.rfft2(np.fft.ifftshift(op(proj), axes=(-2, -1))) * filt
                    num = np.sum(mult * (spec * g.conj()).real, axis=(-2, -1))
                    den = np.sqrt(np.sum(mult * abs(spec) ** 2, axis=(-2, -1))
                                  * np.sum(mult * abs(g) ** 2, axis=(-2, -1)))  # fmt: skip
                    corr = float(np.mean(num / den))
                    rows.append((corr, ref_name, f"{p_name} {a_name}", op_name))
    rows.sort(key=lambda r: -r[0])
    what = "CTF²" if premultiplied else "CTF"
    print(f"{len(images)} tilt images, 40 Å, {what}; best 8 of {len(rows)}:")
    print("| mean corr. | map | M | image op |\n|---|---|---|---|")
    for r in rows[:8]:
        print(f"| {r[0]:.4f} | {r[1]} | {r[2]} | {r[3]} |")
    for r in rows:
        if r[1:] == ("reference", "P A", "id"):
            print(f"| {r[0]:.4f} | reference | P A | id (the convention without the mirror) |")
    rand = [r[0] for r in rows if "random" in r[2]]
    print(f"random poses: mean {np.mean(rand):.4f}, best {max(rand):.4f} of {len(rand)}")
    model = density_from_map(DATA / "maps/polnet_10A/4v4r_10A.mrc", PIXEL, BOX)
    for name, vol in (("reference", ref), ("z-mirrored reference", _mirror_z(ref))):
        sc = score_map(vol, model, PIXEL)
        fsc = sc.resolution_05
        print(f"4V4R 70S model vs {name}: corr {sc.correlation:.3f}, FSC 0.5 {fsc:.1f} Å")


if __name__ == "__main__":
    main()

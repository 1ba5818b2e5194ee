"""Compiled kernels of the alignment (numba, one thread: faml parallelises over particles)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always", nogil=True)
def _periodic_cell(u, n):  # pragma: no cover - compiled
    """Lower and upper grid index of ``u`` on a periodic axis of ``n`` points, and fraction.

    ``|u| < n``. Shifting by ``n`` avoids the modulo of negative integers (slow).
    """
    u = u + n
    i0 = np.int64(u)
    t = u - i0
    i0 = i0 - n if i0 >= n else i0
    i1 = i0 + 1
    i1 = i1 - n if i1 >= n else i1
    return i0, i1, t


@numba.njit(cache=True, fastmath=True, nogil=True)
def gather_half_spectrum(volumes, coords, out):  # pragma: no cover - compiled
    """Trilinear samples of Friedel-symmetric real volumes stored in ``rfftn`` layout.

    ``volumes``: `(C, N, N, N//2+1)` float32, DC at ``[0, 0, 0]``; ``coords``: `(P, 3)` float64
    frequency-index coordinates ``(kz, ky, kx)`` centred on DC (negative allowed, ``|k| < N/2``);
    ``out``: `(C, P)` float32. A point with ``kx < 0`` is read at ``-k`` (``v(-k) = v(k)``).
    """
    n_ch = volumes.shape[0]
    n = volumes.shape[1]
    for p in range(coords.shape[0]):
        kz = coords[p, 0]
        ky = coords[p, 1]
        kx = coords[p, 2]
        if kx < 0.0:
            kz = -kz
            ky = -ky
            kx = -kx
        z0, z1, tz = _periodic_cell(kz, n)
        y0, y1, ty = _periodic_cell(ky, n)
        x0 = np.int64(kx)
        tx = kx - x0
        x1 = x0 + 1
        w000 = (1 - tz) * (1 - ty) * (1 - tx)
        w001 = (1 - tz) * (1 - ty) * tx
        w010 = (1 - tz) * ty * (1 - tx)
        w011 = (1 - tz) * ty * tx
        w100 = tz * (1 - ty) * (1 - tx)
        w101 = tz * (1 - ty) * tx
        w110 = tz * ty * (1 - tx)
        w111 = tz * ty * tx
        for c in range(n_ch):
            v = volumes[c]
            out[c, p] = (
                w000 * v[z0, y0, x0]
                + w001 * v[z0, y0, x1]
                + w010 * v[z0, y1, x0]
                + w011 * v[z0, y1, x1]
                + w100 * v[z1, y0, x0]
                + w101 * v[z1, y0, x1]
                + w110 * v[z1, y1, x0]
                + w111 * v[z1, y1, x1]
            )


@numba.njit(cache=True, fastmath=True, nogil=True)
def wigner_sum(d_table, degrees, prod_re, prod_im, out):  # pragma: no cover - compiled
    """``S[c, b, m', m] = sum_l d_table[b, l, m', m] * P[c, l, m', m]``, written in FFT order.

    ``d_table``: `(n_beta, n_l, 2L+1, L+1)` float32; ``degrees``: `(n_l,)` int64 ascending;
    ``prod_re``, ``prod_im``: `(C, n_l, 2L+1, L+1)` float32 parts of ``P``; ``out``:
    `(C, n_beta, n_alpha, n_half)` complex64 (``n_alpha >= 2L+1``), zeroed by the caller:
    row ``m'`` goes to ``m' mod n_alpha``, column ``m`` to ``m``. Only ``|m'|, m <= l`` is
    read.
    """
    n_beta = d_table.shape[0]
    big_l = d_table.shape[3] - 1
    n_ch = prod_re.shape[0]
    n_alpha = out.shape[2]
    acc_re = np.zeros((n_ch, big_l + 1), dtype=np.float32)
    acc_im = np.zeros((n_ch, big_l + 1), dtype=np.float32)
    for b in range(n_beta):
        for i in range(2 * big_l + 1):
            mp = abs(i - big_l)
            acc_re[:] = 0.0
            acc_im[:] = 0.0
            for li in range(degrees.shape[0]):
                deg = degrees[li]
                if deg < mp:
                    continue
                for c in range(n_ch):
                    for j in range(deg + 1):
                        dv = d_table[b, li, i, j]
                        acc_re[c, j] += dv * prod_re[c, li, i, j]
                        acc_im[c, j] += dv * prod_im[c, li, i, j]
            row = (i - big_l) % n_alpha
            for c in range(n_ch):
                for j in range(big_l + 1):
                    out[c, b, row, j] = complex(acc_re[c, j], acc_im[c, j])


@numba.njit(cache=True, fastmath=True, nogil=True)
def gather_rotated_spectrum(  # pragma: no cover - compiled
    spec_re, spec_im, matrices, kzyx, flat, phase_re, phase_im, px_re, px_im, w2m, out, norm_sq
):
    """Rotated copies of a padded spectrum, sampled at the points of a smaller half grid.

    ``spec_re``, ``spec_im``: `(P, P, P//2+1)` float32 real and imaginary parts of the
    ``rfftn`` of the padded, origin-centred volume; ``matrices``: `(B, 3, 3)` float32 acting
    on ``(kz, ky, kx)`` target indices and giving source indices in the padded grid
    (rotation and padding scale folded in); ``kzyx``: `(n, 3)` float32 target frequency
    indices (signed); ``flat``: `(n,)` int64 flat indices of the targets in the output rows;
    ``phase_re``, ``phase_im``: `(n,)` float32 factors; ``out``: `(B, M)` complex64,
    written at ``flat`` only. Trilinear, Friedel-aware (``S(-u) = conj(S(u))``).

    With empty ``px_re`` the rotated spectra ``A`` themselves are written. Otherwise
    ``px_re``, ``px_im`` (`(n,)` float32: a particle's ``w^2 X`` at the points) and ``w2m``
    (`(n,)` float32: ``w^2`` times the half-spectrum multiplicity) make it write the cross
    spectra ``w^2 X conj(A)`` and add ``sum w2m |A|^2`` into ``norm_sq`` (`(B,)` float64).
    """
    cross = px_re.shape[0] > 0
    p = spec_re.shape[0]
    for b in range(matrices.shape[0]):
        m = matrices[b]
        for i in range(kzyx.shape[0]):
            kz = kzyx[i, 0]
            ky = kzyx[i, 1]
            kx = kzyx[i, 2]
            uz = m[0, 0] * kz + m[0, 1] * ky + m[0, 2] * kx
            uy = m[1, 0] * kz + m[1, 1] * ky + m[1, 2] * kx
            ux = m[2, 0] * kz + m[2, 1] * ky + m[2, 2] * kx
            sign = numba.float32(1.0)
            if ux < 0:
                uz = -uz
                uy = -uy
                ux = -ux
                sign = numba.float32(-1.0)
            z0, z1, tz = _periodic_cell(uz, p)
            y0, y1, ty = _periodic_cell(uy, p)
            x0 = np.int64(ux)
            tx = ux - numba.float32(x0)
            x1 = x0 + 1
            w00 = (1 - tz) * (1 - ty)
            w01 = (1 - tz) * ty
            w10 = tz * (1 - ty)
            w11 = tz * ty
            re = (
                w00 * ((1 - tx) * spec_re[z0, y0, x0] + tx * spec_re[z0, y0, x1])
                + w01 * ((1 - tx) * spec_re[z0, y1, x0] + tx * spec_re[z0, y1, x1])
                + w10 * ((1 - tx) * spec_re[z1, y0, x0] + tx * spec_re[z1, y0, x1])
                + w11 * ((1 - tx) * spec_re[z1, y1, x0] + tx * spec_re[z1, y1, x1])
            )
            im = sign * (
                w00 * ((1 - tx) * spec_im[z0, y0, x0] + tx * spec_im[z0, y0, x1])
                + w01 * ((1 - tx) * spec_im[z0, y1, x0] + tx * spec_im[z0, y1, x1])
                + w10 * ((1 - tx) * spec_im[z1, y0, x0] + tx * spec_im[z1, y0, x1])
                + w11 * ((1 - tx) * spec_im[z1, y1, x0] + tx * spec_im[z1, y1, x1])
            )
            pr = phase_re[i]
            pi = phase_im[i]
            a_re = re * pr - im * pi
            a_im = re * pi + im * pr
            if cross:
                xr = px_re[i]
                xi = px_im[i]
                out[b, flat[i]] = complex(xr * a_re + xi * a_im, xi * a_re - xr * a_im)
                norm_sq[b] += w2m[i] * (a_re * a_re + a_im * a_im)
            else:
                out[b, flat[i]] = complex(a_re, a_im)


@numba.njit(cache=True, nogil=True)
def grid_local_maxima(padded, threshold, out_index, out_value):  # pragma: no cover - compiled
    """Strict-or-equal local maxima of a pole-padded Euler-grid score.

    ``padded``: `(n_beta + 2, n_alpha, n_gamma)` (see ``peaks.pad_poles``), periodic in the
    last two axes; ``threshold``: only values above it are considered; ``out_index``:
    `(K, 3)` int64 receives ``(b, a, g)`` of the unpadded grid; ``out_value``: `(K,)`.
    Returns how many were found (at most ``K``; the scan stops when full).
    """
    nb = padded.shape[0] - 2
    na = padded.shape[1]
    ng = padded.shape[2]
    count = 0
    for b in range(1, nb + 1):
        for a in range(na):
            for g in range(ng):
                v = padded[b, a, g]
                if not v > threshold:
                    continue
                is_max = True
                for db in range(-1, 2):
                    for da in range(-1, 2):
                        aa = a + da
                        aa = aa + na if aa < 0 else (aa - na if aa >= na else aa)
                        for dg in range(-1, 2):
                            if db == 0 and da == 0 and dg == 0:
                                continue
                            gg = g + dg
                            gg = gg + ng if gg < 0 else (gg - ng if gg >= ng else gg)
                            if padded[b + db, aa, gg] > v:
                                is_max = False
                                break
                        if not is_max:
                            break
                    if not is_max:
                        break
                if is_max:
                    if count >= out_index.shape[0]:
                        return count
                    out_index[count, 0] = b - 1
                    out_index[count, 1] = a
                    out_index[count, 2] = g
                    out_value[count] = v
                    count += 1
    return count

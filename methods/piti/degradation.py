"""PITI's "BSR-light" degradation: how the 64 px `low_res` input of the upsampler is made from a 256 px photo.

A light variant of BSRGAN's degradation (Zhang et al. 2021), as PITI's upsampler training uses it
(PITI `glide_text2im/degradation/bsrgan_light.py::degradation_bsrgan_variant`, `l0smooth.py`), written from a
reading of that code and the published formulas on float HxWx3 images in [0, 1] with an explicit
`np.random.Generator`, so a seed gives the same result every time (upstream draws from the global `random` /
`np.random` states).

Pipeline (sf = 256 // 64 = 4):
1. mod-crop to a multiple of sf; with prob 0.25 (sf == 4 only) a first 2x downsample (half: a random
   bilinear/bicubic/area resize, half: antialiased bicubic, MATLAB-imresize-like), after which sf = 2;
2. the 7 ops in a random order, except that downsample2 (op 2) always comes before downsample3 (op 3):
   0 blur (prob 0.8; anisotropic or isotropic Gaussian, BSRGAN's kernel widths divided by 4), 1 nothing,
   2 downsample2 (prob 0.8: resize by 1/U(1, 2 sf), else a shifted Gaussian blur + nearest subsampling by sf),
   3 downsample3 to (size before op 2) / sf, 4 Gaussian noise of level 1-2 / 255 (colour, grey or channel-
   correlated), 5 JPEG with quality 80-95 (prob 0.5), 6 L0 gradient smoothing (prob 0.2);
3. clip to [0, 1] and quantise to 8 bits (upstream returns `single2uint(image)`, a uint8 image).
The final JPEG step of BSRGAN is commented out in PITI; it is not done here either.

Deviations (said again where the code does it):
- resizes (cv2.resize INTER_LINEAR / INTER_CUBIC / INTER_AREA upstream; opencv is not a dependency here) use
  torch's `interpolate` with `align_corners=False` and no antialiasing, which follows the same half-pixel
  convention and the same cubic (a = -0.75); "area" uses torch's area mode (exact for integer factors,
  cv2's INTER_AREA weights pixels fractionally for non-integer ones);
- JPEG goes through PIL (libjpeg, 4:2:0 subsampling like cv2's default) instead of cv2.imencode;
- the shifted kernel of downsample2 uses `scipy.ndimage.shift` (linear) instead of the removed `interp2d`;
- kernel widths drawn as exactly 0 (a singular covariance / sigma 0, probability ~0 upstream, a crash or NaN
  kernel there) are floored at 1e-6;
- L0 smoothing works on [0, 1] floats and returns floats: upstream computes `S = image / 256` and returns
  `(S * 256).astype(np.uint8)` on the [0, 1] floats its caller passes, which truncates every value to 0 (or 1)
  and so turns the image black. That bug is fixed here (see `l0_smooth`).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Probabilities of `degradation_bsrgan_variant` (PITI bsrgan_light.py).
BLUR_PROB, JPEG_PROB, SCALE2_PROB, L0_PROB = 0.8, 0.5, 0.25, 0.2
#: Gaussian noise levels (out of 255) of op 4: randint(1, 2) (PITI bsrgan_light.py: "very light").
NOISE_LEVELS = (1, 2)
#: JPEG quality range of op 5 (inclusive).
JPEG_QUALITY = (80, 95)
#: L0 smoothing: lambda ~ U(1.2, 4.0) * 1e-3, kappa 2, beta_max 1e5 (PITI l0smooth.py).
L0_LAMBDA = (1.2e-3, 4.0e-3)
L0_KAPPA = 2.0
L0_BETA_MAX = 1e5
_RESIZE_MODES = ("bilinear", "bicubic", "area")  # cv2 interpolation flags 1, 2, 3
_EPS = 1e-6


# --- kernels --------------------------------------------------------------------------------------------------------
def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """MATLAB `fspecial('gaussian', size, sigma)`: a normalised isotropic Gaussian on a centred size x size grid."""
    r = (size - 1) / 2.0
    y, x = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    k = np.exp(-(x * x + y * y) / (2.0 * max(float(sigma), _EPS) ** 2))
    k[k < np.finfo(float).eps * k.max()] = 0
    return k / k.sum()


def anisotropic_gaussian_kernel(size: int, theta: float, l1: float, l2: float) -> np.ndarray:
    """A size x size Gaussian with covariance eigenvalues (l1, l2) along the directions at angle theta (BSRGAN)."""
    v = np.array([np.cos(theta), np.sin(theta)])
    basis = np.array([[v[0], v[1]], [v[1], -v[0]]])  # symmetric and orthogonal: its own inverse
    cov = basis @ np.diag([max(l1, _EPS), max(l2, _EPS)]) @ basis
    centre = size / 2.0 + 0.5
    coords = np.arange(size) - centre + 1
    cy, cx = np.meshgrid(coords, coords, indexing="ij")
    pts = np.stack([cx, cy], axis=-1)
    inv = np.linalg.inv(cov)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", pts, inv, pts))
    return k / k.sum()


def _convolve(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.convolve(img, k[:, :, None], mode="mirror")


def add_blur(img: np.ndarray, sf: int, rng: np.random.Generator) -> np.ndarray:
    """Op 0: BSRGAN's blur with the widths divided by 4 (PITI's light variant): half the time an anisotropic
    Gaussian (size 5-14, eigenvalues U(0, (4 + sf) / 4)), else an isotropic one (size 5-7, sigma U(0, (2 + 0.2 sf)
    / 4))."""
    wd2 = (4.0 + sf) / 4
    wd = (2.0 + 0.2 * sf) / 4
    if rng.random() < 0.5:
        l1, l2 = wd2 * rng.random(), wd2 * rng.random()
        k = anisotropic_gaussian_kernel(int(rng.integers(2, 12)) + 3, rng.random() * np.pi, l1, l2)
    else:
        k = gaussian_kernel(int(rng.integers(2, 5)) + 3, wd * rng.random())
    return _convolve(img, k)


# --- resizing (cv2.resize semantics through torch) -------------------------------------------------------------------
def resize(img: np.ndarray, size: tuple[int, int], mode: str, *, antialias: bool = False) -> np.ndarray:
    """Resize an HxWxC float image to (h, w) with 'bilinear' | 'bicubic' | 'area' (cv2 INTER_LINEAR / CUBIC /
    AREA; half-pixel centres, no antialiasing unless asked)."""
    import torch
    import torch.nn.functional as F

    h, w = max(1, int(size[0])), max(1, int(size[1]))
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None].double()
    if mode == "area":
        y = F.interpolate(x, size=(h, w), mode="area")
    else:
        y = F.interpolate(x, size=(h, w), mode=mode, align_corners=False, antialias=antialias)
    return y[0].permute(1, 2, 0).numpy().astype(np.float32)


# --- noise and compression -------------------------------------------------------------------------------------------
def add_gaussian_noise(img: np.ndarray, rng: np.random.Generator, levels: tuple[int, int] = NOISE_LEVELS
                       ) -> np.ndarray:
    """Op 4: Gaussian noise of std randint(levels)/255: colour (prob 0.4), grey (0.4) or channel-correlated (0.2,
    covariance (levels[1]/255)^2 U^T D U with U a random orthonormal basis, as BSRGAN)."""
    from scipy.linalg import orth

    level = int(rng.integers(levels[0], levels[1] + 1))
    r = rng.random()
    if r > 0.6:
        img = img + rng.normal(0, level / 255.0, img.shape).astype(np.float32)
    elif r < 0.4:
        img = img + rng.normal(0, level / 255.0, (*img.shape[:2], 1)).astype(np.float32)
    else:
        scale = levels[1] / 255.0
        d = np.diag(rng.random(3))
        u = orth(rng.random((3, 3)))
        cov = np.abs(scale**2 * (u.T @ d @ u))
        img = img + rng.multivariate_normal(np.zeros(3), cov, img.shape[:2]).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def add_jpeg(img: np.ndarray, rng: np.random.Generator, quality: tuple[int, int] = JPEG_QUALITY) -> np.ndarray:
    """Op 5: JPEG round trip at quality randint(80, 95) of the 8-bit image (PIL/libjpeg here, cv2 upstream)."""
    from PIL import Image

    q = int(rng.integers(quality[0], quality[1] + 1))
    u8 = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8, mode="RGB").save(buf, format="JPEG", quality=q)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0


# --- L0 gradient minimisation ----------------------------------------------------------------------------------------
def l0_smooth(img: np.ndarray, lam: float, *, kappa: float = L0_KAPPA, beta_max: float = L0_BETA_MAX) -> np.ndarray:
    """Xu et al. (2011) "Image smoothing via L0 gradient minimization" on an HxWxC float image in [0, 1].

    Half-quadratic splitting: beta from 2 lambda to beta_max (x kappa per round); each round zeroes the forward
    differences (h, v; circular) whose squared magnitude summed over channels is below lambda / beta, then solves
    the quadratic S-subproblem in the Fourier domain, (F(I) + beta F(D^T [h, v])) / (1 + beta |F(D)|^2).
    Returns float32 in the input's range (clipped to [0, 1]).

    Fixed upstream bug (PITI l0smooth.py): it divides the image by 256 at the start and returns
    `(S * 256).astype(np.uint8)`, i.e. it expects 0-255 input, while its caller passes [0, 1] floats, so the
    output is truncated to 0/1 and the "smoothed" image comes back black. Here the image stays in [0, 1]
    floats throughout (and lambda keeps its meaning for [0, 1] data, the scale Xu et al. use).
    """
    s = np.asarray(img, dtype=np.float64)
    if s.ndim == 2:
        s = s[:, :, None]
    h_, w_ = s.shape[:2]
    fi = np.fft.fft2(s, axes=(0, 1))
    # |otf|^2 of the circular forward differences [1, -1] along x and y (psf2otf of the two kernels)
    mtf = (2 - 2 * np.cos(2 * np.pi * np.arange(w_) / w_))[None, :] \
        + (2 - 2 * np.cos(2 * np.pi * np.arange(h_) / h_))[:, None]
    beta = 2.0 * lam
    while beta < beta_max:
        dh = np.roll(s, -1, axis=1) - s
        dv = np.roll(s, -1, axis=0) - s
        small = (dh**2 + dv**2).sum(axis=2) < lam / beta
        dh[small] = 0
        dv[small] = 0
        # adjoint of the forward differences: D^T h = h[x - 1] - h[x]
        normin = (np.roll(dh, 1, axis=1) - dh) + (np.roll(dv, 1, axis=0) - dv)
        fs = (fi + beta * np.fft.fft2(normin, axes=(0, 1))) / (1 + beta * mtf)[:, :, None]
        s = np.real(np.fft.ifft2(fs, axes=(0, 1)))
        beta *= kappa
    out = np.clip(s, 0.0, 1.0).astype(np.float32)
    return out[:, :, 0] if np.ndim(img) == 2 else out


# --- the pipeline -----------------------------------------------------------------------------------------------------
def _shifted_gaussian(sf: int, sigma: float) -> np.ndarray:
    """A 25x25 Gaussian moved (sf - 1) / 2 pixels towards the upper left (BSRGAN `shift_pixel`), renormalised, so
    that nearest subsampling at [0::sf] samples the centre of each sf x sf block."""
    from scipy import ndimage

    k = gaussian_kernel(25, sigma)
    shift = (sf - 1) * 0.5
    k = ndimage.shift(k, (-shift, -shift), order=1, mode="nearest")
    return k / k.sum()


def shuffled_ops(rng: np.random.Generator) -> list[int]:
    """The 7 op ids in a random order, with downsample2 (2) and downsample3 (3) swapped when 3 came first, so the
    final resize to the target size always runs after the random one (BSRGAN's "keep downsample3 last")."""
    order = [int(i) for i in rng.permutation(7)]
    i2, i3 = order.index(2), order.index(3)
    if i2 > i3:
        order[i2], order[i3] = order[i3], order[i2]
    return order


def degradation_bsrgan_variant(image: np.ndarray, sf: int = 4, rng: np.random.Generator | None = None,
                               *, quantize: bool = True) -> np.ndarray:
    """Degrade an HxWx3 float image in [0, 1] to (H / sf) x (W / sf) x 3 (see the module docstring).

    `rng` supplies every random draw (default: a fresh unseeded generator). `quantize=True` rounds the result to
    8-bit steps as upstream's uint8 output. Returns float32 in [0, 1].
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"degradation expects an H x W x 3 image, got shape {img.shape}")
    if not np.isfinite(img).all() or img.min() < -1e-6 or img.max() > 1 + 1e-6:
        raise ValueError("degradation expects float values in [0, 1]; map [-1, 1] images with (x + 1) / 2 and "
                         "uint8 images with x / 255")
    rng = rng if rng is not None else np.random.default_rng()
    h1, w1 = img.shape[:2]
    img = img[:h1 - h1 % sf, :w1 - w1 % sf].copy()  # mod crop (upstream swaps h and w here; same for squares)
    if min(img.shape[:2]) < sf:
        raise ValueError(f"degradation: an image of {w1}x{h1} is smaller than the scale factor {sf}")
    if sf == 4 and rng.random() < SCALE2_PROB:  # downsample1
        half = (img.shape[0] // 2, img.shape[1] // 2)
        if rng.random() < 0.5:
            img = resize(img, half, _RESIZE_MODES[int(rng.integers(0, 3))])
        else:  # upstream: util.imresize_np(img, 1/2, True), MATLAB's antialiased bicubic
            img = resize(img, half, "bicubic", antialias=True)
        img = np.clip(img, 0.0, 1.0)
        sf = 2
    a = b = 0
    for op in shuffled_ops(rng):
        if op == 0:
            if rng.random() < BLUR_PROB:
                img = add_blur(img, sf, rng)
        elif op == 2:  # downsample2
            b, a = img.shape[:2]
            if rng.random() < 0.8:
                sf1 = rng.uniform(1, 2 * sf)
                img = resize(img, (int(img.shape[0] / sf1), int(img.shape[1] / sf1)),
                             _RESIZE_MODES[int(rng.integers(0, 3))])
            else:
                k = _shifted_gaussian(sf, rng.uniform(0.1, 0.6 * sf))
                img = _convolve(img, k)[0::sf, 0::sf]
            img = np.clip(img, 0.0, 1.0)
        elif op == 3:  # downsample3, to the size before downsample2 over sf
            img = resize(img, (int(b / sf), int(a / sf)), _RESIZE_MODES[int(rng.integers(0, 3))])
            img = np.clip(img, 0.0, 1.0)
        elif op == 4:
            img = add_gaussian_noise(img, rng)
        elif op == 5:
            if rng.random() < JPEG_PROB:
                img = add_jpeg(img, rng)
        elif op == 6:
            if rng.random() < L0_PROB:
                img = l0_smooth(img, rng.uniform(*L0_LAMBDA))
        # op 1: nothing (PITI's light variant)
    img = np.clip(img, 0.0, 1.0)
    if quantize:
        img = np.round(img * 255.0) / 255.0
    return img.astype(np.float32)


def degrade_batch(x: torch.Tensor, rngs: Any, sf: int = 4) -> torch.Tensor:
    """BSR-light low-res inputs of a batch of images B x 3 x H x W in [-1, 1] -> B x 3 x H/sf x W/sf in [-1, 1].

    `rngs`: one `np.random.Generator` per sample (or an int seed: sample i then uses default_rng([seed, i])), so
    each sample's degradation depends only on its own generator, not on the batch it is in.
    """
    import torch

    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"degrade_batch expects B x 3 x H x W, got {tuple(x.shape)}")
    n = x.shape[0]
    if isinstance(rngs, (int, np.integer)):
        rngs = [np.random.default_rng([int(rngs), i]) for i in range(n)]
    rngs = list(rngs)
    if len(rngs) != n:
        raise ValueError(f"degrade_batch: {len(rngs)} generators for a batch of {n}")
    imgs = ((x.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    out = [degradation_bsrgan_variant(imgs[i], sf, rngs[i]) for i in range(n)]
    y = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (y * 2 - 1).to(device=x.device, dtype=x.dtype)

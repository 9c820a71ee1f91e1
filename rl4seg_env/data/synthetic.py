"""Procedural synthetic apical echocardiography: the embedded default dataset (no download needed).

Every sample is drawn from its own random generator seeded by ``(seed, preset, split, index)``, so a
dataset of any length costs no memory and an image is the same on every machine and every call::

    >>> ds = SyntheticEcho("source", split="train", image_size=64)
    >>> sample = ds[42]            # Sample(image (64, 64) float32 in [0, 1], label (64, 64) uint8, spacing, id)
    >>> sample.id
    'source-train-000042'

Anatomy (label map, CAMUS convention 0 background, 1 LV cavity, 2 myocardium, 3 left atrium): the
probe / apex is at the top and rows run apex -> base. The LV cavity is a bullet-shaped region around
a (tilted) long axis, cut flat at the mitral plane; the myocardium is a band around it, open at the
base; the atrium lies below the mitral plane. Apical two-chamber-like views show LV and LA only;
four-chamber-like views add an (unlabelled) right ventricle and right atrium on the septal side.
Sizes are drawn in millimetres and converted with the imaging depth, so a deeper sector shows a
smaller heart. Every label map is built to pass the nine echo criteria of ``reward.anatomy``.

Image formation (in this order): echogenicity map (dark blood, bright myocardium and pericardium,
textured tissue) -> wall dropout and acoustic shadows -> multiplicative, spatially correlated speckle
-> point-spread blur -> depth attenuation -> near-field haze and clutter -> log compression, gain,
gamma -> additive noise -> sector mask (0 outside the field of view) -> clip to [0, 1] float32.
Intensities are *not* re-stretched per image, so a gain or contrast shift survives in the data, as it
does between two scanners.

Domain presets (:data:`PRESETS`, :func:`available_presets`): ``source`` and shifted targets that
change one family of parameters each (``target_contrast``, ``target_speckle``, ``target_shape``,
``target_artifact``, ``target_clutter``), plus :data:`DEFAULT_TARGET` (``"default_target"``), which combines
several shifts and is the target domain of the default benchmark. ``docs/data.md`` shows a montage of each.

This module is longer than the others on purpose: the preset parameters, the anatomy and the image
formation are tuned together (a preset is only meaningful next to the code that reads its fields), so it
reads best as one file, top to bottom in the order above.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rl4seg_env.data.base import CAMUS_CLASS_NAMES, Sample, SegDataset, as_image_size

Range = tuple[float, float]

#: Split name -> stable code mixed into each sample's seed (splits never share a random stream).
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
#: Default number of images per split.
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 1000, "val": 100, "test": 200}

# label values (CAMUS convention)
BACKGROUND, LV, MYO, LA = 0, 1, 2, 3


@dataclass(frozen=True)
class SyntheticPreset:
    """Distribution of anatomy and image formation of one synthetic domain.

    A ``(low, high)`` pair is a uniform range a value is drawn from, per image; a float is fixed.
    Lengths are in millimetres unless stated; "relative" sizes are fractions of the imaging depth (the
    image height), so they scale with the image size.

    Field of view
        :param depth_mm: imaging depth = physical height of the image (mm); sets the pixel spacing and
            the apparent heart size. Default (150, 170).
        :param sector_angle_deg: half opening angle of the sector (degrees). Default (36, 41).
        :param sector_radius: sector radius relative to the image height. Default (0.93, 0.99).

    Anatomy (end-diastolic sizes; end-systolic frames shrink the cavity and thicken the wall)
        :param lv_length_mm: endocardial apex -> mitral plane. Default (60, 80).
        :param lv_halfwidth_mm: maximal half-width of the cavity. Default (17, 23).
        :param lv_dilation: factor on the cavity width (a dilated-cardiomyopathy-like shift when > 1). Default (1, 1).
        :param wall_mm: myocardial thickness (lateral wall). Default (10.5, 13.5).
        :param septal_wall_ratio: septal / lateral thickness. Default (0.85, 1.2).
        :param apical_wall_ratio: apical / lateral thickness. Default (0.8, 1.1).
        :param tilt_deg: angle between the LV long axis and the vertical (degrees, + = base to the right). Default (-10, 10).
        :param apex_depth_mm: depth of the endocardial apex below the probe. Default (28, 40).
        :param widest_point: relative position (apex 0 -> base 1) of the widest cavity row. Default (0.55, 0.7).
        :param base_ratio: mitral plane width / maximal cavity width. Default (0.62, 0.8).
        :param bluntness: super-ellipse exponent of the cavity (2 = ellipse, larger = blunter bullet). Default (2.0, 2.6).
        :param shape_jitter: amplitude of low-frequency wobble of the walls (relative). Default 0.04.
        :param es_probability: probability that a frame is end-systolic. Default 0.5.
        :param es_width_factor: ES / ED cavity width. Default (0.7, 0.82).
        :param es_length_factor: ES / ED cavity length. Default (0.85, 0.93).
        :param es_wall_factor: ES / ED wall thickness. Default (1.2, 1.4).
        :param four_chamber_probability: probability of a 4-chamber-like view (RV and RA visible). Default 0.5.
        :param la_length_mm: atrium length along the axis. Default (30, 42).
        :param la_halfwidth_ratio: atrium half-width / mitral half-width. Default (1.1, 1.45).

    Echogenicity (before speckle; 1 = bright myocardium)
        :param blood_level: echogenicity of blood pools. Default (0.04, 0.08).
        :param tissue_level: echogenicity of the surrounding tissue. Default (0.14, 0.24).
        :param myo_level: echogenicity of the myocardium. Default (0.75, 0.95).
        :param pericardium_level: echogenicity of the pericardium (bright rim outside the wall). Default (0.9, 1.2).
        :param texture: relative amplitude of smooth tissue inhomogeneity. Default 0.3.

    Acquisition
        :param speckle_size: correlation length of speckle, relative to the image height (axial, lateral).
            Default (0.006, 0.012).
        :param speckle_contrast: 0 = no speckle, 1 = fully developed (Rayleigh) speckle. Default (0.75, 0.9).
        :param blur: point-spread function sigma relative to the image height (axial, lateral). Default (0.004, 0.008).
        :param attenuation: depth attenuation exponent over the full depth (``exp(-a * r)``). Default (0.3, 0.7).
        :param haze: near-field (apical) haze strength. Default (0.0, 0.15).
        :param clutter: strength of random clutter blobs inside the sector. Default (0.0, 0.05).
        :param dropout_probability: probability of one wall dropout (echo loss on a wall segment). Default 0.3.
        :param dropout_strength: fraction of echo lost in a dropout. Default (0.4, 0.8).
        :param shadow_probability: probability of an acoustic shadow (dark ray from the probe). Default 0.0.
        :param shadow_strength: fraction of echo lost in a shadow. Default (0.5, 0.8).
        :param dynamic_range: log-compression factor (larger = more compressed, flatter). Default (20, 30).
        :param gain: display gain. Default (0.95, 1.1).
        :param gamma: display gamma (< 1 brightens dark regions). Default (0.9, 1.1).
        :param offset: display offset. Default (0.0, 0.03).
        :param noise_std: additive Gaussian noise (display units). Default (0.01, 0.03).
    """

    description: str = ""
    # field of view
    depth_mm: Range = (150.0, 170.0)
    sector_angle_deg: Range = (36.0, 41.0)
    sector_radius: Range = (0.93, 0.99)
    # anatomy
    lv_length_mm: Range = (60.0, 80.0)
    lv_halfwidth_mm: Range = (17.0, 23.0)
    lv_dilation: Range = (1.0, 1.0)
    wall_mm: Range = (10.5, 13.5)
    septal_wall_ratio: Range = (0.85, 1.2)
    apical_wall_ratio: Range = (0.8, 1.1)
    tilt_deg: Range = (-10.0, 10.0)
    apex_depth_mm: Range = (28.0, 40.0)
    widest_point: Range = (0.55, 0.7)
    base_ratio: Range = (0.62, 0.8)
    bluntness: Range = (2.0, 2.6)
    shape_jitter: float = 0.04
    es_probability: float = 0.5
    es_width_factor: Range = (0.7, 0.82)
    es_length_factor: Range = (0.85, 0.93)
    es_wall_factor: Range = (1.2, 1.4)
    four_chamber_probability: float = 0.5
    la_length_mm: Range = (30.0, 42.0)
    la_halfwidth_ratio: Range = (1.1, 1.45)
    # echogenicity
    blood_level: Range = (0.04, 0.08)
    tissue_level: Range = (0.14, 0.24)
    myo_level: Range = (0.75, 0.95)
    pericardium_level: Range = (0.9, 1.2)
    texture: float = 0.3
    # acquisition
    speckle_size: tuple[float, float] = (0.006, 0.012)
    speckle_contrast: Range = (0.75, 0.9)
    blur: tuple[float, float] = (0.004, 0.008)
    attenuation: Range = (0.3, 0.7)
    haze: Range = (0.0, 0.15)
    clutter: Range = (0.0, 0.05)
    dropout_probability: float = 0.3
    dropout_strength: Range = (0.4, 0.8)
    shadow_probability: float = 0.0
    shadow_strength: Range = (0.5, 0.8)
    dynamic_range: Range = (20.0, 30.0)
    gain: Range = (0.95, 1.1)
    gamma: Range = (0.9, 1.1)
    offset: Range = (0.0, 0.03)
    noise_std: Range = (0.01, 0.03)

    def replace(self, **changes: object) -> "SyntheticPreset":
        """A copy with some fields changed (``dataclasses.replace``), e.g. to build a custom domain."""
        return dataclasses.replace(self, **changes)


_SOURCE = SyntheticPreset(description="reference domain: mid gain, fine speckle, normal hearts, few artefacts")

#: Named domains. ``source`` is the labelled training domain; ``target_*`` shift one family of parameters;
#: ``default_target`` (:data:`DEFAULT_TARGET`) combines several shifts.
PRESETS: dict[str, SyntheticPreset] = {
    "source": _SOURCE,
    "target_contrast": _SOURCE.replace(
        description="another scanner's display: low gain, flat contrast, brighter blood, more noise",
        gain=(0.55, 0.7), gamma=(1.3, 1.6), dynamic_range=(60.0, 90.0), offset=(0.05, 0.1),
        blood_level=(0.1, 0.16), noise_std=(0.04, 0.06)),
    "target_speckle": _SOURCE.replace(
        description="another probe: coarse speckle, more blur, shallower and wider sector (larger heart)",
        speckle_size=(0.02, 0.035), speckle_contrast=(0.95, 1.0), blur=(0.01, 0.018),
        depth_mm=(125.0, 140.0), sector_angle_deg=(42.0, 46.0)),
    "target_shape": _SOURCE.replace(
        description="another population: dilated, longer, more tilted ventricles with thinner walls",
        lv_dilation=(1.12, 1.3), lv_length_mm=(70.0, 86.0), wall_mm=(8.0, 9.5), tilt_deg=(-16.0, 16.0),
        bluntness=(2.4, 3.2), es_width_factor=(0.8, 0.9), apex_depth_mm=(26.0, 36.0)),
    "target_artifact": _SOURCE.replace(
        description="a difficult acquisition: strong apical haze, clutter, frequent wall dropout and shadows",
        haze=(0.35, 0.6), clutter=(0.15, 0.3), dropout_probability=0.9, dropout_strength=(0.7, 0.95),
        shadow_probability=0.6, attenuation=(1.0, 1.6)),
    "target_clutter": _SOURCE.replace(
        description="a cluttered window: strong near-field clutter and reverberation, some dropout and shadows",
        clutter=(0.3, 0.45), haze=(0.1, 0.2), dropout_probability=0.6, dropout_strength=(0.6, 0.9),
        shadow_probability=0.3, attenuation=(0.8, 1.2)),
    "default_target": _SOURCE.replace(
        description="the benchmark target: another scanner (low gain, flat contrast, noise), probe (coarse "
                    "speckle, blur) and more artefacts, same population",
        gain=(0.5, 0.65), gamma=(1.4, 1.7), dynamic_range=(50.0, 80.0), offset=(0.04, 0.08),
        blood_level=(0.08, 0.14), noise_std=(0.05, 0.07),
        speckle_size=(0.02, 0.035), speckle_contrast=(0.95, 1.0), blur=(0.01, 0.018),
        haze=(0.15, 0.35), clutter=(0.05, 0.15), dropout_probability=0.5, attenuation=(0.7, 1.1)),
    # held out from every tuning decision (docs/protocol.md): a shift family the development presets never show
    # (small thick-walled ventricles) combined with artefacts, and a mild shift where adapting can only harm
    "target_hypertrophy_artifact": _SOURCE.replace(
        description="held-out: small, thick-walled (hypertrophic) ventricles imaged with haze, shadows and "
                    "dropout at a lower gain",
        lv_dilation=(0.8, 0.92), lv_length_mm=(55.0, 68.0), wall_mm=(14.0, 17.0), es_wall_factor=(1.25, 1.45),
        haze=(0.25, 0.45), clutter=(0.08, 0.18), dropout_probability=0.6, dropout_strength=(0.6, 0.9),
        shadow_probability=0.4, gain=(0.75, 0.9), attenuation=(0.6, 1.0)),
    "target_mild": _SOURCE.replace(
        description="held-out: a mild shift (slightly lower gain, slightly coarser speckle) where the source "
                    "model is already close to the oracle",
        gain=(0.85, 1.0), speckle_size=(0.008, 0.014), noise_std=(0.02, 0.035)),
}

#: Name of the default target domain (the preset a model trained on ``source`` is adapted to).
DEFAULT_TARGET: str = "default_target"


def available_presets() -> tuple[str, ...]:
    """Names of the domain presets, ``source`` first."""
    return tuple(PRESETS)


def get_preset(name: str) -> SyntheticPreset:
    """The preset called ``name``; a clear error listing the valid names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_code(name: str) -> int:
    """Stable 32-bit code of a preset name (CRC32; Python's ``hash`` changes between runs)."""
    return zlib.crc32(name.encode("utf-8"))


# ------------------------------------------------------------------------------------------- anatomy
@dataclass(frozen=True)
class _Heart:
    """Geometry of one heart, in units of the image height (rows) from the probe; x is lateral (0 = axis)."""

    apex: tuple[float, float]  # (x, y) of the endocardial apex
    tilt: float  # radians
    length: float  # endocardial apex -> mitral plane
    halfwidth: tuple[float, float]  # (septal side, lateral side) maximal cavity half-width
    wall: tuple[float, float]  # (septal, lateral) wall thickness
    apical_wall: float
    widest: float
    base_ratio: float
    bluntness: float
    jitter: np.ndarray  # (2 sides, 3 harmonics, [amplitude, phase])
    la_length: float
    la_halfwidth: float
    four_chamber: bool


def _draw(rng: np.random.Generator, value: Range | float) -> float:
    if isinstance(value, tuple):
        return float(rng.uniform(value[0], value[1]))
    return float(value)


def _sample_heart(rng: np.random.Generator, p: SyntheticPreset, depth_mm: float, min_wall: float) -> _Heart:
    mm = 1.0 / depth_mm  # one millimetre in image heights
    es = rng.random() < p.es_probability
    four_chamber = rng.random() < p.four_chamber_probability
    length = _draw(rng, p.lv_length_mm) * (_draw(rng, p.es_length_factor) if es else 1.0)
    halfwidth = _draw(rng, p.lv_halfwidth_mm) * _draw(rng, p.lv_dilation)
    halfwidth *= _draw(rng, p.es_width_factor) if es else 1.0
    side_skew = rng.uniform(0.9, 1.1)
    halfwidths = (halfwidth * side_skew * mm, halfwidth / side_skew * mm)
    wall = _draw(rng, p.wall_mm) * (_draw(rng, p.es_wall_factor) if es else 1.0) * mm
    walls = [wall * _draw(rng, p.septal_wall_ratio), wall]
    # the anatomy criterion "LV/MYO width <= 4.15 on the middle row" bounds how thin a wall may be
    thin_limit = (halfwidths[0] + halfwidths[1]) / 3.4
    if walls[0] + walls[1] < thin_limit:
        scale = thin_limit / (walls[0] + walls[1])
        walls = [w * scale for w in walls]
    walls = [max(w, min_wall) for w in walls]
    apical_wall = max(wall * _draw(rng, p.apical_wall_ratio), min_wall)
    # the apex sits on the sector axis; 4-chamber views swing the base to the right (RV on the left)
    x_apex = rng.uniform(-3.0, 3.0) * mm
    tilt = _draw(rng, p.tilt_deg) + (rng.uniform(3.0, 10.0) if four_chamber else 0.0)
    jitter = np.stack([rng.uniform(0, p.shape_jitter, (2, 3)), rng.uniform(0, 2 * np.pi, (2, 3))], axis=-1)
    la_halfwidth = _draw(rng, p.la_halfwidth_ratio) * _draw(rng, p.base_ratio) * 0.5 * sum(halfwidths)
    return _Heart(
        apex=(x_apex, _draw(rng, p.apex_depth_mm) * mm), tilt=np.deg2rad(tilt),
        length=length * mm, halfwidth=halfwidths, wall=(walls[0], walls[1]), apical_wall=apical_wall,
        widest=_draw(rng, p.widest_point), base_ratio=_draw(rng, p.base_ratio), bluntness=_draw(rng, p.bluntness),
        jitter=jitter, la_length=_draw(rng, p.la_length_mm) * mm, la_halfwidth=la_halfwidth,
        four_chamber=four_chamber)


def _profile(q: np.ndarray, widest: float, base_ratio: float, power: float) -> np.ndarray:
    """Relative half-width (0..1) of a bullet along its axis, q = 0 apex .. 1 base (0 outside)."""
    qc = widest
    tail = (1.0 - qc) / (1.0 - base_ratio**power) ** (1.0 / power)  # so that the profile is base_ratio at q = 1
    z = np.where(q < qc, (qc - q) / qc, (q - qc) / tail)
    inside = (q >= 0) & (q <= 1)
    return np.where(inside, np.clip(1.0 - np.abs(z) ** power, 0.0, None) ** (1.0 / power), 0.0)


def _wall_halfwidths(heart: _Heart, along: np.ndarray, lateral: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Endocardial and epicardial half-widths (image heights) at distances ``along`` the long axis.

    :param along: distance from the endocardial apex towards the base (any shape).
    :param lateral: bool, same shape: True on the lateral side of the axis, False on the septal side.
    :return: ``(endo, epi)``, 0 outside each bullet. The epicardium is a larger bullet that starts
        ``apical_wall`` above the apex and keeps 90 % of each side's wall thickness down to the mitral plane.
    """
    side = lateral.astype(np.intp)
    q = along / heart.length
    amplitude, phase = heart.jitter[side, :, 0], heart.jitter[side, :, 1]  # (..., 3) harmonics
    harmonics = np.pi * np.arange(1, 4) * np.clip(q, 0, 1)[..., None] + phase
    wobble = 1.0 + (amplitude * np.sin(harmonics)).sum(-1)
    halfwidth = np.where(lateral, heart.halfwidth[1], heart.halfwidth[0])
    wall = np.where(lateral, heart.wall[1], heart.wall[0])
    endo = halfwidth * wobble * _profile(q, heart.widest, heart.base_ratio, heart.bluntness)
    outer_length = heart.length + heart.apical_wall
    q_out = (along + heart.apical_wall) / outer_length
    widest_out = (heart.widest * heart.length + heart.apical_wall) / outer_length
    base_out = [(heart.base_ratio * heart.halfwidth[i] + 0.9 * heart.wall[i]) / (heart.halfwidth[i] + heart.wall[i])
                for i in (0, 1)]
    prof_out = np.where(lateral, _profile(q_out, widest_out, base_out[1], heart.bluntness),
                        _profile(q_out, widest_out, base_out[0], heart.bluntness))
    return endo, (halfwidth + wall) * wobble * prof_out


def _epicardial_outline(heart: _Heart, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) points (image heights) on the epicardial border, both sides, apex to mitral plane."""
    along = np.linspace(-heart.apical_wall, heart.length, n)
    along = np.concatenate([along, along])
    lateral = np.arange(2 * n) >= n
    _, epi = _wall_halfwidths(heart, along, lateral)
    across = np.where(lateral, epi, -epi)
    c, s = np.cos(heart.tilt), np.sin(heart.tilt)
    return heart.apex[0] + along * s + across * c, heart.apex[1] + along * c - across * s


def _anatomy_masks(heart: _Heart, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (H, W) masks of lv, myo, la, and the unlabelled rv, ra and pericardial rim."""
    c, s = np.cos(heart.tilt), np.sin(heart.tilt)
    dx, dy = x - heart.apex[0], y - heart.apex[1]
    along = dx * s + dy * c  # distance from the apex along the long axis (towards the base)
    across = dx * c - dy * s  # signed distance from the axis (+ = lateral wall, image right for tilt 0)
    lateral = across >= 0
    endo_half, epi_half = _wall_halfwidths(heart, along, lateral)
    endo, epi = np.abs(across) <= endo_half, np.abs(across) <= epi_half
    above_base = along <= heart.length
    lv = endo & above_base
    myo = epi & above_base & ~lv
    # atrium: an ellipse hanging from the mitral plane (cut by it, so it opens onto the LV over its width)
    u = (along - heart.length - 0.4 * heart.la_length) / (0.6 * heart.la_length)
    la = (u**2 + (across / heart.la_halfwidth) ** 2 <= 1.0) & ~above_base
    # pericardial rim: a band just outside the epicardium, down to slightly below the mitral plane
    rim_width = 0.2 * (heart.wall[0] + heart.wall[1])
    rim = (np.abs(across) <= epi_half + rim_width) & ~epi & (along >= -heart.apical_wall - rim_width) & (
        along <= heart.length + rim_width) & (epi_half > 0)
    masks = {"lv": lv, "myo": myo, "la": la, "rim": rim}
    if heart.four_chamber:
        # right ventricle beside the septum, right atrium below it (image only, never labelled)
        rv_offset = -(heart.halfwidth[0] + heart.wall[0] + 0.6 * heart.halfwidth[0] + 0.3 * heart.wall[0])
        rv_q = (along - 0.3 * heart.length) / (0.7 * heart.length)
        rv = np.abs(across - rv_offset) <= 0.6 * heart.halfwidth[0] * _profile(rv_q, 0.7, 0.8, 2.0)
        ra_u = (along - heart.length - 0.45 * heart.la_length) / (0.45 * heart.la_length)
        ra = ra_u**2 + ((across - rv_offset) / (0.8 * heart.la_halfwidth)) ** 2 <= 1.0
        masks["rv"] = rv & ~epi
        masks["ra"] = ra & ~la & ~epi
    return masks


def _survives_erosion(mask: np.ndarray) -> bool:
    """True when ``mask`` stays one 8-connected piece after one 3x3 erosion (the MYO thickness criterion)."""
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool))
    return ndimage.label(eroded, structure=np.ones((3, 3), bool))[1] == 1


# -------------------------------------------------------------------------------------- image formation
def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 6) -> np.ndarray:
    """Smooth random field with values around 0 (std about 1), bilinearly upsampled from a coarse grid."""
    coarse = rng.standard_normal((cells, cells))
    return ndimage.zoom(coarse, (shape[0] / cells, shape[1] / cells), order=1, mode="nearest")[: shape[0], : shape[1]]


def _correlated_speckle(rng: np.random.Generator, shape: tuple[int, int], sigma_px: tuple[float, float]) -> np.ndarray:
    """Fully developed speckle: amplitude of low-pass filtered complex Gaussian noise, mean square 1."""
    noise = rng.standard_normal((2, *shape))
    noise = ndimage.gaussian_filter(noise, (0, *sigma_px), mode="wrap", truncate=3.0)
    amplitude = np.hypot(noise[0], noise[1])
    return amplitude / np.sqrt(np.mean(amplitude**2) + 1e-12)


def _angular_bump(theta: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((theta - centre) / width) ** 2)


def render_sample(preset: SyntheticPreset, rng: np.random.Generator, image_size: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """Draw one image and its label map.

    :param preset: domain parameters.
    :param rng: the sample's random generator (consumed).
    :param image_size: (H, W) in pixels.
    :return: ``(image, label, depth_mm)``: float32 (H, W) in [0, 1], uint8 (H, W) with values 0..3 (CAMUS
        convention, atrium included), and the imaging depth in mm (physical image height).
    """
    h, w = image_size
    depth_mm = _draw(rng, preset.depth_mm)
    half_angle = np.deg2rad(_draw(rng, preset.sector_angle_deg))
    radius = _draw(rng, preset.sector_radius)
    # geometry in image heights: y = depth from the probe, x = lateral offset from the sector axis;
    # the field of view is square, so non-square images have non-square pixels
    y = ((np.arange(h, dtype=np.float64) + 0.5) / h)[:, None] * np.ones((1, w))
    x = ((np.arange(w, dtype=np.float64) + 0.5) / w - 0.5)[None, :] * np.ones((h, 1))
    y_probe = 0.01
    r = np.hypot(x, y - y_probe)
    theta = np.arctan2(x, y - y_probe)
    sector = (r <= radius) & (np.abs(theta) <= half_angle)

    # anatomy, redrawn until the heart lies inside the sector and off the image border
    # at least 4 px of wall: thinner bands break under the 3x3 erosion of the anatomy criterion
    min_wall = 4.0 / min(h, w)
    for _ in range(50):
        heart = _sample_heart(rng, preset, depth_mm, min_wall)
        ox, oy = _epicardial_outline(heart)
        o_r, o_theta = np.hypot(ox, oy - y_probe), np.arctan2(ox, oy - y_probe)
        fits = (np.abs(o_theta) <= half_angle - 0.03) & (o_r <= radius - 0.03)
        fits &= (np.abs(ox) <= 0.5 - 2.0 / w) & (oy >= 2.0 / h) & (oy <= 1.0 - 2.0 / h)
        if fits.all():
            break
    else:  # an unlucky streak (extreme presets): fall back to an upright heart on the axis
        heart = dataclasses.replace(heart, apex=(0.0, 35.0 / depth_mm), tilt=0.0)
    masks = _anatomy_masks(heart, x, y)
    for _ in range(3):  # pixelation can leave a staircase too thin for a 3x3 erosion: thicken by one pixel
        if _survives_erosion(masks["myo"]):
            break
        one_px = 1.0 / min(h, w)
        heart = dataclasses.replace(heart, wall=(heart.wall[0] + one_px, heart.wall[1] + one_px),
                                    apical_wall=heart.apical_wall + one_px)
        masks = _anatomy_masks(heart, x, y)
    label = np.zeros((h, w), np.uint8)
    label[masks["la"] & sector] = LA
    label[masks["myo"]] = MYO
    label[masks["lv"]] = LV

    # echogenicity
    texture = 1.0 + preset.texture * _smooth_field(rng, (h, w))
    echo = _draw(rng, preset.tissue_level) * texture.clip(0.2)
    blood = masks["lv"] | masks["la"] | masks.get("rv", False) | masks.get("ra", False)
    echo = np.where(blood, _draw(rng, preset.blood_level), echo)
    myo_texture = 1.0 + 0.15 * _smooth_field(rng, (h, w), cells=8)
    echo = np.where(masks["myo"], _draw(rng, preset.myo_level) * myo_texture, echo)
    rim_strength = _draw(rng, preset.pericardium_level) * (0.6 + 0.4 * (_smooth_field(rng, (h, w), 5) > -0.5))
    echo = np.where(masks["rim"], rim_strength, echo)
    # smooth the tissue boundaries a little (sub-pixel partial volume)
    echo = ndimage.gaussian_filter(echo, 0.6, truncate=2.0)

    # wall dropout (echo lost where the beam runs along a wall) and acoustic shadows
    if rng.random() < preset.dropout_probability:
        wall_side = 1.0 if rng.random() < 0.6 else -1.0  # the lateral wall drops out more often
        c, s = np.cos(heart.tilt), np.sin(heart.tilt)
        along = rng.uniform(0.25, 0.85) * heart.length
        offset = wall_side * (heart.halfwidth[int(wall_side > 0)] + 0.5 * heart.wall[int(wall_side > 0)])
        px = heart.apex[0] + along * s + offset * c
        py = heart.apex[1] + along * c - offset * s
        extent = rng.uniform(0.06, 0.14)
        bump = np.exp(-0.5 * ((x - px) ** 2 + (y - py) ** 2) / extent**2)
        echo = echo * (1.0 - _draw(rng, preset.dropout_strength) * bump)
    if rng.random() < preset.shadow_probability:
        centre = rng.uniform(-0.8, 0.8) * half_angle
        start = rng.uniform(0.1, 0.4)
        shadow = _angular_bump(theta, centre, rng.uniform(0.04, 0.1)) / (1.0 + np.exp(-(r - start) / 0.02))
        echo = echo * (1.0 - _draw(rng, preset.shadow_strength) * shadow)

    # speckle (multiplicative), point spread, attenuation
    size = np.asarray(preset.speckle_size) * np.array([h, w])
    contrast = _draw(rng, preset.speckle_contrast)
    speckle = (1.0 - contrast) + contrast * _correlated_speckle(rng, (h, w), (float(size[0]), float(size[1])))
    envelope = echo * speckle
    psf = np.asarray(preset.blur) * np.array([h, w])
    envelope = ndimage.gaussian_filter(envelope, (float(psf[0]), float(psf[1])), truncate=2.5)
    envelope = envelope * np.exp(-_draw(rng, preset.attenuation) * r / radius)

    # near-field haze (reverberation at the apex) and clutter blobs
    haze = _draw(rng, preset.haze)
    if haze > 0:
        envelope = envelope + haze * np.exp(-r / 0.18) * (1.0 + 0.5 * _smooth_field(rng, (h, w), 4)).clip(0)
    clutter = _draw(rng, preset.clutter)
    if clutter > 0:
        blobs = _smooth_field(rng, (h, w), cells=10)
        envelope = envelope + clutter * np.clip(blobs - 0.5, 0, None) * speckle

    # display: log compression, gain, gamma, offset, noise
    dynamic_range = _draw(rng, preset.dynamic_range)
    display = np.log1p(dynamic_range * np.clip(envelope, 0, None)) / np.log1p(dynamic_range)
    display = _draw(rng, preset.gain) * display ** _draw(rng, preset.gamma) + _draw(rng, preset.offset)
    display = display + _draw(rng, preset.noise_std) * rng.standard_normal((h, w))
    image = np.where(sector, np.clip(display, 0.0, 1.0), 0.0).astype(np.float32)
    return image, label, depth_mm


# ------------------------------------------------------------------------------------------- dataset
class SyntheticEcho(SegDataset):
    """Procedural apical echo images with CAMUS-convention labels, generated lazily and deterministically.

    :param preset: domain name from :data:`PRESETS` (default ``"source"``; :data:`DEFAULT_TARGET` is the
        benchmark target), or a :class:`SyntheticPreset` instance for a custom domain (named ``"custom"``
        in sample ids and seeds).
    :param split: ``"train"``, ``"val"`` or ``"test"`` (default ``"train"``); splits draw from disjoint
        random streams, so they never share an image.
    :param n_images: number of images (default ``None``: 1000 train, 100 val, 200 test). Any positive
        size costs no memory: images are generated on access.
    :param image_size: output size in pixels, ``H`` or ``(H, W)`` (default 64). Geometry is defined in
        relative units, so the same index gives the same heart at every size (non-square sizes stretch it).
    :param seed: realisation of the domain (default 0); sample ``i`` depends only on
        ``(seed, preset, split, i)``.
    :param with_labels: return label maps (default ``True``; ``False`` gives ``Sample.label = None``, as for
        unlabelled target data).
    :param keep_atrium: keep the left atrium as class 3 (default ``False``: folded into background, classes
        ``("background", "lv", "myo")`` as in the paper).
    :param cache_size: number of recent samples kept in an LRU cache (default 256; 0 disables it).

    ``Sample.spacing`` is (depth_mm / H, depth_mm / W) in mm, the imaging depth being drawn per image.
    """

    def __init__(self, preset: str | SyntheticPreset = "source", split: str = "train", n_images: int | None = None,
                 image_size: int | tuple[int, int] = 64, seed: int = 0, with_labels: bool = True,
                 keep_atrium: bool = False, cache_size: int = 256) -> None:
        if isinstance(preset, SyntheticPreset):
            self.preset_name, self.preset = "custom", preset
        else:
            self.preset_name, self.preset = str(preset), get_preset(str(preset))
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_CODES)}")
        if n_images is None:
            n_images = DEFAULT_SPLIT_SIZES[split]
        if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images <= 0:
            raise ValueError(f"n_images must be a positive integer or None, got {n_images!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size!r}")
        self.split = split
        self.n_images = int(n_images)
        self.image_size = as_image_size(image_size)
        self.seed = int(seed)
        self.with_labels = bool(with_labels)
        self.keep_atrium = bool(keep_atrium)
        self.class_names = CAMUS_CLASS_NAMES if keep_atrium else CAMUS_CLASS_NAMES[:3]
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, Sample] = OrderedDict()
        self._seed_prefix = [self.seed, preset_code(self.preset_name), SPLIT_CODES[split]]

    def __len__(self) -> int:
        return self.n_images

    def __repr__(self) -> str:
        return (f"SyntheticEcho(preset={self.preset_name!r}, split={self.split!r}, n_images={self.n_images}, "
                f"image_size={self.image_size}, seed={self.seed})")

    def __getitem__(self, index: int) -> Sample:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"SyntheticEcho indices must be integers, got {type(index).__name__}")
        index = self._check_index(int(index))
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._copy(self._cache[index])
        sample = self.generate(index)
        if self.cache_size:
            self._cache[index] = sample
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return self._copy(sample)

    def generate(self, index: int) -> Sample:
        """Draw sample ``index`` (no cache, no range check beyond ``index >= 0``)."""
        rng = np.random.default_rng([*self._seed_prefix, int(index)])
        image, label, depth_mm = render_sample(self.preset, rng, self.image_size)
        if not self.keep_atrium:
            label[label == LA] = BACKGROUND
        h, w = self.image_size
        return Sample(image=image, label=label if self.with_labels else None,
                      spacing=(depth_mm / h, depth_mm / w), id=f"{self.preset_name}-{self.split}-{index:06d}")

    @staticmethod
    def _copy(sample: Sample) -> Sample:
        # callers may modify arrays in place; the cached original must not change
        return Sample(image=sample.image.copy(), label=None if sample.label is None else sample.label.copy(),
                      spacing=sample.spacing, id=sample.id)


__all__ = ["DEFAULT_SPLIT_SIZES", "DEFAULT_TARGET", "PRESETS", "SPLIT_CODES", "SyntheticEcho", "SyntheticPreset",
           "available_presets", "get_preset", "preset_code", "render_sample"]

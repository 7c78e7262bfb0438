"""Generate a seeded, non-MNIST benchmark set of digit images rendered from installed fonts.

Usage:
    .venv/bin/python scripts/generate_other_samples.py --out media/samples/other --per-digit 15 --seed 0

The images imitate what users really upload: handwriting-style and printed digits on
paper, lined notebook pages, phone photos (uneven light, noise, blur, JPEG), transparent
HTML-canvas exports, chalkboards, tiny low-resolution crops and small digits lost in a
large canvas. Each file name starts with its label (e.g. ``3_hand_humor_photo_017.jpg``)
and ``manifest.json`` next to the images records label, font and style parameters.

Fonts come from Debian packages and are only needed to regenerate (the images are
committed). Missing fonts are skipped, so the output depends on which are installed;
the manifest lists the fonts actually used. To get the reference set:

    apt-get install fonts-humor-sans fonts-comic-neue fonts-dkg-handwriting fonts-breip \\
        fonts-rufscript fonts-sjfonts fonts-bwht fonts-klee fonts-kristi fonts-tomsontalks \\
        fonts-yusei-magic fonts-dancingscript fonts-kaushanscript fonts-dejavu-core \\
        fonts-liberation fonts-freefont-ttf fonts-urw-base35 fonts-sil-andika fonts-hack fonts-go
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# (key, path, slanted). "slanted" fonts are already italic, so extra shear in the same
# direction would push them past what a person writes.
HAND_FONTS: list[tuple[str, str, bool]] = [
    ("humor", "/usr/share/fonts/truetype/humor-sans/Humor-Sans.ttf", False),
    ("comic", "/usr/share/fonts/opentype/comic-neue/ComicNeue-Regular.otf", False),
    ("comicbold", "/usr/share/fonts/opentype/comic-neue/ComicNeue-Bold.otf", False),
    ("comiclightit", "/usr/share/fonts/opentype/comic-neue/ComicNeue-LightItalic.otf", True),
    ("dkg", "/usr/share/fonts/truetype/fifthhorseman/dkg.ttf", False),
    ("dkgbold", "/usr/share/fonts/truetype/fifthhorseman/dkgBd.ttf", False),
    ("dkgboldit", "/usr/share/fonts/truetype/fifthhorseman/dkgBI.ttf", True),
    ("dkgit", "/usr/share/fonts/truetype/fifthhorseman/dkgIt.ttf", True),
    ("breip", "/usr/share/fonts/truetype/breip/Breip.ttf", False),
    ("rufscript", "/usr/share/fonts/truetype/rufscript/Rufscript010.ttf", False),
    ("stevehand", "/usr/share/fonts/truetype/sjfonts/SteveHand.ttf", False),
    ("bwbuild", "/usr/share/fonts/opentype/bwht/BecauseWeBuild-Regular.otf", False),
    ("bwconnect", "/usr/share/fonts/opentype/bwht/BecauseWeConnect-Regular.otf", False),
    ("bwcreate", "/usr/share/fonts/opentype/bwht/BecauseWeCreate-Regular.otf", False),
    ("bwlearn", "/usr/share/fonts/opentype/bwht/BecauseWeLearn-Regular.otf", False),
    ("bwmentor", "/usr/share/fonts/opentype/bwht/BecauseWeMentor-Regular.otf", False),
    ("bworganize", "/usr/share/fonts/opentype/bwht/BecauseWeOrganize-Regular.otf", False),
    ("klee", "/usr/share/fonts/truetype/klee/KleeOne-Regular.ttf", False),
    ("kleesemibold", "/usr/share/fonts/truetype/klee/KleeOne-SemiBold.ttf", False),
    ("kristi", "/usr/share/fonts/truetype/kristi/Kristi.ttf", True),
    ("tomson", "/usr/share/fonts/truetype/tomsontalks/TomsonTalks.ttf", False),
    ("yusei", "/usr/share/fonts/truetype/yusei-magic/YuseiMagic-Regular.ttf", False),
    ("dancing", "/usr/share/fonts/opentype/dancingscript/DancingScript-Regular.otf", True),
    ("dancingbold", "/usr/share/fonts/opentype/dancingscript/DancingScript-Bold.otf", True),
    ("kaushan", "/usr/share/fonts/opentype/kaushanscript/KaushanScript-Regular.otf", True),
]

PRINT_FONTS: list[tuple[str, str, bool]] = [
    ("dejavusans", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", False),
    ("dejavusansbold", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", False),
    ("dejavuserif", "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf", False),
    ("dejavumono", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", False),
    ("libsans", "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf", False),
    ("libserifbold", "/usr/share/fonts/truetype/liberation/LiberationSerif-Bold.ttf", False),
    ("libmono", "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf", False),
    ("freesansbold", "/usr/share/fonts/truetype/freefont/FreeSansBold.ttf", False),
    ("freeserifit", "/usr/share/fonts/truetype/freefont/FreeSerifItalic.ttf", True),
    ("freemonobold", "/usr/share/fonts/truetype/freefont/FreeMonoBold.ttf", False),
    ("nimbussans", "/usr/share/fonts/opentype/urw-base35/NimbusSans-Regular.otf", False),
    ("nimbusroman", "/usr/share/fonts/opentype/urw-base35/NimbusRoman-Regular.otf", False),
    ("urwgothic", "/usr/share/fonts/opentype/urw-base35/URWGothic-Demi.otf", False),
    ("bookman", "/usr/share/fonts/opentype/urw-base35/URWBookman-Light.otf", False),
    ("p052it", "/usr/share/fonts/opentype/urw-base35/P052-Italic.otf", True),
    ("andika", "/usr/share/fonts/truetype/andika/Andika-Regular.ttf", False),
    ("hackbold", "/usr/share/fonts/truetype/hack/Hack-Bold.ttf", False),
    ("go", "/usr/share/fonts/fonts-go/Go-Regular.ttf", False),
    ("gomono", "/usr/share/fonts/fonts-go/Go-Mono.ttf", False),
]

# Dotted or slashed zeros are a programmer's convention, not how people write 0; a reader
# could take them for 8 or an empty-set sign, so these fonts are not used for that digit.
SKIP_DIGITS: dict[str, set[int]] = {key: {0} for key in ("dejavumono", "libmono", "hackbold", "go", "gomono")}

# One slot per image of a digit; kind + scene. Cycled when --per-digit exceeds its length,
# so every digit gets the same mix of situations and per-digit accuracy stays comparable.
SLOTS: list[tuple[str, str]] = [
    ("hand", "paper"),
    ("hand", "paper"),
    ("print", "paper"),
    ("hand", "lined"),
    ("hand", "lined"),
    ("hand", "photo"),
    ("hand", "photo"),
    ("print", "photo"),
    ("hand", "canvas"),
    ("hand", "canvas"),
    ("hand", "chalk"),
    ("print", "lowres"),
    ("hand", "lowres"),
    ("print", "smallbig"),
    ("print", "form"),
]

# RGB ink, alpha multiplier, grain. Grain imitates graphite that skips paper fibres.
INKS: dict[str, tuple[tuple[int, int, int], float, float]] = {
    "black": ((18, 18, 22), 1.0, 0.0),
    "blue": ((28, 48, 150), 0.95, 0.05),
    "darkgrey": ((62, 62, 66), 1.0, 0.0),
    "pencil": ((80, 80, 88), 0.8, 0.35),
    "red": ((175, 28, 32), 0.95, 0.05),
}

PAPERS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 248),
    "offwhite": (244, 242, 236),
    "cream": (246, 238, 214),
    "lightgrey": (226, 226, 224),
}

GLYPH_PX = 200


@dataclass(frozen=True)
class Font:
    key: str
    path: str
    slanted: bool


def available_fonts(*, candidates: list[tuple[str, str, bool]]) -> list[Font]:
    return [Font(k, p, s) for k, p, s in candidates if Path(p).is_file()]


def render_glyph(*, font: Font, digit: int) -> Image.Image:
    """Ink mask (L, 255 = ink) of the digit, tightly cropped, about GLYPH_PX tall."""
    pil_font = ImageFont.truetype(font.path, GLYPH_PX)
    canvas = Image.new("L", (GLYPH_PX * 3, GLYPH_PX * 3), 0)
    ImageDraw.Draw(canvas).text((GLYPH_PX, GLYPH_PX // 2), str(digit), font=pil_font, fill=255)
    return canvas.crop(canvas.getbbox())


def stroke_width(*, mask: Image.Image) -> float:
    """Mean stroke width estimated as 2 * area / perimeter of the ink."""
    ink = np.asarray(mask) > 127
    area = ink.sum()
    edges = ink & ~(np.asarray(mask.filter(ImageFilter.MinFilter(3))) > 127)
    return 2.0 * area / max(edges.sum(), 1)


def adjust_stroke(*, mask: Image.Image, target_ratio: float, min_px_at_final: float, final_height: int) -> Image.Image:
    """Thicken thin fonts towards a sampled pen width; thick fonts stay as designed."""
    height = mask.height
    target = max(target_ratio * height, min_px_at_final * height / max(final_height, 1))
    current = stroke_width(mask=mask)
    grow = int(round(target - current))
    if grow >= 2:
        size = min(grow, 25) | 1
        padded = Image.new("L", (mask.width + size, mask.height + size), 0)
        padded.paste(mask, (size // 2, size // 2))
        mask = padded.filter(ImageFilter.MaxFilter(size))
    return mask


def distort(*, mask: Image.Image, rotation: float, shear: float) -> Image.Image:
    w, h = mask.size
    offset = -shear * h if shear > 0 else 0.0
    new_w = int(w + abs(shear) * h) + 2
    mask = mask.transform((new_w, h), Image.Transform.AFFINE, (1, shear, offset, 0, 1, 0), Image.Resampling.BICUBIC)
    mask = mask.rotate(rotation, resample=Image.Resampling.BICUBIC, expand=True)
    return mask.crop(mask.getbbox())


def fit_height(*, mask: Image.Image, height: int, max_width: int) -> Image.Image:
    scale = min(height / mask.height, max_width / mask.width)
    size = (max(1, round(mask.width * scale)), max(1, round(mask.height * scale)))
    return mask.resize(size, Image.Resampling.LANCZOS)


def paper(
    *, rng: np.random.Generator, size: tuple[int, int], colour: tuple[int, int, int], texture: float
) -> np.ndarray:
    """Float RGB paper; low-frequency texture keeps PNGs small while not looking flat."""
    w, h = size
    base = np.ones((h, w, 3), np.float32) * np.array(colour, np.float32)
    if texture > 0:
        coarse = rng.normal(0, texture, (max(2, h // 16), max(2, w // 16))).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC))
        base += smooth[..., None]
    return base


def lighting(*, rng: np.random.Generator, size: tuple[int, int], strength: float) -> np.ndarray:
    """Multiplicative light falloff from a random direction, as under a desk lamp or a hand's shadow."""
    w, h = size
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = (xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)
    proj = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-6)
    return (1.0 - strength * proj**1.5)[..., None]


def composite(
    *, bg: np.ndarray, mask: Image.Image, pos: tuple[int, int], ink: str, rng: np.random.Generator
) -> np.ndarray:
    rgb, alpha_mul, grain = INKS[ink]
    alpha = np.zeros(bg.shape[:2], np.float32)
    m = np.asarray(mask, np.float32) / 255.0
    x, y = pos
    alpha[y : y + m.shape[0], x : x + m.shape[1]] = m
    if grain > 0:
        alpha *= 1.0 - grain * rng.random(alpha.shape, dtype=np.float32)
    alpha = (alpha * alpha_mul)[..., None]
    return bg * (1 - alpha) + np.array(rgb, np.float32) * alpha


def place(
    *, rng: np.random.Generator, canvas: tuple[int, int], glyph: tuple[int, int], margin: float
) -> tuple[int, int]:
    """Anywhere inside the margins: users rarely centre what they draw or photograph."""
    cw, ch = canvas
    gw, gh = glyph
    mx, my = int(cw * margin), int(ch * margin)
    x = int(rng.integers(min(mx, cw - gw), max(cw - gw - mx, mx, 0) + 1)) if cw > gw else 0
    y = int(rng.integers(min(my, ch - gh), max(ch - gh - my, my, 0) + 1)) if ch > gh else 0
    return max(0, min(x, cw - gw)), max(0, min(y, ch - gh))


def to_uint8(*, arr: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def add_noise(*, arr: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return arr + rng.normal(0, sigma, arr.shape[:2])[..., None].astype(np.float32)


def prepared_glyph(
    *,
    font: Font,
    digit: int,
    rng: np.random.Generator,
    height: int,
    max_width: int,
    stroke_range: tuple[float, float],
    max_rotation: float,
    max_shear: float,
) -> tuple[Image.Image, dict]:
    mask = render_glyph(font=font, digit=digit)
    ratio = float(rng.uniform(*stroke_range))
    mask = adjust_stroke(mask=mask, target_ratio=ratio, min_px_at_final=1.6, final_height=height)
    rotation = float(rng.uniform(-max_rotation, max_rotation))
    shear = float(rng.uniform(-max_shear, max_shear))
    if font.slanted:
        # Italic fonts already lean right; adding more lean makes shapes no writer produces,
        # so shear only straightens them and clockwise rotation is kept small.
        shear = -abs(shear)
        rotation = float(rng.uniform(-max_rotation / 3, max_rotation))
    mask = distort(mask=mask, rotation=rotation, shear=shear)
    mask = fit_height(mask=mask, height=height, max_width=max_width)
    return mask, {
        "rotation_deg": round(rotation, 1),
        "shear": round(shear, 3),
        "stroke_ratio": round(ratio, 3),
        "digit_px": [mask.width, mask.height],
    }


def pick(*, rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def random_canvas(*, rng: np.random.Generator, low: int, high: int) -> tuple[int, int]:
    w = int(rng.integers(low, high + 1))
    aspect = float(rng.uniform(0.7, 1.45))
    h = int(np.clip(round(w / aspect), low, high))
    return w, h


def scene_paper(*, rng: np.random.Generator, font: Font, digit: int, lined: bool) -> tuple[Image.Image, dict]:
    size = random_canvas(rng=rng, low=72, high=240)
    height = int(min(size) * rng.uniform(0.45, 0.8))
    glyph, params = prepared_glyph(
        font=font,
        digit=digit,
        rng=rng,
        height=height,
        max_width=int(size[0] * 0.9),
        stroke_range=(0.05, 0.13),
        max_rotation=15,
        max_shear=0.25,
    )
    paper_name = pick(rng=rng, options=["white", "offwhite", "cream", "lightgrey"])
    bg = paper(rng=rng, size=size, colour=PAPERS[paper_name], texture=2.0)
    if lined:
        # Ruled lines are faint (as in a real notebook) so the digit stays the dominant ink.
        spacing = int(max(height * rng.uniform(0.55, 0.8), 10))
        start = int(rng.integers(0, spacing))
        line_rgb = np.array([188, 206, 236], np.float32)
        for y in range(start, size[1], spacing):
            bg[y] = bg[y] * 0.25 + line_rgb * 0.75
        if rng.random() < 0.4:
            margin_x = int(size[0] * rng.uniform(0.05, 0.12))
            bg[:, margin_x] = bg[:, margin_x] * 0.4 + np.array([236, 190, 190], np.float32) * 0.6
        params["line_spacing_px"] = spacing
    ink = pick(rng=rng, options=["black", "blue", "blue", "darkgrey", "pencil", "red"])
    pos = place(rng=rng, canvas=size, glyph=glyph.size, margin=0.06)
    arr = add_noise(arr=composite(bg=bg, mask=glyph, pos=pos, ink=ink, rng=rng), rng=rng, sigma=1.0)
    img = Image.fromarray(to_uint8(arr=arr))
    if ink in ("black", "darkgrey", "pencil") and paper_name in ("white", "lightgrey") and rng.random() < 0.6:
        img = img.convert("L")  # scanners and many apps save greyscale
    params.update({"paper": paper_name, "ink": ink, "canvas_px": list(size), "pos": list(pos)})
    return img, params


def scene_photo(*, rng: np.random.Generator, font: Font, digit: int) -> tuple[Image.Image, dict]:
    size = random_canvas(rng=rng, low=96, high=256)
    height = int(min(size) * rng.uniform(0.4, 0.75))
    glyph, params = prepared_glyph(
        font=font,
        digit=digit,
        rng=rng,
        height=height,
        max_width=int(size[0] * 0.9),
        stroke_range=(0.04, 0.11),
        max_rotation=15,
        max_shear=0.25,
    )
    paper_name = pick(rng=rng, options=["white", "offwhite", "cream"])
    colour = np.array(PAPERS[paper_name], np.float32)
    # Indoor light is warm, so phone photos of white paper come out slightly yellow.
    cast = np.array([1.0, float(rng.uniform(0.94, 1.0)), float(rng.uniform(0.84, 0.98))], np.float32)
    bg = paper(rng=rng, size=size, colour=tuple(colour * cast), texture=3.0)
    light = float(rng.uniform(0.15, 0.4))
    ink = pick(rng=rng, options=["black", "blue", "darkgrey", "pencil", "red"])
    pos = place(rng=rng, canvas=size, glyph=glyph.size, margin=0.08)
    arr = composite(bg=bg, mask=glyph, pos=pos, ink=ink, rng=rng) * lighting(rng=rng, size=size, strength=light)
    sigma = float(rng.uniform(2.5, 7.0))
    arr = add_noise(arr=arr, rng=rng, sigma=sigma)
    blur = float(rng.uniform(0.4, 1.2))
    img = Image.fromarray(to_uint8(arr=arr)).filter(ImageFilter.GaussianBlur(blur))
    params.update(
        {
            "paper": paper_name,
            "ink": ink,
            "canvas_px": list(size),
            "pos": list(pos),
            "shadow": round(light, 2),
            "noise_sigma": round(sigma, 1),
            "blur": round(blur, 2),
        }
    )
    return img, params


def scene_canvas(*, rng: np.random.Generator, font: Font, digit: int) -> tuple[Image.Image, dict]:
    """Dark strokes on a fully transparent background, as canvas.toDataURL() exports them."""
    side = int(rng.choice([140, 200, 256, 280]))
    size = (side, side)
    height = int(side * rng.uniform(0.5, 0.85))
    glyph, params = prepared_glyph(
        font=font,
        digit=digit,
        rng=rng,
        height=height,
        max_width=int(side * 0.9),
        stroke_range=(0.08, 0.15),
        max_rotation=12,
        max_shear=0.2,
    )
    ink = pick(rng=rng, options=["black", "black", "blue", "darkgrey", "red"])
    rgb, _, _ = INKS[ink]
    pos = place(rng=rng, canvas=size, glyph=glyph.size, margin=0.05)
    # Transparent pixels are (0,0,0,0) like a browser export: naive RGB conversion turns them black.
    out = np.zeros((side, side, 4), np.uint8)
    m = np.asarray(glyph)
    x, y = pos
    region = out[y : y + m.shape[0], x : x + m.shape[1]]
    region[..., :3] = np.where(m[..., None] > 0, np.array(rgb, np.uint8), 0)
    region[..., 3] = m
    params.update({"ink": ink, "canvas_px": list(size), "pos": list(pos), "background": "transparent"})
    return Image.fromarray(out, mode="RGBA"), params


def scene_chalk(*, rng: np.random.Generator, font: Font, digit: int) -> tuple[Image.Image, dict]:
    size = random_canvas(rng=rng, low=96, high=220)
    height = int(min(size) * rng.uniform(0.5, 0.8))
    glyph, params = prepared_glyph(
        font=font,
        digit=digit,
        rng=rng,
        height=height,
        max_width=int(size[0] * 0.9),
        stroke_range=(0.07, 0.13),
        max_rotation=15,
        max_shear=0.2,
    )
    board_name = pick(rng=rng, options=["green", "black", "slate"])
    board = {"green": (38, 62, 48), "black": (22, 24, 24), "slate": (48, 54, 60)}[board_name]
    bg = paper(rng=rng, size=size, colour=board, texture=4.0)
    pos = place(rng=rng, canvas=size, glyph=glyph.size, margin=0.06)
    alpha = np.zeros(bg.shape[:2], np.float32)
    m = np.asarray(glyph, np.float32) / 255.0
    alpha[pos[1] : pos[1] + m.shape[0], pos[0] : pos[0] + m.shape[1]] = m
    alpha *= 1.0 - 0.3 * rng.random(alpha.shape, dtype=np.float32)  # chalk leaves gaps
    arr = bg * (1 - alpha[..., None]) + np.array([236, 236, 226], np.float32) * alpha[..., None]
    img = Image.fromarray(to_uint8(arr=arr)).filter(ImageFilter.GaussianBlur(0.5))
    params.update({"board": board_name, "ink": "chalk", "canvas_px": list(size), "pos": list(pos)})
    return img, params


def scene_lowres(*, rng: np.random.Generator, font: Font, digit: int) -> tuple[Image.Image, dict]:
    """A tiny crop (16-28 px), either kept tiny or upscaled as thumbnails and screenshots are."""
    side = int(rng.choice([16, 20, 24, 28]))
    height = int(round(side * rng.uniform(0.7, 0.85)))
    glyph, params = prepared_glyph(
        font=font,
        digit=digit,
        rng=rng,
        height=height,
        max_width=int(side * 0.9),
        stroke_range=(0.1, 0.16),
        max_rotation=8,
        max_shear=0.15,
    )
    paper_name = pick(rng=rng, options=["white", "offwhite", "lightgrey"])
    bg = paper(rng=rng, size=(side, side), colour=PAPERS[paper_name], texture=0.0)
    ink = pick(rng=rng, options=["black", "darkgrey", "blue"])
    pos = place(rng=rng, canvas=(side, side), glyph=glyph.size, margin=0.05)
    img = Image.fromarray(to_uint8(arr=composite(bg=bg, mask=glyph, pos=pos, ink=ink, rng=rng)))
    upscale = pick(rng=rng, options=["none", "nearest", "bilinear"])
    if upscale != "none":
        factor = int(rng.integers(4, 9))
        resample = Image.Resampling.NEAREST if upscale == "nearest" else Image.Resampling.BILINEAR
        img = img.resize((side * factor, side * factor), resample)
    params.update({"paper": paper_name, "ink": ink, "source_px": side, "upscale": upscale, "canvas_px": list(img.size)})
    return img, params


def scene_smallbig(*, rng: np.random.Generator, font: Font, digit: int) -> tuple[Image.Image, dict]:
    """A 30-50 px digit somewhere in a 300 px photo, the case a naive 28x28 resize destroys."""
    size = [(300, 300), (320, 240), (400, 300), (240, 320)][int(rng.integers(4))]
    height = int(rng.integers(30, 51))
    glyph, params = prepared_glyph(
        font=font,
        digit=digit,
        rng=rng,
        height=height,
        max_width=height,
        stroke_range=(0.07, 0.13),
        max_rotation=10,
        max_shear=0.15,
    )
    paper_name = pick(rng=rng, options=["white", "offwhite", "cream", "lightgrey"])
    bg = paper(rng=rng, size=size, colour=PAPERS[paper_name], texture=2.0)
    ink = pick(rng=rng, options=["black", "blue", "darkgrey"])
    pos = place(rng=rng, canvas=size, glyph=glyph.size, margin=0.1)
    arr = composite(bg=bg, mask=glyph, pos=pos, ink=ink, rng=rng) * lighting(rng=rng, size=size, strength=0.15)
    img = Image.fromarray(to_uint8(arr=add_noise(arr=arr, rng=rng, sigma=2.0)))
    params.update({"paper": paper_name, "ink": ink, "canvas_px": list(size), "pos": list(pos)})
    return img, params


def scene_form(*, rng: np.random.Generator, font: Font, digit: int) -> tuple[Image.Image, dict]:
    """A digit in a pre-printed form cell; the cell is in a pale 'dropout' colour, as OCR forms use."""
    size = random_canvas(rng=rng, low=80, high=180)
    height = int(min(size) * rng.uniform(0.45, 0.62))
    glyph, params = prepared_glyph(
        font=font,
        digit=digit,
        rng=rng,
        height=height,
        max_width=int(size[0] * 0.6),
        stroke_range=(0.06, 0.12),
        max_rotation=6,
        max_shear=0.1,
    )
    bg = paper(rng=rng, size=size, colour=PAPERS["white"], texture=1.5)
    w, h = size
    box = np.array([int(w * 0.12), int(h * 0.12), int(w * 0.88), int(h * 0.88)])
    dropout = np.array([246, 200, 206] if rng.random() < 0.5 else [200, 220, 244], np.float32)
    x0, y0, x1, y1 = box
    for xs, ys in ((slice(x0, x1 + 1), y0), (slice(x0, x1 + 1), y1), (x0, slice(y0, y1 + 1)), (x1, slice(y0, y1 + 1))):
        bg[ys, xs] = dropout
    ink = pick(rng=rng, options=["black", "blue", "darkgrey"])
    gw, gh = glyph.size
    pos = (
        int(np.clip((w - gw) // 2 + rng.integers(-w // 12, w // 12 + 1), x0 + 3, x1 - gw - 3)),
        int(np.clip((h - gh) // 2 + rng.integers(-h // 12, h // 12 + 1), y0 + 3, y1 - gh - 3)),
    )
    img = Image.fromarray(to_uint8(arr=composite(bg=bg, mask=glyph, pos=pos, ink=ink, rng=rng)))
    params.update({"ink": ink, "canvas_px": list(size), "pos": list(pos), "cell_colour": dropout.astype(int).tolist()})
    return img, params


def choose_format(*, scene: str, digit: int, rng: np.random.Generator) -> str:
    """Mostly PNG; every digit also covers JPEG, and WebP/BMP/GIF appear a few times each."""
    if scene == "photo":
        return "jpg"
    if scene == "smallbig":
        return "jpg" if digit % 2 == 0 else "png"
    if scene == "canvas":
        return "webp" if rng.random() < 0.3 else "png"
    if scene == "lowres":
        return "bmp" if rng.random() < 0.35 else "png"
    if scene == "chalk":
        return "gif" if digit % 3 == 0 else "png"
    if scene == "lined":
        return "jpg" if rng.random() < 0.35 else "png"
    if scene == "paper":
        return "webp" if rng.random() < 0.1 else "png"
    return "png"


def encode(*, img: Image.Image, fmt: str, rng: np.random.Generator) -> tuple[bytes, dict]:
    buf = io.BytesIO()
    info: dict = {}
    if fmt == "jpg":
        quality = int(rng.integers(45, 86))
        img.convert("RGB" if img.mode != "L" else "L").save(buf, "JPEG", quality=quality)
        info["jpeg_quality"] = quality
    elif fmt == "webp":
        lossless = img.mode == "RGBA"
        img.save(buf, "WEBP", lossless=lossless, quality=80)
        info["webp_lossless"] = lossless
    elif fmt == "gif":
        img.convert("RGB").quantize(colors=64).save(buf, "GIF")
    elif fmt == "bmp":
        img.convert("RGB" if img.mode == "RGBA" else img.mode).save(buf, "BMP")
    else:
        img.save(buf, "PNG", optimize=True)
    return buf.getvalue(), info


def scene_plain(*, rng: np.random.Generator, font: Font, digit: int) -> tuple[Image.Image, dict]:
    return scene_paper(rng=rng, font=font, digit=digit, lined=False)


def scene_lined(*, rng: np.random.Generator, font: Font, digit: int) -> tuple[Image.Image, dict]:
    return scene_paper(rng=rng, font=font, digit=digit, lined=True)


SCENES = {
    "paper": scene_plain,
    "lined": scene_lined,
    "photo": scene_photo,
    "canvas": scene_canvas,
    "chalk": scene_chalk,
    "lowres": scene_lowres,
    "smallbig": scene_smallbig,
    "form": scene_form,
}


def generate(*, out: Path, per_digit: int, seed: int) -> dict:
    hand = available_fonts(candidates=HAND_FONTS)
    printed = available_fonts(candidates=PRINT_FONTS)
    if not hand or not printed:
        sys.exit("need at least one handwriting and one printed font; see the apt-get line in the docstring")
    for f in HAND_FONTS + PRINT_FONTS:
        print(("using  " if Path(f[1]).is_file() else "MISSING ") + f"{f[0]:14s} {f[1]}")
    # Shuffle once with the seed, then walk the lists, so fonts are spread evenly across digits.
    order = np.random.default_rng(seed)
    hand = [hand[i] for i in order.permutation(len(hand))]
    printed = [printed[i] for i in order.permutation(len(printed))]

    out.mkdir(parents=True, exist_ok=True)
    old_manifest = out / "manifest.json"
    if old_manifest.is_file():
        # Only remove what this generator wrote before, never foreign files in the folder.
        for name in json.loads(old_manifest.read_text()).get("files", {}):
            (out / name).unlink(missing_ok=True)

    files: dict[str, dict] = {}
    counters = {"hand": 0, "print": 0}
    serial = 0
    for digit in range(10):
        for i in range(per_digit):
            kind, scene = SLOTS[(i + digit) % len(SLOTS)] if per_digit < len(SLOTS) else SLOTS[i % len(SLOTS)]
            pool = hand if kind == "hand" else printed
            usable = [f for f in pool if digit not in SKIP_DIGITS.get(f.key, set())] or pool
            font = usable[counters[kind] % len(usable)]
            counters[kind] += 1
            # A per-image generator keeps each image stable even if other scenes change.
            rng = np.random.default_rng([seed, digit, i])
            img, params = SCENES[scene](rng=rng, font=font, digit=digit)
            fmt = choose_format(scene=scene, digit=digit, rng=rng)
            data, enc = encode(img=img, fmt=fmt, rng=rng)
            name = f"{digit}_{kind}_{font.key}_{scene}_{serial:03d}.{fmt}"
            serial += 1
            (out / name).write_bytes(data)
            files[name] = {
                "label": digit,
                "kind": kind,
                "scene": scene,
                "font": font.key,
                "font_path": font.path,
                "format": fmt,
                "mode": img.mode,
                **params,
                **enc,
            }

    manifest = {
        "description": "Non-MNIST digits rendered from fonts by scripts/generate_other_samples.py",
        "seed": seed,
        "per_digit": per_digit,
        "fonts": {f.key: f.path for f in hand + printed if any(v["font"] == f.key for v in files.values())},
        "files": files,
    }
    old_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("media/samples/other"))
    parser.add_argument("--per-digit", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    manifest = generate(out=args.out, per_digit=args.per_digit, seed=args.seed)
    total = sum((args.out / n).stat().st_size for n in manifest["files"])
    print(f"wrote {len(manifest['files'])} images ({total / 1024:.0f} KiB) and manifest.json to {args.out}")


if __name__ == "__main__":
    main()

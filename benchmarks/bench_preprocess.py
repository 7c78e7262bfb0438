"""`make bench-preprocess`: MNIST test digits photographed in hard conditions, through the upload pipeline (JSON).

Each digit is drawn as dark ink on a 400-pixel sheet of paper, then the sheet
is changed the way real photos are: specks of dust, a frame drawn around the
digit, the desk showing along one edge, along two opposite ones or on every side, dim light, ruled paper (light or dark
lines), squared paper (straight or turned 2°), a hard shadow, uneven light,
transparent margins from a rotation in an editor, chalk on a grey board, and
a ring drawn round the digit, and the digit cut out tight and shrunk to 8 pixels. Two more scenes redraw the digit along its
centre line with a pen far finer than MNIST's strokes: a ballpoint and a fine
liner. Without a model it measures
how close each scene's 28x28 model input comes to the same digit's on clean
paper (``same_as_clean``: the share within a mean absolute difference of 0.05;
for the transparent margins, the same rotation on paper) and how many are
refused as blank, and how many of ``--empty N`` sheets in each scene with no digit on them are rightly
refused (``empty_refused``), and the share of its pictures (single digits and empty
sheets) taken for several (``several_digits``: the upload would warn that only one digit is read). Under
``pairs``, two of the digits written side by side or one above the other, a
third of a digit's height apart, on clean paper: ``several_digits`` is the share
of those pictures that are rightly taken for several. Under ``close_pairs``,
``--close-pairs N`` pairs written closer than that, at each gap of CLOSE_GAPS
(from overlapping to a fifth of a digit's height), each way, on that paper
and at MNIST's own size: the share taken for several. Under ``singles``,
which of ``--singles N`` MNIST test digits as they are, and which shipped
samples, are wrongly taken for several. With ``--checkpoint FILE``
(and its sha256, printed by the admin) it also gives the model's accuracy in each scene.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from scipy import ndimage  # noqa: E402

from training.ml.checkpoints import load_checkpoint  # noqa: E402
from training.ml.data import load_split  # noqa: E402
from training.ml.preprocess import Prepared, prepare_batch, to_tensor  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR", REPO / "data"))
SIDE = 400
PAPER, INK = 235.0, 30.0
SAME = 0.05
# Between the two digits of a pair: a third of a digit's height (MNIST's digits are 20 of their 28 pixels tall).
PAIR_GAP = 70
# Digits written closer than that: the gap between the two digits' ink, in MNIST's pixels, from an overlap to a fifth
# of a digit's height (4 pixels, NEAR_DIGIT: from there on the second digit is a piece apart).
CLOSE_GAPS = (-4, -2, -1, 0, 1, 2, 3, 4)
# The sheet's digits are ten times MNIST's size (``_ink_alpha``); at MNIST's own size they lie on black as in MNIST.
SHEET_SCALE = 10
MNIST_MARGIN = 4
SAMPLES = REPO / "media" / "samples"
# The tiny scene's side: a digit cut from a screen's small print, or an icon.
TINY_SIDE = 8


def _ink_alpha(digit: np.ndarray) -> np.ndarray:
    """The 28x28 digit as the ink's coverage of a 280-pixel square in the middle of the sheet."""
    alpha = np.zeros((SIDE, SIDE), dtype=np.float32)
    big = Image.fromarray(digit).resize((280, 280), Image.Resampling.BILINEAR)
    alpha[60:340, 60:340] = np.asarray(big, dtype=np.float32) / 255.0
    return alpha


def _centre_line(mask: np.ndarray) -> np.ndarray:
    """The one-pixel centre line of a stroke mask (Zhang-Suen thinning)."""
    line = mask.astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            padded = np.pad(line, 1)
            # The eight neighbours clockwise from the one above.
            n = [padded[:-2, 1:-1], padded[:-2, 2:], padded[1:-1, 2:], padded[2:, 2:],
                 padded[2:, 1:-1], padded[2:, :-2], padded[1:-1, :-2], padded[:-2, :-2]]
            marked = sum(n)
            transitions = sum((n[i] == 0) & (n[(i + 1) % 8] == 1) for i in range(8))
            up, right, down, left = n[0], n[2], n[4], n[6]
            if step == 0:
                side = (up * right * down == 0) & (right * down * left == 0)
            else:
                side = (up * right * left == 0) & (up * down * left == 0)
            remove = (line == 1) & (marked >= 2) & (marked <= 6) & (transitions == 1) & side
            if remove.any():
                line[remove] = 0
                changed = True
        if not changed:
            return line.astype(bool)


def _pen(alpha: np.ndarray, width: float) -> np.ndarray:
    """The digit redrawn along its centre line with a round pen ``width`` pixels wide (MNIST's: about 25)."""
    line = _centre_line(alpha > 0.5)
    if not line.any():  # an empty sheet (the transform needs a line to measure from)
        return np.zeros_like(alpha)
    distance = ndimage.distance_transform_edt(~line)
    return np.clip(width / 2 + 0.5 - distance, 0.0, 1.0).astype(np.float32)


def _sheet(alpha: np.ndarray, paper: np.ndarray | float = PAPER, ink: float = INK, *, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 2.0, alpha.shape)
    return np.clip(paper * (1.0 - alpha) + ink * alpha + noise, 0, 255)


def _gray(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.astype(np.uint8))


def _paper(draw: Callable[[np.ndarray], None]) -> np.ndarray:
    paper = np.full((SIDE, SIDE), PAPER, dtype=np.float32)
    draw(paper)
    return paper


def _dust(alpha: np.ndarray) -> np.ndarray:
    specked = alpha.copy()
    for y, x in ((20, 25), (372, 362), (375, 30)):
        specked[y : y + 5, x : x + 5] = np.maximum(specked[y : y + 5, x : x + 5], 0.7)
    return specked


def _frame(paper: np.ndarray) -> None:
    paper[8:16, 8:392] = paper[384:392, 8:392] = paper[8:392, 8:16] = paper[8:392, 384:392] = INK


def _desk(paper: np.ndarray) -> None:
    paper[:, :55] = 50


def _desk_two_sides(paper: np.ndarray) -> None:
    # A sheet narrower than the picture, running off its top and bottom: the desk shows left and right.
    paper[:, :55] = paper[:, -55:] = 50


def _desk_all_round(paper: np.ndarray) -> None:
    # The whole sheet photographed lying on the desk: the desk shows on every side.
    paper[:45] = paper[-45:] = paper[:, :45] = paper[:, -45:] = 50


def _ruled(paper: np.ndarray) -> None:
    paper[15::40, :] = paper[16::40, :] = 195


def _dark_ruled(paper: np.ndarray) -> None:
    paper[15::40, :] = paper[16::40, :] = 150


def _squared(paper: np.ndarray) -> None:
    paper[:, 0::25] = paper[:, 1::25] = 170
    paper[0::25, :] = paper[1::25, :] = 170


def _shadowed(pixels: np.ndarray) -> np.ndarray:
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    return np.where(rows + cols > 480, pixels * 0.6, pixels)


def _rotated(pixels: np.ndarray) -> Image.Image:
    return _gray(pixels).rotate(8, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=int(PAPER))


def _vignetted(pixels: np.ndarray) -> np.ndarray:
    # A phone's lens and a lamp off to one side: darker corners, and light falling off across the sheet.
    rows, cols = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1)
    corners = 1.0 - 0.3 * ((rows - 0.5) ** 2 + (cols - 0.5) ** 2) * 2
    return pixels * corners * (1.0 - 0.25 * cols)


def _circled(alpha: np.ndarray) -> np.ndarray:
    # A ring drawn round the digit with a pen a third of MNIST's stroke width, clear of its ink (round the middle of
    # the sheet when there is none: a ring alone is a 0).
    rows, cols = np.nonzero(alpha > 0.05)
    if rows.size:
        cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
        # The ellipse through the corners of the ink's box, then a little further out.
        ry, rx = (rows.max() - rows.min()) / 2 * 2 ** 0.5 + 12, (cols.max() - cols.min()) / 2 * 2 ** 0.5 + 12
        rx = max(rx, 0.6 * ry)  # a 1's ring is an ellipse, not a slit
    else:
        cy = cx = SIDE / 2
        ry = rx = 150.0
    ring = Image.new("L", (SIDE, SIDE), 0)
    ImageDraw.Draw(ring).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=255, width=8)
    return np.maximum(alpha, np.asarray(ring, dtype=np.float32) / 255.0)


def _pair(first: np.ndarray, second: np.ndarray, *, stacked: bool, gap: int = PAIR_GAP,
          margin: int = PAIR_GAP) -> np.ndarray:
    """Two digits' ink, each cut to its box, ``gap`` apart (overlapping when negative) with ``margin`` around them."""
    boxes = []
    for alpha in (first, second):
        rows, cols = np.nonzero(alpha > 0)
        box = alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        # Side by side, then turned back: one above the other.
        boxes.append(box.T if stacked else box)
    (h1, w1), (h2, w2) = boxes[0].shape, boxes[1].shape
    at = margin + w1 + gap
    sheet = np.zeros((max(h1, h2) + 2 * margin, max(margin + w1, at + w2) + margin), dtype=boxes[0].dtype)
    sheet[margin : margin + h1, margin : margin + w1] = boxes[0]
    # Where the two overlap, the darker ink of either shows.
    np.maximum(sheet[margin : margin + h2, at : at + w2], boxes[1], out=sheet[margin : margin + h2, at : at + w2])
    return sheet.T.copy() if stacked else sheet


def _tiny(pixels: np.ndarray, alpha: np.ndarray) -> Image.Image:
    """The digit cut out in a square tight round its ink and shrunk to TINY_SIDE pixels (small print on a screen)."""
    rows, cols = np.nonzero(alpha > 0.1)
    if not rows.size:  # an empty sheet: the square the digits are drawn in
        rows, cols = np.array([60, 339]), np.array([60, 339])
    half = (max(rows.max() - rows.min(), cols.max() - cols.min()) + 1) // 2
    middle_row, middle_col = (rows.max() + rows.min()) // 2, (cols.max() + cols.min()) // 2
    square = pixels[middle_row - half : middle_row + half + 1, middle_col - half : middle_col + half + 1]
    return _gray(square).resize((TINY_SIDE, TINY_SIDE), Image.Resampling.LANCZOS)


def _transparent_margins(pixels: np.ndarray) -> Image.Image:
    # The same rotation in an editor that leaves the uncovered corners transparent.
    rgba = _gray(pixels).convert("RGBA")
    return rgba.rotate(8, resample=Image.Resampling.BILINEAR, expand=True)


SCENES: dict[str, Callable[[np.ndarray, int], Image.Image]] = {
    "clean": lambda a, s: _gray(_sheet(a, seed=s)),
    "dust": lambda a, s: _gray(_sheet(_dust(a), seed=s)),
    "frame": lambda a, s: _gray(_sheet(a, _paper(_frame), seed=s)),
    "desk_along_an_edge": lambda a, s: _gray(_sheet(a, _paper(_desk), seed=s)),
    "sheet_on_a_desk": lambda a, s: _gray(_sheet(a, _paper(_desk_all_round), seed=s)),
    "desk_along_two_opposite_sides": lambda a, s: _gray(_sheet(a, _paper(_desk_two_sides), seed=s)),
    "dim_light": lambda a, s: _gray(_sheet(a, 115.0, 20.0, seed=s)),
    "ruled_paper": lambda a, s: _gray(_sheet(a, _paper(_ruled), seed=s)),
    "squared_paper": lambda a, s: _gray(_sheet(a, _paper(_squared), seed=s)),
    "dark_ruled_paper": lambda a, s: _gray(_sheet(a, _paper(_dark_ruled), seed=s)),
    "squared_paper_turned": lambda a, s: _gray(_sheet(a, _paper(_squared), seed=s)).rotate(
        2, resample=Image.Resampling.BILINEAR, fillcolor=int(PAPER)),
    "hard_shadow": lambda a, s: _gray(_shadowed(_sheet(a, seed=s))),
    "uneven_light": lambda a, s: _gray(_vignetted(_sheet(a, seed=s))),
    "rotated": lambda a, s: _rotated(_sheet(a, seed=s)),
    "transparent_margins": lambda a, s: _transparent_margins(_sheet(a, seed=s)),
    "chalk_on_grey": lambda a, s: _gray(_sheet(a, 150.0, 250.0, seed=s)),
    "circled": lambda a, s: _gray(_sheet(_circled(a), seed=s)),
    "ballpoint": lambda a, s: _gray(_sheet(_pen(a, 8.0), seed=s)),
    "fine_liner": lambda a, s: _gray(_sheet(_pen(a, 3.0), seed=s)),
    "tiny_tight_crop": lambda a, s: _tiny(_sheet(a, seed=s), a),
}

# A scene compared with another than the clean one: the digit itself is turned.
REFERENCES = {"rotated": "rotated", "transparent_margins": "rotated"}


def _model(path: Path | None, sha256: str | None) -> torch.nn.Module | None:
    if path is None:
        return None
    model, _ = load_checkpoint(path, expected_sha256=sha256 or hashlib.sha256(path.read_bytes()).hexdigest())
    return model


def _taken_for_several(results: list[Prepared | Exception]) -> float | None:
    if not results:
        return None
    return round(sum(isinstance(r, Prepared) and r.several_digits for r in results) / len(results), 3)


def _close_pairs(count: int) -> dict:
    """The share of pairs of MNIST test digits closer than NEAR_DIGIT (or touching) rightly taken for several.

    Digits 2k and 2k + 1 of the test set make the k-th pair, side by side and
    one above the other: drawn on the clean sheet of paper ten times MNIST's
    size, and at MNIST's own size on black.
    """
    digits = load_split(DATA_DIR, split="test").subset(2 * count).images.numpy()
    alphas = [_ink_alpha(digit) for digit in digits]
    report: dict = {"pairs": len(digits) // 2, "gaps": list(CLOSE_GAPS)}
    for arrangement, stacked in (("side_by_side", False), ("stacked", True)):
        report[arrangement] = {"paper": {}, "mnist": {}}
        for gap in CLOSE_GAPS:
            on_paper = prepare_batch(
                _gray(_sheet(_pair(alphas[i], alphas[i + 1], stacked=stacked, gap=gap * SHEET_SCALE), seed=i))
                for i in range(0, len(alphas) - 1, 2)
            )
            mnist = prepare_batch(
                Image.fromarray(_pair(digits[i], digits[i + 1], stacked=stacked, gap=gap, margin=MNIST_MARGIN))
                for i in range(0, len(digits) - 1, 2)
            )
            report[arrangement]["paper"][str(gap)] = _taken_for_several(on_paper)
            report[arrangement]["mnist"][str(gap)] = _taken_for_several(mnist)
    return report


def _singles(count: int) -> dict:
    """Which single digits are taken for several: MNIST test digits as they are, and the shipped samples."""
    digits = load_split(DATA_DIR, split="test").subset(count).images.numpy()
    results = prepare_batch(Image.fromarray(digit) for digit in digits)
    paths = sorted(path for path in SAMPLES.glob("*/*") if path.suffix != ".json")
    samples = prepare_batch(Image.open(path) for path in paths)
    return {
        "mnist_test": {
            "digits": len(digits),
            "several_digits": [i for i, r in enumerate(results) if isinstance(r, Prepared) and r.several_digits],
        },
        "samples": {
            "images": len(paths),
            "several_digits": [
                str(path.relative_to(SAMPLES)) for path, r in zip(paths, samples, strict=True)
                if isinstance(r, Prepared) and r.several_digits
            ],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="MNIST test digits per scene")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint file, for accuracy")
    parser.add_argument("--sha256", default=None, help="the checkpoint's sha256 (default: computed here)")
    parser.add_argument("--empty", type=int, default=20, help="sheets with no digit per scene")
    parser.add_argument("--close-pairs", type=int, default=100,
                        help="pairs of MNIST test digits at each gap of CLOSE_GAPS, each way and at each size")
    parser.add_argument("--singles", type=int, default=10000, help="MNIST test digits checked for several, as they are")
    args = parser.parse_args()

    test = load_split(DATA_DIR, split="test").subset(args.count)
    digits, labels = test.images.numpy(), np.asarray(test.labels.tolist())
    alphas = [_ink_alpha(digit) for digit in digits]
    model = _model(args.checkpoint, args.sha256)
    prepared = {name: prepare_batch(scene(alpha, seed) for seed, alpha in enumerate(alphas))
                for name, scene in SCENES.items()}
    inputs = {name: [r.pixels if isinstance(r, Prepared) else r for r in results] for name, results in prepared.items()}
    report = {"digits": len(digits), "checkpoint": str(args.checkpoint) if args.checkpoint else None, "scenes": {}}
    for name, outputs in inputs.items():
        reference = inputs[REFERENCES.get(name, "clean")]
        read = [i for i, out in enumerate(outputs) if not isinstance(out, Exception)]
        differences = [
            float(np.abs(outputs[i] - reference[i]).mean()) for i in read if not isinstance(reference[i], Exception)
        ]
        empty = np.zeros((SIDE, SIDE), dtype=np.float32)
        empties = prepare_batch(SCENES[name](empty, seed) for seed in range(args.empty))
        scene = {
            "refused": len(digits) - len(read),
            "empty_refused": round(sum(isinstance(out, Exception) for out in empties) / args.empty, 3)
            if args.empty
            else None,
            "same_as_clean": round(sum(d < SAME for d in differences) / len(digits), 3),
            "mean_abs_difference": round(float(np.mean(differences)), 4) if differences else None,
            "several_digits": round(
                sum(isinstance(r, Prepared) and r.several_digits for r in prepared[name] + empties)
                / (len(digits) + args.empty), 3
            ),
        }
        if model is not None and read:
            with torch.inference_mode():
                predicted = model(to_tensor(np.stack([outputs[i] for i in read]))).argmax(1).numpy()
            scene["accuracy"] = round(int((predicted == labels[read]).sum()) / len(digits), 3)
        report["scenes"][name] = scene
    report["pairs"] = {}
    for arrangement, stacked in (("side_by_side", False), ("stacked", True)):
        pairs = prepare_batch(
            _gray(_sheet(_pair(alphas[i], alphas[i + 1], stacked=stacked), seed=i))
            for i in range(0, len(alphas) - 1, 2)
        )
        report["pairs"][arrangement] = {
            "pairs": len(pairs),
            "several_digits": round(sum(isinstance(r, Prepared) and r.several_digits for r in pairs) / len(pairs), 3)
            if pairs
            else None,
        }
    report["close_pairs"] = _close_pairs(args.close_pairs)
    report["singles"] = _singles(args.singles)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

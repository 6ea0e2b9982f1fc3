"""Pictures of predictions a person can look at: the image blended with the predicted classes' colours,
with a legend of the classes present."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sfseg.data.classes import ClassProtocol

ROW = 14  # legend row height in pixels (the default bitmap font is 11 pixels high)
MIN_WIDTH = 384  # narrower images are enlarged by a whole factor to at least this width


def overlay(image: np.ndarray, pred: np.ndarray, protocol: ClassProtocol, alpha: float = 0.5) -> Image.Image:
    """``image`` (H, W, 3) uint8 blended with ``pred`` (H, W) class indices in their colours (``alpha`` of
    colour), above a legend listing each class present with its colour and share of the pixels.

    Shape:
        image (H, W, 3) uint8 and pred (H, W) -> an RGB image of width k W and height k H + legend, with
        k = 1 unless W < 384 (then the smallest whole factor reaching it).
    """
    colors = np.zeros((256, 3), np.uint8)
    colors[: protocol.num_classes] = np.asarray(protocol.colors, np.uint8)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colors[pred].astype(np.float32)
    picture = Image.fromarray(blend.round().astype(np.uint8))
    zoom = -(-MIN_WIDTH // picture.width)  # small images are shown enlarged (pixels kept sharp)
    if zoom > 1:
        picture = picture.resize((picture.width * zoom, picture.height * zoom), Image.NEAREST)
    width, height = picture.size
    present = [int(c) for c in np.unique(pred) if c < protocol.num_classes]
    shares = {c: float((pred == c).mean()) for c in present}
    present.sort(key=lambda c: -shares[c])
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(picture)
    labels = [
        f"{protocol.names[c]} " + (f"{100 * shares[c]:.0f}%" if shares[c] >= 0.005 else "<1%")
        for c in present
    ]
    col = max((int(draw.textlength(t, font=font)) for t in labels), default=0) + ROW + 8
    per_row = max(1, width // max(col, 1))
    rows = -(-len(present) // per_row)
    out = Image.new("RGB", (width, height + rows * ROW + 4), (255, 255, 255))
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, (c, text) in enumerate(zip(present, labels)):
        x, y = (k % per_row) * col + 2, height + 2 + (k // per_row) * ROW
        draw.rectangle([x, y + 1, x + ROW - 4, y + ROW - 3], fill=tuple(int(v) for v in colors[c]))
        draw.text((x + ROW, y), text, fill=(0, 0, 0), font=font)
    return out

"""The annotated image: the upload with the verdict and confidence drawn on a banner."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

from model.preprocess import decode_image

COLOURS = {"ai": (200, 30, 45), "real": (25, 135, 60), "uncertain": (190, 120, 0)}
TITLES = {"ai": "AI-generated", "real": "Human-made", "uncertain": "Uncertain"}
MIN_WIDTH = 320  # small images (CIFAKE is 32 px) are enlarged so the text stays legible
MAX_SIDE = 2048


def confidence(label: str, probability: float) -> float:
    """How sure the verdict is: P(ai) for ai, P(real) for real, the larger of the two otherwise."""
    if label == "ai":
        return probability
    if label == "real":
        return 1.0 - probability
    return max(probability, 1.0 - probability)


def annotate(data: bytes, label: str, probability: float, model_version: str) -> bytes:
    """PNG bytes: the image (upright, resized to 320-2048 px wide) under a coloured verdict banner."""
    image = decode_image(data)
    scale = max(MIN_WIDTH / image.width, 1.0) if image.width < MIN_WIDTH else min(1.0, MAX_SIDE / max(image.size))
    if scale != 1.0:
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    font_size = max(14, image.width // 22)
    font = ImageFont.load_default(size=font_size)
    small = ImageFont.load_default(size=max(10, font_size * 2 // 3))
    banner = int(font_size * 2.6)
    canvas = Image.new("RGB", (image.width, image.height + banner), COLOURS.get(label, (60, 60, 60)))
    canvas.paste(image, (0, banner))
    draw = ImageDraw.Draw(canvas)
    title = f"{TITLES.get(label, label)}  {confidence(label, probability):.0%}"
    draw.text((font_size // 2, font_size // 4), title, fill="white", font=font)
    draw.text(
        (font_size // 2, int(font_size * 1.5)),
        f"P(AI) {probability:.3f} · model {model_version}",
        fill="white",
        font=small,
    )
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=False)
    return out.getvalue()

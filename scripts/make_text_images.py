#!/usr/bin/env python3
"""Renders the text-line images used by crat-backend's PaddleOCR direction test.

    pip install pillow
    python3 scripts/make_text_images.py     # writes crates/backend/models/text_lines_48x192.gray

Output: raw 8-bit greyscale pixels, no header, LINES images of 48 rows x 192 columns each,
row-major, image after image (dark text on a white background), plus a PNG preview of the same
pixels stacked vertically (text_lines_48x192.png) for humans. The font is Pillow's built-in
default (Aileron Regular, CC0), so no system font is involved. The test feeds each image
upright and rotated by 180 degrees to the PaddleOCR text-direction classifier.
"""

import os
import sys

from PIL import Image, ImageDraw, ImageFont

HEIGHT = 48
WIDTH = 192
LINES = ["CryptoRAT node", "Hello, world 42", "ONNX inference"]
FONT_SIZE = 24


def render(text: str) -> Image.Image:
    font = ImageFont.load_default(size=FONT_SIZE)
    img = Image.new("L", (WIDTH, HEIGHT), 255)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    if right - left > WIDTH - 4:
        raise SystemExit(f"text {text!r} is {right - left} px wide; max {WIDTH - 4}")
    x = (WIDTH - (right - left)) // 2 - left
    y = (HEIGHT - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill=0, font=font)
    return img


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        root, "crates", "node", "models", "text_lines_48x192.gray"
    )
    images = [render(t) for t in LINES]
    with open(out, "wb") as f:
        for img in images:
            f.write(img.tobytes())
    sheet = Image.new("L", (WIDTH, HEIGHT * len(images)), 255)
    for i, img in enumerate(images):
        sheet.paste(img, (0, i * HEIGHT))
    sheet.save(os.path.splitext(out)[0] + ".png", optimize=True)
    print(f"wrote {out} ({os.path.getsize(out)} bytes, {len(images)} images)")


if __name__ == "__main__":
    main()

"""Draws the add-on's icon.png (128x128) and logo.png (250x100): a lightning
bolt on a green tile, and beside it the name on the logo. Run with Pillow and
the DejaVu fonts (Debian: fonts-dejavu-core):

    python3 deploy/homeassistant/tools/make-images.py

Drawn at 4x and scaled down, for smooth edges.
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

GREEN = (30, 127, 92, 255)
DARK = (30, 58, 52, 255)
WHITE = (255, 255, 255, 255)
SCALE = 4
ADDON = Path(__file__).resolve().parent.parent / "addon" / "joulo_gateway"
FONTS = Path("/usr/share/fonts/truetype/dejavu")


def tile(draw, x, y, size):
    """The green tile with the bolt, its top-left corner at (x, y)."""
    draw.rounded_rectangle((x, y, x + size, y + size), radius=size // 5, fill=GREEN)
    bolt = [(0.56, 0.10), (0.24, 0.54), (0.46, 0.54), (0.38, 0.90), (0.74, 0.40), (0.52, 0.40), (0.64, 0.10)]
    draw.polygon([(x + px * size, y + py * size) for px, py in bolt], fill=WHITE)


def icon():
    size = 128 * SCALE
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    tile(ImageDraw.Draw(image), 4 * SCALE, 4 * SCALE, 120 * SCALE)
    image.resize((128, 128), Image.LANCZOS).save(ADDON / "icon.png", optimize=True)


def logo():
    width, height = 250 * SCALE, 100 * SCALE
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    tile(draw, 4 * SCALE, 10 * SCALE, 80 * SCALE)
    bold = ImageFont.truetype(str(FONTS / "DejaVuSans-Bold.ttf"), 34 * SCALE)
    plain = ImageFont.truetype(str(FONTS / "DejaVuSans.ttf"), 26 * SCALE)
    draw.text((96 * SCALE, 14 * SCALE), "joulo", font=bold, fill=DARK)
    draw.text((96 * SCALE, 56 * SCALE), "gateway", font=plain, fill=GREEN)
    image.resize((250, 100), Image.LANCZOS).save(ADDON / "logo.png", optimize=True)


if __name__ == "__main__":
    icon()
    logo()

"""Deterministic drawn stand-ins for the judge's three pictures, at the judge's sizes.

The contest's demo_images: cat.png 1024 x 768 and man.png 512 x 512 (the two prompts), and
wash_dog.png 277 x 182 (the Qwen2-VL and Janus scripts' warm-up). With Qwen2-VL's real processor
limits these give 74 x 54, 36 x 36 and 20 x 14 patch grids: 999, 324 and 70 image tokens. Janus's
processor resizes any image to 384 x 384, so only its resize and decode costs depend on the size.
Each picture is drawn on a small canvas and scaled to its size.
"""
import os

from PIL import Image, ImageDraw

CAT_SIZE = (1024, 768)
MAN_SIZE = (512, 512)
WARMUP_SIZE = (277, 182)
_CAT_CANVAS = (448, 336)
_MAN_CANVAS = (336, 448)
_DOG_CANVAS = (277, 182)


def _gradient(size, top, bottom):
    """A vertical two-colour gradient, so the picture is not flat."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(height - 1, 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom))
        draw.line([(0, y), (width - 1, y)], fill=colour)
    return image, draw


def cat_image():
    """An orange cat's face on a blue-green background."""
    image, draw = _gradient(_CAT_CANVAS, (70, 130, 180), (60, 160, 90))
    cx, cy = 224, 180
    draw.polygon([(cx - 110, cy - 40), (cx - 80, cy - 150), (cx - 20, cy - 80)], fill=(230, 140, 40))
    draw.polygon([(cx + 110, cy - 40), (cx + 80, cy - 150), (cx + 20, cy - 80)], fill=(230, 140, 40))
    draw.ellipse([cx - 120, cy - 100, cx + 120, cy + 120], fill=(240, 150, 50), outline=(90, 50, 20), width=4)
    for ex in (cx - 50, cx + 50):
        draw.ellipse([ex - 22, cy - 30, ex + 22, cy + 10], fill=(120, 200, 80))
        draw.ellipse([ex - 6, cy - 28, ex + 6, cy + 8], fill=(10, 10, 10))
    draw.polygon([(cx - 14, cy + 30), (cx + 14, cy + 30), (cx, cy + 46)], fill=(240, 120, 140))
    for side in (-1, 1):
        for dy in (-10, 5, 20):
            draw.line([(cx + side * 30, cy + 45), (cx + side * 140, cy + 45 + dy)], fill=(250, 250, 250), width=2)
    draw.arc([cx - 30, cy + 40, cx, cy + 70], 0, 180, fill=(90, 50, 20), width=3)
    draw.arc([cx, cy + 40, cx + 30, cy + 70], 0, 180, fill=(90, 50, 20), width=3)
    return image.resize(CAT_SIZE, Image.BICUBIC)


def man_image():
    """A man's head and shoulders in a shirt and tie against a wall."""
    image, draw = _gradient(_MAN_CANVAS, (235, 225, 200), (180, 170, 150))
    cx = 168
    draw.rectangle([cx - 140, 330, cx + 140, 448], fill=(40, 70, 140))
    draw.polygon([(cx - 30, 330), (cx + 30, 330), (cx, 380)], fill=(250, 250, 250))
    draw.polygon([(cx - 10, 340), (cx + 10, 340), (cx + 14, 430), (cx, 445), (cx - 14, 430)], fill=(170, 30, 40))
    draw.rectangle([cx - 28, 270, cx + 28, 335], fill=(225, 180, 150))
    draw.ellipse([cx - 85, 110, cx + 85, 300], fill=(230, 185, 155), outline=(120, 80, 60), width=3)
    draw.chord([cx - 90, 90, cx + 90, 210], 180, 360, fill=(60, 40, 25))
    for ex in (cx - 35, cx + 35):
        draw.ellipse([ex - 14, 190, ex + 14, 206], fill=(255, 255, 255))
        draw.ellipse([ex - 6, 192, ex + 6, 204], fill=(60, 40, 20))
        draw.line([(ex - 18, 176), (ex + 18, 172)], fill=(60, 40, 25), width=4)
    draw.line([(cx, 205), (cx - 8, 240), (cx + 6, 242)], fill=(150, 100, 80), width=3)
    draw.arc([cx - 35, 240, cx + 35, 275], 20, 160, fill=(140, 60, 60), width=4)
    return image.resize(MAN_SIZE, Image.BICUBIC)


def warmup_image():
    """A brown dog in a blue tub of suds (the warm-up picture)."""
    image, draw = _gradient(_DOG_CANVAS, (200, 225, 240), (150, 190, 215))
    draw.rectangle([40, 110, 237, 175], fill=(60, 110, 190), outline=(30, 60, 120), width=3)
    draw.ellipse([80, 55, 200, 125], fill=(150, 95, 50))
    draw.ellipse([170, 35, 235, 95], fill=(160, 105, 60))
    draw.polygon([(178, 45), (168, 85), (190, 70)], fill=(100, 60, 30))
    draw.ellipse([205, 55, 213, 63], fill=(20, 20, 20))
    draw.ellipse([226, 68, 236, 76], fill=(30, 20, 20))
    for x, y, r in ((60, 105, 14), (95, 100, 18), (135, 104, 16), (175, 101, 15), (215, 106, 13)):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(245, 248, 252), outline=(210, 220, 235))
    return image


DEMO_IMAGES = {"cat": cat_image, "man": man_image, "warmup": warmup_image}


def write_demo_images(out_dir):
    """Save every demo image as PNG under out_dir; returns name -> path."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, draw_image in DEMO_IMAGES.items():
        path = os.path.join(out_dir, f"{name}.png")
        draw_image().save(path, format="PNG")
        paths[name] = path
    return paths

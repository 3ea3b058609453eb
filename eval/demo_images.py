"""Deterministic drawn stand-ins for the judge's two photos: a cat and a man.

Sizes are chosen with the Qwen2-VL fixture's processor in mind: both are multiples of 28, so the
image processor keeps them as they are (448 x 336 gives a 32 x 24 patch grid, 768 patches, 192
merged image tokens), a realistic but CPU-affordable load for a 32-block vision tower.
"""
import os

from PIL import Image, ImageDraw

CAT_SIZE = (448, 336)
MAN_SIZE = (336, 448)


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
    image, draw = _gradient(CAT_SIZE, (70, 130, 180), (60, 160, 90))
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
    return image


def man_image():
    """A man's head and shoulders in a shirt and tie against a wall."""
    image, draw = _gradient(MAN_SIZE, (235, 225, 200), (180, 170, 150))
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
    return image


DEMO_IMAGES = {"cat": cat_image, "man": man_image}


def write_demo_images(out_dir):
    """Save every demo image as PNG under out_dir; returns name -> path."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, draw_image in DEMO_IMAGES.items():
        path = os.path.join(out_dir, f"{name}.png")
        draw_image().save(path, format="PNG")
        paths[name] = path
    return paths

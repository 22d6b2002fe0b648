"""A fixed set of mouse-style drawings of common things, and which demo emojis count as right for each.

Each doodle is drawn as the page's canvas draws (``service/static/app.js``): a 448 x 448 white
canvas, black strokes with a 14 px round pen (round caps and joins). Shapes are written as strokes:
polylines of points, circles and arcs (approximated by polylines, as a hand moves). Relevance is a
regular expression over the OpenMoji annotation (``manifest.csv`` metadata), chosen by hand for each
drawing; a doodle's concept is *unseen* when most of its relevant emojis are in unseen subgroups.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

CANVAS = 448
PEN = 14
Point = tuple[float, float]


@dataclass(frozen=True)
class Doodle:
    name: str
    strokes: tuple[tuple[Point, ...], ...]
    relevant: str  # regex over the OpenMoji annotation, case-insensitive

    def matches(self, annotation: str) -> bool:
        return re.search(self.relevant, annotation, flags=re.IGNORECASE) is not None


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, steps: int = 40) -> tuple[Point, ...]:
    """Points of an elliptic arc, angles in degrees (0 = right, 90 = down, as on a canvas)."""
    return tuple(
        (cx + rx * math.cos(math.radians(start + (end - start) * i / steps)),
         cy + ry * math.sin(math.radians(start + (end - start) * i / steps)))
        for i in range(steps + 1)
    )


def circle(cx: float, cy: float, r: float) -> tuple[Point, ...]:
    return arc(cx, cy, r, r, 0, 360, 60)


def dot(x: float, y: float) -> tuple[Point, ...]:
    return ((x, y), (x + 1, y + 1))


def star(cx: float, cy: float, outer: float, inner: float) -> tuple[Point, ...]:
    points = []
    for i in range(11):
        radius = outer if i % 2 == 0 else inner
        angle = math.radians(-90 + 36 * i)
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return tuple(points)


def render(doodle: Doodle, size: int = CANVAS, pen: int = PEN) -> Image.Image:
    """The doodle as the page would upload it: RGB, white background, round-pen black strokes."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    scale = size / CANVAS
    width = max(1, round(pen * scale))
    for stroke in doodle.strokes:
        points = [(x * scale, y * scale) for x, y in stroke]
        draw.line(points, fill="black", width=width, joint="curve")
        for x, y in points:  # round caps and joins: a disc at every point, as lineCap = "round" draws
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill="black")
    return image


def _doodles() -> tuple[Doodle, ...]:
    face = circle(224, 224, 150)
    return (
        Doodle("smiling face", (face, dot(170, 180), dot(278, 180), arc(224, 240, 80, 60, 20, 160)),
               r"smiling face|grinning|beaming"),
        Doodle("sad face", (face, dot(170, 180), dot(278, 180), arc(224, 330, 70, 50, 200, 340)),
               r"frowning|sad|disappointed|worried|pensive|crying"),
        Doodle("heart", (((224, 360), (110, 250), *arc(165, 170, 65, 65, 150, 330, 20)[1:],
                          *arc(283, 170, 65, 65, 210, 390, 20), (338, 250), (224, 360)),), r"\bheart"),
        Doodle("star", (star(224, 230, 170, 70),), r"\bstar\b|glowing star"),
        Doodle("sun", (circle(224, 224, 70),
                       *(((224 + 95 * math.cos(a), 224 + 95 * math.sin(a)),
                          (224 + 150 * math.cos(a), 224 + 150 * math.sin(a)))
                         for a in (math.radians(45 * i) for i in range(8)))), r"\bsun\b|sunny"),
        Doodle("crescent moon", (arc(224, 224, 150, 150, 60, 300) + arc(270, 224, 110, 130, 250, 110),),
               r"crescent moon|moon"),
        Doodle("house", (((90, 220), (224, 90), (358, 220)), ((120, 200), (120, 380), (328, 380), (328, 200)),
                         ((195, 380), (195, 290), (253, 290), (253, 380))), r"\bhouse\b|\bhome\b"),
        Doodle("tree", (((205, 400), (205, 280)), ((243, 400), (243, 280)), circle(224, 180, 110)),
               r"\btree\b"),
        Doodle("car", (((60, 300), (60, 240), (120, 230), (160, 160), (300, 160), (340, 230), (390, 240),
                        (390, 300), (60, 300)), circle(130, 310, 35), circle(320, 310, 35)),
               r"automobile|\bcar\b|taxi|sport utility"),
        Doodle("cup", (((120, 150), (140, 370), (290, 370), (310, 150), (120, 150)),
                       arc(320, 250, 50, 55, -80, 80)), r"\bcup\b|mug|teacup|hot beverage|coffee"),
        Doodle("key", (circle(130, 224, 60), ((190, 224), (390, 224)), ((340, 224), (340, 270)),
                       ((380, 224), (380, 280))), r"\bkey\b"),
        Doodle("clock", (circle(224, 224, 160), ((224, 224), (224, 110)), ((224, 224), (300, 260))),
               r"o’clock|thirty|alarm clock|mantelpiece clock|stopwatch"),
        Doodle("umbrella", (arc(224, 230, 170, 130, 180, 360), ((54, 230), (394, 230)), ((224, 230), (224, 380)),
                            arc(194, 380, 30, 30, 0, 180)), r"umbrella"),
        Doodle("fish", (arc(200, 224, 130, 75, 20, 340), ((322, 198), (400, 150), (400, 300), (322, 250)),
                        dot(140, 205)), r"\bfish\b|tropical fish|blowfish"),
        Doodle("cat face", (circle(224, 240, 140), ((110, 160), (120, 60), (190, 110)),
                            ((258, 110), (328, 60), (338, 160)), dot(175, 220), dot(273, 220),
                            ((60, 260), (170, 270)), ((278, 270), (390, 260))), r"\bcat\b"),
        Doodle("flower", (circle(224, 170, 35),
                          *(arc(224 + 75 * math.cos(math.radians(72 * i)), 170 + 75 * math.sin(math.radians(72 * i)),
                                40, 40, 0, 360, 30) for i in range(5)),
                          ((224, 250), (224, 420)), ((224, 350), (290, 310))),
             r"flower|blossom|tulip|rose\b|sunflower|hibiscus|daisy"),
        Doodle("apple", (arc(224, 250, 140, 150, -70, 250), ((224, 110), (250, 50)), arc(280, 80, 40, 20, 150, 390)),
               r"\bapple\b"),
        Doodle("cloud", (((100, 300), *arc(130, 250, 50, 50, 90, 270, 20)[1:], *arc(220, 180, 80, 80, 180, 360, 20),
                          *arc(320, 240, 60, 60, 270, 450, 20), (100, 300)),), r"\bcloud\b"),
        Doodle("lightning", (((260, 40), (150, 240), (240, 240), (180, 410), (320, 190), (230, 190), (300, 40),
                              (260, 40)),), r"high voltage|lightning"),
        Doodle("right arrow", (((60, 224), (380, 224)), ((280, 124), (380, 224), (280, 324))),
               r"right arrow|rightwards"),
        Doodle("check mark", (((80, 230), (180, 340), (380, 100)),), r"check mark"),
        Doodle("cross mark", (((90, 90), (358, 358)), ((358, 90), (90, 358))), r"cross mark|multiply|multiplication"),
        Doodle("envelope", (((60, 120), (388, 120), (388, 330), (60, 330), (60, 120)), ((60, 120), (224, 240), (388, 120))),
               r"envelope|e-mail"),
        Doodle("bell", (arc(224, 200, 100, 110, 180, 360) + ((324, 200), (340, 320), (108, 320), (124, 200)),
                        circle(224, 350, 25), ((224, 90), (224, 60))), r"\bbell\b"),
        Doodle("balloon", (arc(224, 170, 100, 125, 0, 360), ((224, 295), (210, 330), (240, 370), (215, 420))),
               r"balloon"),
        Doodle("music note", (arc(170, 330, 50, 38, 0, 360), ((220, 330), (220, 90), (320, 130), (320, 180))),
               r"musical note|musical notes"),
        Doodle("glasses", (circle(130, 230, 70), circle(318, 230, 70), ((200, 230), (248, 230)),
                           ((60, 220), (30, 180)), ((388, 220), (418, 180))), r"glasses|sunglasses"),
        Doodle("light bulb", (arc(224, 180, 100, 110, 140, 400) + ((300, 250), (270, 320), (178, 320), (148, 250)),
                              ((180, 350), (268, 350)), ((190, 380), (258, 380))), r"light bulb"),
        Doodle("pencil", (((80, 370), (110, 290), (330, 70), (380, 120), (160, 340), (80, 370)), ((300, 100), (350, 150))),
               r"pencil"),
        Doodle("ice cream", (((150, 200), (224, 410), (298, 200)), arc(224, 190, 80, 80, 180, 360),
                             ((144, 200), (304, 200))), r"ice cream|soft ice cream"),
        Doodle("gem", (((120, 160), (180, 100), (268, 100), (328, 160), (224, 380), (120, 160)), ((120, 160), (328, 160))),
               r"gem stone|diamond"),
        Doodle("sailboat", (((80, 320), (368, 320), (320, 380), (128, 380), (80, 320)), ((224, 320), (224, 60)),
                            ((224, 80), (340, 290), (224, 290))), r"sailboat|\bboat\b|canoe|ship|speedboat"),
        Doodle("snowman", (circle(224, 300, 100), circle(224, 140, 65), dot(200, 125), dot(248, 125)), r"snowman"),
        Doodle("mushroom", (arc(224, 220, 150, 120, 180, 360) + ((74, 220), (374, 220)),
                            ((180, 220), (175, 380), (273, 380), (268, 220))), r"mushroom"),
    )


DOODLES: tuple[Doodle, ...] = _doodles()


def relevant_ids(doodle: Doodle, annotations: Sequence[str]) -> list[int]:
    """Positions of the gallery items whose annotation matches the doodle."""
    return [index for index, text in enumerate(annotations) if doodle.matches(text)]

"""Fonts for plots whose labels are class names in any script: never silent boxes.

`configure_fonts(texts)` checks which characters matplotlib's default font lacks, finds an installed font with those
glyphs (CJK fonts first), and adds it as a fallback after the default; when no installed font has them it prints one
warning line naming the Debian package to install.
"""

from __future__ import annotations

import functools
import logging
import sys
import unicodedata

import matplotlib
from matplotlib import font_manager
from matplotlib.ft2font import FT2Font

# Preferred fonts for Chinese/Japanese/Korean class names, best first.
CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "Noto Serif CJK SC",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Hiragino Sans GB",
    "Arial Unicode MS",
)
_EXCLUDED_PREFIXES = ("Last Resort",)  # matplotlib's box-drawing fallback: "covers" everything with boxes
_CJK_PACKAGE = "fonts-noto-cjk"  # Debian; `fonts-wqy-zenhei` is a smaller alternative
_OTHER_PACKAGE = "fonts-noto-core"
_warned: set[str] = set()


@functools.lru_cache(maxsize=256)
def _font(path: str) -> FT2Font | None:
    try:
        return FT2Font(path)
    except (OSError, RuntimeError, ValueError):
        return None


def missing_glyphs(path: str, chars: str) -> str:
    """The characters of `chars` that the font file at `path` has no glyph for."""
    font = _font(path)
    if font is None:
        return chars
    return "".join(c for c in chars if font.get_char_index(ord(c)) == 0)


def _is_cjk(char: str) -> bool:
    name = unicodedata.name(char, "")
    return any(key in name for key in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO", "IDEOGRAPH"))


def _default_font_path() -> str:
    props = font_manager.FontProperties(family=matplotlib.rcParams["font.family"])
    return font_manager.findfont(props, fallback_to_default=True)


def _candidates() -> list[tuple[str, str]]:
    """(family, file) of installed fonts, preferred CJK families first; includes fonts added since the cache."""
    manager = font_manager.fontManager
    known = {entry.fname for entry in manager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known and path.lower().endswith((".ttf", ".otf", ".ttc")):
            try:
                manager.addfont(path)  # installed after matplotlib built its font cache
            except (OSError, RuntimeError, ValueError):
                pass
    entries = {}
    for entry in manager.ttflist:
        if not entry.name.startswith(_EXCLUDED_PREFIXES):
            entries.setdefault(entry.name, entry.fname)
    rank = {name: i for i, name in enumerate(CJK_FAMILIES)}
    return sorted(entries.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def configure_fonts(texts: list[str]) -> str | None:
    """Make matplotlib able to draw `texts`; returns the fallback font family added, or None if none was needed
    (or none is installed, in which case one warning line says which package to install)."""
    chars = "".join(sorted({c for text in texts for c in str(text) if not c.isspace() and c.isprintable()}))
    missing = missing_glyphs(_default_font_path(), chars)
    if not missing:
        return None
    for family, path in _candidates():
        if not missing_glyphs(path, missing):
            # Fallback after the current family: Latin keeps its look, the missing glyphs come from `family`.
            # (A generic family like "sans-serif" only contributes its first font to matplotlib's fallback chain.)
            current = [f for f in matplotlib.rcParams["font.family"] if f != family]
            matplotlib.rcParams["font.family"] = [*current, family]
            # CJK fonts often have no "normal" weight; matplotlib would log a findfont warning for every plot.
            logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
            return family
    package = _CJK_PACKAGE if any(map(_is_cjk, missing)) else _OTHER_PACKAGE
    _warn_once(
        f"no installed font has glyphs for {missing[:20]!r} in the class names; plots will show boxes. "
        f"Install one, e.g. `apt-get install {package}`"
    )
    return None

from __future__ import annotations

import matplotlib
import pytest
from matplotlib import font_manager

from resnetlab.report import fonts

CJK_TEXT = ["纸板", "玻璃", "塑料"]


def _cjk_font_path() -> str | None:
    for _family, path in fonts._candidates():
        if not fonts.missing_glyphs(path, "".join(CJK_TEXT)):
            return path
    return None


@pytest.fixture
def restore_rc():
    with matplotlib.rc_context():
        yield


def test_latin_needs_nothing(restore_rc):
    assert fonts.configure_fonts(["cardboard", "glass"]) is None


def test_cjk_font_chosen_has_the_glyphs(restore_rc):
    if _cjk_font_path() is None:
        pytest.skip("no CJK font installed (apt-get install fonts-noto-cjk or fonts-wqy-zenhei)")
    family = fonts.configure_fonts(CJK_TEXT)
    assert family is not None and family in matplotlib.rcParams["font.family"]
    path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    assert fonts.missing_glyphs(path, "".join(CJK_TEXT)) == ""


def test_no_font_warns_with_package(restore_rc, monkeypatch, capsys):
    monkeypatch.setattr(fonts, "_candidates", lambda: [])
    monkeypatch.setattr(fonts, "_warned", set())
    assert fonts.configure_fonts(CJK_TEXT) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fonts-noto-cjk" in err


def test_cjk_title_renders_without_missing_glyphs(restore_rc, recwarn):
    if _cjk_font_path() is None:
        pytest.skip("no CJK font installed (apt-get install fonts-noto-cjk or fonts-wqy-zenhei)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fonts.configure_fonts(CJK_TEXT)
    fig = Figure(figsize=(2, 1))
    FigureCanvasAgg(fig).draw()
    fig.suptitle(" ".join(CJK_TEXT))
    fig.canvas.draw()
    assert not [w for w in recwarn if "missing from font" in str(w.message)]

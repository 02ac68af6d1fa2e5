"""Build the demo sample shipped in `demo/trashnet-mini/` from the full TrashNet copy in `../shared`.

    python scripts/make_demo_data.py [--per-class 120] [--size 160] [--quality 85]

Takes the first N photos per class in sorted order after a seeded shuffle (so the sample is reproducible), re-saves
them smaller as JPEG, and copies the MIT licence with attribution. The result must stay under 10 MB.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

from PIL import Image

from resnetlab.paths import REPO_ROOT, shared_path

ATTRIBUTION = """\
Sample of TrashNet (Gary Thung and Mindy Yang, 2017, https://github.com/garythung/trashnet), MIT licence (see
LICENSE.trashnet). Photos re-saved at {size} px on the long side, JPEG quality {quality}, {per_class} per class (fewer
where a class has fewer), chosen with `scripts/make_demo_data.py --per-class {per_class} --seed {seed}`.
"""


def build(out: Path, per_class: int, size: int, quality: int, seed: int) -> int:
    src = shared_path("datasets", "trashnet")
    if out.exists():
        shutil.rmtree(out)
    total = 0
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.jpg"))
        random.Random(seed).shuffle(files)
        dest = out / class_dir.name
        dest.mkdir(parents=True)
        for f in files[:per_class]:
            with Image.open(f) as im:
                im = im.convert("RGB")
                im.thumbnail((size, size), Image.Resampling.BICUBIC)
                im.save(dest / f.name, "JPEG", quality=quality, optimize=True)
            total += 1
    shutil.copy(shared_path("datasets", "trashnet-meta", "LICENSE.trashnet"), out / "LICENSE.trashnet")
    (out / "README.md").write_text(ATTRIBUTION.format(size=size, quality=quality, per_class=per_class, seed=seed))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--size", type=int, default=160, help="long side in pixels")
    parser.add_argument("--quality", type=int, default=85)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo" / "trashnet-mini")
    a = parser.parse_args()
    n = build(a.out, a.per_class, a.size, a.quality, a.seed)
    size_mb = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file()) / 1e6
    print(f"wrote {n} images to {a.out} ({size_mb:.1f} MB)")
    if size_mb > 10:
        raise SystemExit("demo sample is over 10 MB: lower --per-class, --size or --quality")


if __name__ == "__main__":
    main()

"""Copy an image folder with every photo downscaled to a short side of N px (JPEG), to carry it where space is short.

Used to take TrashNet (58 MB) to a lent GPU machine, whose tool carries 64 MiB with the repo: at 256 px and quality 88
the 2,527 photos take 38 MiB. Training there at 96-224 px sees the same crops as from the originals, save the
resampling; accuracy and speed figures from such a copy are labelled as such in benchmarks/RESULTS.md.

    .venv/bin/python scripts/shrink_dataset.py ../shared/datasets/trashnet .gpudata/trashnet --short-side 256
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image


def shrink(src: Path, dest: Path, short_side: int, quality: int) -> int:
    """Writes `src` to `dest` as a JPEG whose shorter side is at most `short_side`; returns the bytes written."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        scale = short_side / min(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        dest.parent.mkdir(parents=True, exist_ok=True)
        im.save(dest, "JPEG", quality=quality)
    return dest.stat().st_size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--quality", type=int, default=88)
    args = p.parse_args(argv)
    from resnetlab.data.folder import scan_images

    jobs = [
        (path, args.dest / cls.name / (path.stem + ".jpg"))
        for cls in sorted(d for d in args.src.iterdir() if d.is_dir())
        for path in scan_images(cls)
    ]
    with ProcessPoolExecutor() as pool:
        sizes = list(pool.map(shrink, *zip(*jobs), [args.short_side] * len(jobs), [args.quality] * len(jobs)))
    print(f"{len(sizes)} images, {sum(sizes) / 2**20:.1f} MiB in {args.dest}")


if __name__ == "__main__":
    main()

"""Fast, crash-proof loading: reduced-size JPEG decoding, a shared RAM cache of pre-resized uint8 images, and a
DataLoader configured for the machine.

The RAM cache is one uint8 buffer in shared memory, laid out from image headers before anything is decoded (so its
size is known, and refused above a budget, up front). Whichever process decodes an image first (the main process or
any DataLoader worker) writes it there and flags it, so every later epoch, in every worker, reads pixels only.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from resnetlab.data.images import ImageError, open_image, probe_image
from resnetlab.errors import ResnetlabError

log = logging.getLogger(__name__)

CACHE_CHOICES = (None, "none", "ram")
DEFAULT_BUDGET_FRACTION = 0.5  # of available RAM; env RESNETLAB_CACHE_BUDGET (bytes, or e.g. "8G") overrides
_EMPTY, _FILLED, _FAILED = 0, 1, 2
_PIL_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def available_memory() -> int:
    """Bytes of RAM available to new allocations (Linux MemAvailable; total RAM elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_bytes(text: str | int) -> int:
    """`12345`, `512M`, `8G` -> bytes."""
    text = str(text).strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * _UNITS[text[-1]]) if text[-1:] in _UNITS else int(text)
    except ValueError:
        raise ResnetlabError(f"cache budget {text!r}: expected bytes, e.g. 4000000000 or 4G") from None


def cache_budget(budget: int | str | None = None) -> int:
    """The RAM cache limit of this process: `budget`, else env RESNETLAB_CACHE_BUDGET, else half the available
    memory shared among the processes torchrun started on this machine (each caches the whole dataset: its shard of
    the training set changes every epoch), so that together they stay within that half."""
    if budget is None:
        budget = os.environ.get("RESNETLAB_CACHE_BUDGET")
    if budget is not None:
        return parse_bytes(budget)
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return int(available_memory() * DEFAULT_BUDGET_FRACTION / local_processes)


def resized_shape(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(w, h) with the short side scaled down to `short_side` (never up); same rounding as torchvision's Resize."""
    if not short_side or min(width, height) <= short_side:
        return width, height
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def _shm_free() -> int:
    try:
        st = os.statvfs("/dev/shm")
        return st.f_bavail * st.f_frsize
    except OSError:
        return 0


class RamCache:
    """Decoded (H, W, 3) uint8 images in one buffer; `state[i]` is empty, filled or failed. Shared when possible."""

    def __init__(self, shapes: Sequence[tuple[int, int] | None]) -> None:
        sizes = [s[0] * s[1] * 3 if s else 0 for s in shapes]
        self.shapes = [tuple(s) if s else None for s in shapes]  # (w, h)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.nbytes = int(self.offsets[-1])
        self.buffer = torch.empty(self.nbytes, dtype=torch.uint8)
        self.state = torch.tensor([_EMPTY if s else _FAILED for s in shapes], dtype=torch.uint8)
        # Shared memory makes worker writes visible to every process; without room in /dev/shm (small Docker
        # default) the buffer stays private and `build_loader` fills it in the main process before forking.
        self.shared = self.nbytes < 0.9 * _shm_free()
        if self.shared:
            self.buffer.share_memory_()
            self.state.share_memory_()

    def __len__(self) -> int:
        return len(self.shapes)

    def get(self, i: int) -> torch.Tensor:
        """A (3, H, W) uint8 view (channels-last in memory, which torchvision's uint8 resize prefers)."""
        w, h = self.shapes[i]
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].view(h, w, 3).permute(2, 0, 1)

    def put(self, i: int, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """Store a PIL image or an (H, W, 3) uint8 tensor; returns the cached (3, H, W) view."""
        w, h = self.shapes[i]
        target = self.buffer[self.offsets[i] : self.offsets[i + 1]].numpy().reshape(h, w, 3)
        np.copyto(target, image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.uint8))
        self.state[i] = _FILLED  # after the pixels: readers in other processes never see a half-written image
        return self.get(i)

    @property
    def complete(self) -> bool:
        return bool((self.state != _EMPTY).all())


class ImageDataset(Dataset):
    """(path, label) samples -> (transform(image), label). Unreadable files are reported once and replaced by the
    next readable one, or, with `substitute=False` (validation: a copy would count one image twice and drop the
    class of the bad one), left out: the sample is None and `collate_uint8` drops it from its batch.

    `cache="ram"` keeps every decoded image, pre-resized to the transform's `decode_size` short side, in shared
    memory; `decode_size` (default: the transform's) also drives reduced-size JPEG decoding. A deterministic uint8
    transform (one with `cache_output`, the eval preset) is cached after the transform instead: smaller, and warm
    epochs only copy pixels.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | os.PathLike, int]],
        transform: Callable | None = None,
        cache: str | None = None,
        decode_size: int | None = None,
        cache_budget_bytes: int | str | None = None,
        substitute: bool = True,
    ) -> None:
        if cache not in CACHE_CHOICES:
            raise ResnetlabError(f"--cache {cache}: choose none or ram")
        self.samples = [(Path(p), int(label)) for p, label in samples]
        if not self.samples:
            raise ResnetlabError("no images to load (empty split)")
        self.transform = transform
        self.substitute = substitute
        self.decode_size = decode_size or getattr(transform, "decode_size", None)
        self.resample = _PIL_RESAMPLE.get(getattr(transform, "resize_interpolation", "bilinear"), Image.BILINEAR)
        self.decode_count = 0  # decodes done in this process (tests, benchmarks)
        output = getattr(transform, "cache_output", None) if cache == "ram" else None
        self.output_shape = (int(output[1]), int(output[0])) if output else None  # (w, h) of cached outputs
        self.bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()
        self.cache = self._make_cache(cache_budget_bytes) if cache == "ram" else None

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _make_cache(self, budget: int | str | None) -> RamCache:
        shapes = []
        for path, _ in self.samples:
            size, _reason = probe_image(path)  # failures are reported when first read
            if size and self.output_shape:
                shapes.append(self.output_shape)
            else:
                shapes.append(resized_shape(*size, self.decode_size) if size else None)
        need = sum(w * h * 3 for w, h in filter(None, shapes))
        limit = cache_budget(budget)
        if need > limit:
            raise ResnetlabError(
                f"--cache ram needs {need / 2**30:.1f} GiB for {len(shapes)} images at short side {self.decode_size}, "
                f"over the budget of {limit / 2**30:.1f} GiB (half the available RAM); use --cache none, a smaller "
                "--img-size, or set RESNETLAB_CACHE_BUDGET"
            )
        return RamCache(shapes)

    def estimate_cache_bytes(self) -> int:
        return self.cache.nbytes if self.cache else 0

    def _decode(self, i: int) -> Image.Image | torch.Tensor:
        """The image for sample i: from the cache, or decoded (and cached). Raises ImageError."""
        cache = self.cache
        if cache is not None:
            state = int(cache.state[i])
            if state == _FILLED:
                return cache.get(i)
            if state == _FAILED:  # failed the header check: decoding raises the reason
                image = open_image(self.samples[i][0])
                return self.transform(image) if self.output_shape else image
        self.decode_count += 1
        image = open_image(self.samples[i][0], draft_size=self.decode_size)
        if cache is None:
            return image
        if self.output_shape:  # the transform's own output is what gets cached
            return cache.put(i, self.transform(image).permute(1, 2, 0))
        w, h = cache.shapes[i]
        if image.size != (w, h):
            image = image.resize((w, h), self.resample)
        return cache.put(i, image)

    def _report(self, i: int, exc: ImageError) -> None:
        if not bool(self.bad[i]):
            self.bad[i] = True
            instead = "using another image in its place" if self.substitute else "left out"
            log.warning("warning: %s; %s", exc, instead)

    def __getitem__(self, index: int):
        n = len(self.samples)
        for step in range(n if self.substitute else 1):
            i = (index + step) % n
            if bool(self.bad[i]):  # known bad (in any process): never decoded again
                continue
            try:
                image = self._decode(i)
            except ImageError as exc:
                if self.cache is not None:
                    self.cache.state[i] = _FAILED
                self._report(i, exc)
                continue
            if self.transform is not None and not self.output_shape:
                image = self.transform(image)
            return image, self.samples[i][1]
        if not self.substitute:
            return None
        raise ResnetlabError(f"none of the {n} images could be decoded")

    def _fill(self, i: int) -> None:
        try:
            self._decode(i)
        except ImageError as exc:
            self.cache.state[i] = _FAILED
            self._report(i, exc)

    def warm_cache(self, num_workers: int | None = None) -> int:
        """Decode every not-yet-cached image; returns how many.

        A shared cache is filled by worker processes (each writes its images straight into shared memory); a
        private one by threads. Measured on 2 cores, TrashNet eval crops at 224: 1,089 img/s with 2 processes
        against 757 img/s with 2 threads, which the GIL (transforms, EXIF handling) holds back.
        """
        if self.cache is None:
            return 0
        todo = [i for i in range(len(self)) if int(self.cache.state[i]) == _EMPTY]
        workers = min(num_workers or default_workers(), max(1, len(todo) // 16))
        if self.cache.shared and workers > 1:
            chunks = _FillChunks(self, [todo[k : k + 32] for k in range(0, len(todo), 32)])
            for _ in DataLoader(chunks, batch_size=None, num_workers=workers):
                pass
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(self._fill, todo))
        return len(todo)


class _FillChunks(Dataset):
    """Chunks of sample indices; loading chunk k decodes those images into the dataset's shared cache."""

    def __init__(self, dataset: ImageDataset, chunks: list[list[int]]) -> None:
        self.dataset, self.chunks = dataset, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> int:
        for i in self.chunks[k]:
            self.dataset._fill(i)
        return len(self.chunks[k])


def usable_cpus() -> int:
    """CPUs this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers() -> int:
    """CPUs this process may use, capped at 4: more rarely helps image decoding keep up."""
    return min(4, usable_cpus())


def cap_workers(num_workers: int | None) -> int | None:
    """An asked-for worker count, at most one per usable CPU (as Ultralytics caps it), with a warning when cut.

    Each worker is a process holding a copy of the dataset's state: `--workers 999` on 2 cores started ~1,000 of them
    and filled the machine's memory before the first batch. None (automatic) stays None.
    """
    cpus = usable_cpus()
    if num_workers is None or num_workers <= cpus:
        return num_workers
    log.warning("warning: --workers %d: this process may use %d CPUs; using %d workers", num_workers, cpus, cpus)
    return cpus


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive python/numpy seeds from it (random augmentations).
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def auto_num_workers(dataset: Dataset, device_type: str = "cpu") -> int:
    """Loader workers for `dataset`: none when its RAM cache is complete and either the model trains on the CPU or
    the cache holds the transform's final output; else one per usable CPU (max 4).

    Measured on 2 cores, TrashNet in the RAM cache, quiet machine:
    - a CPU that trains the model has no core to spare: ResNet-50 at 224 (batch 32) trained at 19.4 / 19.9 img/s
      with 0 workers against 13.8 / 15.3 with 2 worker processes, ResNet-18 at 96 (batch 64) at 248-257 img/s
      against 206-245. Cropping cached pixels in the main process costs less than the workers' competition with
      the model's threads. Without a complete cache each image is decoded every epoch, and workers do that work.
    - gathering cached eval crops runs at ~7,300 img/s in the main process and ~2,500 img/s through 2 workers,
      whose IPC costs more than the copy it spreads.
    A GPU run keeps its workers for random crops: there the CPU is otherwise idle.
    """
    cache = getattr(dataset, "cache", None)
    if cache is not None and cache.complete and (device_type == "cpu" or getattr(dataset, "output_shape", None)):
        return 0
    return default_workers()


def stack_channels_last(images: Sequence[torch.Tensor], shared: bool = False) -> torch.Tensor:
    """Images (C, H, W) -> one (B, C, H, W) batch laid out channels_last (any dtype; uint8 pixels in practice).

    Stacking in (H, W, C) order keeps the pixel order of decoded and cached images (no transposing copy) and gives
    the model its channels_last layout for free. `shared`: build it in shared memory (a DataLoader worker's batch
    then reaches the main process without another copy, as with `default_collate`).
    """
    c, h, w = images[0].shape
    out = torch.empty((len(images), h, w, c), dtype=images[0].dtype)
    if shared:
        out.share_memory_()
    torch.stack([image.permute(1, 2, 0) for image in images], out=out)  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)  # (B, C, H, W) view


def collate_uint8(batch: Sequence[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """[(uint8 image (C, H, W), label)] -> (uint8 batch, channels_last, labels (B,)); floats use `default_collate`.

    Samples left out (None: unreadable, in a dataset that does not substitute) are dropped; a batch of none is None.
    """
    batch = [sample for sample in batch if sample is not None]
    if not batch:
        return None
    images, labels = zip(*batch)
    if images[0].dtype != torch.uint8:
        return default_collate(batch)
    return stack_channels_last(images, shared=get_worker_info() is not None), torch.tensor(labels)


class DeviceLoader:
    """A DataLoader whose batches arrive on `device`, normalised from uint8 there, in `memory_format`.

    The loader's workers only crop and stack uint8 pixels; the float work happens once per batch (timm's
    PrefetchLoader does the same on GPUs). Other attributes (`dataset`, `sampler`, `generator`, `batch_size`, ...)
    are the wrapped loader's.
    """

    def __init__(
        self,
        loader: DataLoader,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device | str = "cpu",
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        from resnetlab.engine.allocator import keep_freed_memory

        self.loader, self.normalize = loader, normalize
        self.device, self.memory_format = torch.device(device), memory_format
        keep_freed_memory()  # each float batch would otherwise be a fresh mmap, page-faulted in again

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        if name == "loader":  # not set yet (copy/unpickle): avoid recursing
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        non_blocking = self.device.type == "cuda"
        for batch in self.loader:
            if batch is None:  # every image of the batch was unreadable and left out
                continue
            images, labels = batch
            images = self.normalize(images.to(self.device, non_blocking=non_blocking))  # (B, C, H, W) float32
            yield images.contiguous(memory_format=self.memory_format), labels.to(self.device, non_blocking=non_blocking)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int | None = None,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    seed: int = 0,
    device_type: str = "cpu",
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader with sensible defaults: auto workers, persistent workers, pinned memory on CUDA, seeded order.

    uint8 images are stacked channels_last by `collate_uint8` (the default here); wrap the loader in
    `DeviceLoader` with a `BatchNormalize` to get model-ready batches.
    """
    if num_workers is None:
        num_workers = auto_num_workers(dataset, device_type)
    cache = getattr(dataset, "cache", None)
    if cache is not None and num_workers > 0 and not cache.shared and not cache.complete:
        # A private buffer would be filled per worker process and lost; fill it once here instead.
        dataset.warm_cache()
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_fn or collate_uint8,
        pin_memory=device_type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=generator,
    )

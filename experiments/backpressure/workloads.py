"""Synthetic workloads, the torch DataLoader baseline, and how runs are measured.

Producer and consumer costs are simulated with ``time.sleep`` (a decode step, a
training step), but every item is a real tensor of its stated size whose pages
are written, so the memory in flight is real memory. Workloads:

1. ``heavy_tailed``: item sizes from a Pareto law (alpha 1.5) truncated to
   0.5-8 MB (mean 1.3 MB); producing an item takes 3 ms + 8 ms per MB (7-67 ms);
   the consumer step is 10 ms. Four producers outpace the consumer on average
   (consumer-bound), but a large item takes up to 7 steps to produce.
2. ``slowdown``: the same items; the consumer step is 5 ms, then 25 ms from the
   middle of the run on (5x slower).
3. ``bursty``: 1-2 MB items produced in 6 ms, except for a storage hiccup every
   32 items: 4 items in a row take 120 ms. Consumer step 10 ms.
4. ``jpeg``: real decoding. JPEG images are generated at start (decoded sizes
   from the same truncated Pareto law, content from smooth to noisy, so the file
   size is only a rough guide to the decoded size) and decoded with Pillow into
   uint8 tensors; production time is the decoder's own. The consumer step is
   6 ms. Its dataset offers each file's size as a hint, never the decoded size.

Sizes are not known in advance unless asked for (``known_sizes=True``): the
DataLoader never knows them, and the backpressure loader estimates them.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.multiprocessing

from experiments.backpressure.loader import MB

WORKLOADS = ("heavy_tailed", "slowdown", "bursty", "jpeg")
MAX_ITEM_MB = 8.0  # sizes are drawn below this bound (a dataset's largest resolution, say)
SHARING_STRATEGY = "file_system"  # worker processes of both loaders send tensors this way


@dataclass
class Workload:
    name: str
    sizes: list[int]  # bytes of item i
    produce_s: list[float]  # producer cost of item i
    step_s: list[float]  # consumer step time when it consumes the k-th item
    change_at: int | None = None  # item index of a step change, if any
    max_item_nbytes: int | None = None  # the bound item sizes are drawn under (not the sizes)
    images: list[bytes] | None = None  # jpeg: the encoded images; produce_s is measured
    num_workers: int | None = None  # producers this workload is run with (None: the suite's)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def consumer_limit(self) -> float:
        """Items per second of a consumer that never waits."""
        return len(self.step_s) / sum(self.step_s)


def truncated_pareto(
    rng: np.random.Generator, n: int, lo: float, hi: float, alpha: float
) -> np.ndarray:
    """Inverse-CDF samples of a Pareto(alpha) law with support [lo, hi]."""
    u = rng.random(n)
    return lo / (1 - u * (1 - (lo / hi) ** alpha)) ** (1 / alpha)


def make_workload(
    name: str, n: int = 240, seed: int = 0, scale: float = 1.0, speed: float = 1.0
) -> Workload:
    """Build workload ``name`` with ``n`` items.

    ``scale`` multiplies item sizes (quick runs use 1/8), ``speed`` divides all times.
    """
    rng = np.random.default_rng(seed)
    if name in ("heavy_tailed", "slowdown"):
        bound_mb = MAX_ITEM_MB
        mb = truncated_pareto(rng, n, 0.5, bound_mb, alpha=1.5)  # (n,) sizes in MB
        produce = 0.003 + 0.008 * mb  # 3 ms + 8 ms per MB: 7-67 ms
        step = np.full(n, 0.010)  # 10 ms step: consumer-bound with 4 workers
        change_at = None
        if name == "slowdown":
            change_at = n // 2
            step = np.full(n, 0.005)
            step[change_at:] *= 5  # the consumer slows 5x mid-run
    elif name == "bursty":
        bound_mb = 2.0
        mb = rng.uniform(1.0, bound_mb, n)
        produce = np.full(n, 0.006)
        period, hiccup_items = 32, 4
        for start in range(period - hiccup_items, n, period):
            produce[start : start + hiccup_items] = 0.120  # a storage hiccup
        step = np.full(n, 0.010)
        change_at = None
    elif name == "jpeg":
        return make_jpeg_workload(n, seed, scale, speed)
    else:
        raise ValueError(f"unknown workload {name!r}; choose one of {WORKLOADS}")
    sizes = [max(1, int(m * MB * scale)) for m in mb]
    times = [p / speed for p in produce], [s / speed for s in step]
    return Workload(name, sizes, *times, change_at, max_item_nbytes=int(bound_mb * MB * scale))


def synthetic_image(rng: np.random.Generator, nbytes: int) -> np.ndarray:
    """An (H, W, 3) uint8 picture of about ``nbytes``: gradients plus noise of random strength.

    The noise level sets how well it compresses (smooth: about 25x, noisy: about 5x).
    """
    pixels = max(16, nbytes // 3)
    aspect = rng.uniform(0.6, 1.7)
    w = max(4, int(round((pixels * aspect) ** 0.5)))
    h = max(4, pixels // w)
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 255 // w)[..., None] + (y * 128 // h)[..., None] + rng.integers(0, 256, 3)
    noise = rng.standard_normal((h, w, 3), dtype=np.float32) * rng.uniform(2.0, 40.0)
    return np.clip(base % 256 + noise, 0, 255).astype(np.uint8)


def make_jpeg_workload(n: int = 240, seed: int = 0, scale: float = 1.0, speed: float = 1.0):
    """Workload 4: JPEG images generated now, decoded by the producers (sizes in their pixels).

    It runs with as many producers as there are cores (at most 4). ``produce_s``,
    for the oracle, is each image's decoding time measured here with that many
    processes decoding at once (the median of three decodes). The step is 6 ms
    (divided by ``speed``).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    mb = truncated_pareto(rng, n, 0.5, MAX_ITEM_MB, alpha=1.5)
    images, sizes = [], []
    for m in mb:
        img = synthetic_image(rng, int(m * MB * scale))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
        sizes.append(img.nbytes)
    workers = min(4, os.cpu_count() or 1)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        produce = pool.map(_time_decode, images, chunksize=1)
    step = [0.006 / speed] * n
    bound = int(MAX_ITEM_MB * MB * scale)
    return Workload(
        "jpeg", sizes, produce, step, max_item_nbytes=bound, images=images, num_workers=workers
    )


def _time_decode(blob: bytes, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        decode_jpeg(blob)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def decode_jpeg(blob: bytes, out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode ``blob`` into an (H, W, 3) uint8 tensor (into ``out``'s storage if given)."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        rgb = np.asarray(im)  # (H, W, 3) uint8: the decode happens here
    if out is None:
        out = _new_tensor(rgb.nbytes)
    image = out[: rgb.nbytes].view(rgb.shape)
    image.numpy()[...] = rgb
    return image


def workload_dataset(wl: Workload, known_sizes: bool = False):
    """The dataset that produces ``wl``'s items (sizes revealed only if ``known_sizes``)."""
    if wl.images is not None:
        ds = JpegDataset(wl.images, wl.sizes if known_sizes else None)
    else:
        ds = SyntheticDataset(wl.sizes, wl.produce_s, known_sizes=known_sizes)
    ds.max_item_nbytes = wl.max_item_nbytes  # a bound the dataset declares, not a size
    return ds


class JpegDataset:
    """Map-style dataset decoding JPEG ``images[i]`` into an (H, W, 3) uint8 tensor.

    ``item_size_hint`` offers the file size, which is all a real dataset of files
    knows cheaply; ``sizes`` (the decoded sizes) make the exact-size mode.
    """

    def __init__(self, images: list[bytes], sizes: list[int] | None = None):
        self.images = images
        if sizes is not None:
            self.item_nbytes = list(sizes).__getitem__

    def __len__(self) -> int:
        return len(self.images)

    def item_size_hint(self, i: int) -> int:
        return len(self.images[i])

    def __getitem__(self, i: int) -> dict:
        t_start = time.monotonic()
        return {"index": i, "data": decode_jpeg(self.images[i]), "t_start": t_start}


def _new_tensor(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a worker process, directly in shared memory.

    Allocating in shared memory (as DataLoader's default collate does for batches)
    spares the copy into shared memory when the item is sent to the consumer;
    both loaders get the same treatment.
    """
    if multiprocessing.parent_process() is None:
        return torch.empty(nbytes, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))


def set_sharing_strategy(_worker_id: int, strategy: str = "file_system") -> None:
    """DataLoader ``worker_init_fn``: the same tensor sharing and warm-up as our workers."""
    torch.multiprocessing.set_sharing_strategy(strategy)
    torch.zeros(1).share_memory_()  # pay shared-memory set-up now, not on the first item


class SyntheticDataset:
    """Map-style dataset whose item ``i`` is ``sizes[i]`` real bytes costing ``produce_s[i]``.

    ``known_sizes``: offer ``item_nbytes`` (the size before production) to the
    backpressure loader; by default sizes are unknown until an item is produced.
    ``fail_at``: indices whose production raises (for error-propagation tests).
    """

    def __init__(
        self,
        sizes: list[int],
        produce_s: list[float] | float = 0.0,
        fail_at=(),
        known_sizes: bool = False,
    ):
        self.sizes = list(sizes)
        n = len(self.sizes)
        self.produce_s = list(produce_s) if isinstance(produce_s, list | tuple) else [produce_s] * n
        self.fail_at = set(fail_at)
        if known_sizes:
            self.item_nbytes = self.sizes.__getitem__

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> dict:
        t_start = time.monotonic()
        if i in self.fail_at:
            raise ValueError(f"synthetic failure producing item {i}")
        data = _new_tensor(self.sizes[i])  # (nbytes,) uint8
        data.fill_(i % 251)  # write every page: the memory is real
        remaining = self.produce_s[i] - (time.monotonic() - t_start)
        if remaining > 0:
            time.sleep(remaining)
        return {"index": i, "data": data, "t_start": t_start}

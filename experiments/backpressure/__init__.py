"""Backpressure DataLoader: credit-based, byte-budgeted, adaptive prefetching.

Stream processors keep fast producers from drowning slow consumers with
backpressure: Flink grants network buffers as credits, Reactive Streams has the
subscriber ``request(n)``. This package carries the idea to a training input
pipeline, where the scarce resource is memory:

* :mod:`.credits`     the byte-credit ledger (credit returns when a step finishes);
* :mod:`.control`     Little's-law depth from EWMAs, and a memory-pressure
                      thermostat with hysteresis (CUDA ``mem_get_info`` / CPU RSS);
* :mod:`.loader`      the loader itself: thread or process producers, in-order
                      delivery, worker errors re-raised with their traceback;
* :mod:`.accumulate`  gradient accumulation that splits a batch into micro-batches
                      under pressure without changing the gradient;
* :mod:`.workloads`   synthetic workloads and the ``torch.utils.data.DataLoader``
                      baseline; :mod:`.measure` the measurements the benchmark and
                      notebook use;
* :mod:`.oracle`      the fastest schedule that starts items in sampler order,
                      given perfect knowledge: the reference for what a budget allows.
"""

from experiments.backpressure.accumulate import accumulate_gradients, split_batch, train_step
from experiments.backpressure.control import (
    DepthConfig,
    DepthController,
    MemoryPressure,
    PressureConfig,
    cpu_probe,
    cuda_probe,
    default_probe,
)
from experiments.backpressure.credits import ByteCredits
from experiments.backpressure.loader import (
    MB,
    BackpressureConfig,
    BackpressureIterator,
    BackpressureLoader,
    LoaderStats,
    get_worker_info,
    nbytes_of,
)

__all__ = [
    "MB",
    "BackpressureConfig",
    "BackpressureIterator",
    "BackpressureLoader",
    "ByteCredits",
    "DepthConfig",
    "DepthController",
    "LoaderStats",
    "MemoryPressure",
    "PressureConfig",
    "accumulate_gradients",
    "cpu_probe",
    "cuda_probe",
    "default_probe",
    "get_worker_info",
    "nbytes_of",
    "split_batch",
    "train_step",
]

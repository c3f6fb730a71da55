"""Backpressure meets gradient accumulation.

When memory is short, a training step can process its batch as ``m`` smaller
micro-batches and sum their gradients: activation memory drops about m-fold while
the update is unchanged. For a loss that is a mean over the batch,

    grad( mean_{i in B} l_i ) = sum_j (|B_j| / |B|) * grad( mean_{i in B_j} l_i )

so each micro-batch's mean loss is weighted by its share of the batch before
``backward()``; uneven splits are exact too. :func:`train_step` asks the loader's
memory-pressure thermostat how many micro-batches to use (1 without pressure,
doubling each time the budget halves), so the effective batch size never changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def split_batch(batch, parts: int) -> list:
    """Split a tensor, or a tuple/list/dict of tensors, along dim 0 into ``parts`` chunks."""
    if isinstance(batch, torch.Tensor):
        return list(torch.tensor_split(batch, parts, dim=0))
    if isinstance(batch, dict):
        cols = {k: split_batch(v, parts) for k, v in batch.items()}
        return [{k: cols[k][i] for k in cols} for i in range(parts)]
    if isinstance(batch, Sequence):
        cols = [split_batch(v, parts) for v in batch]
        return [type(batch)(c[i] for c in cols) for i in range(parts)]
    raise TypeError(f"cannot split a batch of type {type(batch).__name__}")


def _batch_len(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return _batch_len(next(iter(batch.values())))
    return _batch_len(batch[0])


def accumulate_gradients(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, object], torch.Tensor],
    batch,
    micro_batches: int = 1,
) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradient of ``loss_fn(model, batch)`` (a batch mean).

    The batch is processed as ``micro_batches`` chunks; returns the full-batch loss
    (detached). Gradients add to whatever ``.grad`` holds, as ``backward()`` does.
    """
    n = _batch_len(batch)
    parts = max(1, min(int(micro_batches), n))
    total = torch.zeros(())
    for chunk in split_batch(batch, parts):
        weight = _batch_len(chunk) / n  # this chunk's share of the batch mean
        loss = loss_fn(model, chunk) * weight
        loss.backward()
        total = total + loss.detach().to(total.device)
    return total


def train_step(model, optimizer, loss_fn, batch, pressure=None, micro_batches: int | None = None):
    """One optimizer step; under memory pressure the batch is split into micro-batches.

    ``pressure``: a :class:`~experiments.backpressure.control.MemoryPressure` (e.g.
    ``iterator.shared.pressure``); ``micro_batches`` overrides it. Returns
    ``(loss, micro_batches_used)``.
    """
    if micro_batches is None:
        micro_batches = pressure.micro_batches() if pressure is not None else 1
    optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, loss_fn, batch, micro_batches)
    optimizer.step()
    return loss, micro_batches

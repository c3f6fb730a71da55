"""An incremental Transformer for streaming data (backlog item ``incremental-transformer``).

Two halves, one small model:

* streaming inference -- a decoder-only Transformer with rotary positions
  (``model``), decoded with a preallocated KV cache vs full recompute, and a
  bounded StreamingLLM cache of attention sinks + a sliding window whose
  positions are assigned inside the cache (``cache``, ``streaming``);
* streaming learning -- prequential online training on a token stream that
  drifts between synthetic Markov regimes (``data``), comparing naive online
  SGD, reservoir replay, A-GEM and detector-triggered online EWC under abrupt,
  gradual and recurring drift, with a Page-Hinkley drift detector and
  continual-learning metrics (``online``; intervals over seeds in ``stats``).

``memory`` measures the cache policies' peak memory against stream length;
``text`` is a real text stream for the StreamingLLM experiment (the standard
library's own source, byte tokens, split by file) and ``sinks`` trains byte-level
models on it to test StreamingLLM's attention-sink finding. ``experiment`` wraps each
measurement as one function; ``benchmarks/incremental.py``
prints the acceptance figures and ``notebooks/incremental_transformer.ipynb``
records and plots them.
"""

from experiments.incremental.cache import KVCache, SinkWindowCache, SinkWindowCacheReference
from experiments.incremental.data import (
    SCENARIOS,
    DriftSchedule,
    MarkovSource,
    drift_schedule,
    make_regimes,
    mixture_batch,
    switching_stream,
)
from experiments.incremental.experiment import (
    TEST_SEEDS,
    TUNED_HYPERPARAMETERS,
    TUNING_GRID,
    VALIDATION_SEEDS,
    page_hinkley_false_alarms,
    pretrain,
    resolve_device,
    run_decode,
    run_decode_batches,
    run_drift,
    run_stream,
    tune_methods,
)
from experiments.incremental.model import Transformer, TransformerConfig
from experiments.incremental.online import (
    METHODS,
    OnlineConfig,
    PageHinkley,
    Reservoir,
    continual_metrics,
    detect,
    recovery_tokens,
    reference_plateau,
    run_online,
)
from experiments.incremental.stats import paired_interval, t_interval
from experiments.incremental.streaming import cached_logits, recompute_logits, stream_eval
from experiments.incremental.train import TrainConfig, train_offline

__all__ = [
    "KVCache",
    "SinkWindowCache",
    "SinkWindowCacheReference",
    "MarkovSource",
    "SCENARIOS",
    "DriftSchedule",
    "drift_schedule",
    "make_regimes",
    "mixture_batch",
    "switching_stream",
    "pretrain",
    "resolve_device",
    "TEST_SEEDS",
    "TUNED_HYPERPARAMETERS",
    "TUNING_GRID",
    "VALIDATION_SEEDS",
    "page_hinkley_false_alarms",
    "run_decode",
    "run_decode_batches",
    "run_drift",
    "run_stream",
    "tune_methods",
    "Transformer",
    "TransformerConfig",
    "METHODS",
    "OnlineConfig",
    "PageHinkley",
    "Reservoir",
    "continual_metrics",
    "detect",
    "run_online",
    "recovery_tokens",
    "reference_plateau",
    "paired_interval",
    "t_interval",
    "cached_logits",
    "recompute_logits",
    "stream_eval",
    "TrainConfig",
    "train_offline",
]

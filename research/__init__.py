"""research: a research-notebook TODO tracker with runnable experiments."""

from research.record import record, record_artifact, record_figure

__all__ = ["record", "record_artifact", "record_figure", "__version__"]
__version__ = "0.1.0"

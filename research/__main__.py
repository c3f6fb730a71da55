"""The `research` command (and `python -m research`): the CLI, tuned for a short-lived process."""

import gc
import sys


def main() -> None:
    # A CLI process lives for a moment and imports large libraries (SQLAlchemy, pydantic):
    # collecting the young generation every 700 allocations while they load, and once more
    # over everything at exit, costs about a third of a second and frees next to nothing.
    # Collections still run (rarely), so a long sweep's memory stays bounded.
    gc.set_threshold(50_000, 20, 20)
    from research.cli import main as cli_main

    try:
        cli_main()
    finally:
        if "research.store.db" in sys.modules:
            # Close the database cleanly (SQLite folds its WAL back in on the last close)
            # before freezing the heap keeps the pool's connections from being collected.
            sys.modules["research.store.db"].dispose_engines()
        gc.freeze()  # nothing left to free: skip the final collection at exit


if __name__ == "__main__":
    main()

"""Write the tiny fixture notebooks used by tests/test_params.py and tests/test_child.py.

Run ``python tests/notebooks/build.py`` after changing a notebook here; the
``.ipynb`` files are committed so the tests need no build step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import notebook, params_cell  # noqa: E402

HERE = Path(__file__).resolve().parent


NOTEBOOKS = {
    # Every parameter type, and metrics that echo what the kernel received.
    "typed.ipynb": notebook(
        new_markdown_cell("# Typed parameters"),
        params_cell(
            "steps = 3  # number of steps\n"
            "lr: float = 0.5\n"
            'name = "base"  # run name\n'
            "flag = False\n"
            "sizes = [1, 2]\n"
            'cfg = {"a": 1}\n'
            "budget_mb: int | None = None\n"
        ),
        new_code_cell(
            "from research import record\n"
            "for i in range(steps):\n"
            "    record('loss', lr * i, step=i)\n"
            "record('name', name)\n"
            "record('flag', flag)\n"
            "record('sizes', sizes)\n"
            "record('cfg', cfg)\n"
            "record('budget_mb', budget_mb)\n"
            "record('types', [type(v).__name__ for v in (steps, lr, name, flag, sizes, cfg)])"
        ),
    ),
    # Cell 3 raises; cell 1 records a metric before that.
    "fail_cell3.ipynb": notebook(
        params_cell("x = 1"),
        new_code_cell("from research import record\nrecord('before', 1.5)"),
        new_code_cell("y = x + 1"),
        new_code_cell("raise ValueError(f'boom {y}')"),
        new_code_cell("record('after', 2)"),
    ),
    # A noisy 2-D quadratic with its optimum at x=1, y=-2 (loss 0 with adam, 0.5 with sgd), for
    # sweeps; with steps > 0 it records a falling loss per step first (what a pruner watches).
    "quadratic.ipynb": notebook(
        params_cell(
            "x: float = 0.0\n"
            "y: float = 0.0\n"
            'opt = "adam"\n'
            "steps: int = 0\n"
            "pause: float = 0.0  # seconds per step\n"
            "noise: float = 0.0\n"
            "seed: int = 0\n"
        ),
        new_code_cell(
            "import random, time\n"
            "from research import record\n"
            "rng = random.Random(seed)\n"
            "loss = (x - 1) ** 2 + (y + 2) ** 2 + (0.5 if opt == 'sgd' else 0.0) + noise * rng.gauss(0, 1)\n"
            "for step in range(steps):  # falls to the loss at the last step\n"
            "    record('loss', loss + (steps - 1 - step) / steps, step=step)\n"
            "    time.sleep(pause)\n"
            "if not steps:\n"
            "    record('loss', loss)"
        ),
    ),
    # Records the kernel's pid, then sleeps: for timeout and interrupt.
    "sleep.ipynb": notebook(
        params_cell("seconds = 60.0"),
        new_code_cell("import os\nfrom research import record\nrecord('kernel_pid', os.getpid())"),
        new_code_cell("import time\ntime.sleep(seconds)"),
        new_code_cell("record('woke', 1)"),
    ),
    # No kernelspec or language metadata at all.
    "no_kernelspec.ipynb": notebook(
        params_cell("a = 2"),
        new_code_cell("from research import record\nrecord('double', a * 2)"),
        kernelspec=None,
    ),
    # The kernel process exits in the middle of the notebook.
    "kernel_death.ipynb": notebook(
        params_cell("code = 3\nsig = 0  # kill the kernel with this signal instead"),
        new_code_cell("import os\nif sig:\n    os.kill(os.getpid(), sig)\nos._exit(code)"),
        new_code_cell("print('unreachable')"),
    ),
    # No cell tagged `parameters`.
    "no_params.ipynb": notebook(new_code_cell("x = 1")),
    # Two figures: one through record_figure, one saved into the run's folder by hand.
    "figures.ipynb": notebook(
        params_cell("points = 5"),
        new_code_cell(
            "import os\n"
            "import matplotlib.pyplot as plt\n"
            "from research import record_artifact, record_figure\n"
            "fig, ax = plt.subplots()\n"
            "ax.plot(range(points))\n"
            "record_figure(fig, 'line.png', dpi=50)"
        ),
        new_code_cell(
            "fig, ax = plt.subplots()\n"
            "ax.bar(range(points), range(points))\n"
            "path = os.path.join(os.environ.get('RESEARCH_RUN_DIR', '.'), 'bars.png')\n"
            "fig.savefig(path, dpi=50)\n"
            "plt.close(fig)\n"
            "record_artifact(path)"
        ),
    ),
}


def main() -> None:
    for name, nb in NOTEBOOKS.items():
        for index, cell in enumerate(nb.cells):  # stable ids: rebuilding changes nothing
            cell.id = f"{Path(name).stem.replace('_', '-')}-{index}"
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print(HERE / name)


if __name__ == "__main__":
    main()

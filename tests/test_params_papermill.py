"""`research run` parameters beside papermill's on notebooks written in papermill's styles.

Each case gives the same parameters to `research run --dry-run --json` (what the run would inject)
and to papermill's own CLI with ``--prepare-only`` (papermill parameterizes the notebook
and writes it without a kernel), then compares the injected parameters cells. Ours is
rendered by ``papermill.parameterize.parameterize_notebook`` with the notebook's kernel and
language, which is what the runner's ``papermill.execute_notebook`` does; that lets R and
Julia notebooks be checked here, where neither kernel exists.
"""

from __future__ import annotations

import json
import sys

import pytest

from research.errors import ResearchError
from tests.support import JULIA_KERNEL, PAPERMILL_STYLE_HEAD, R_KERNEL

# papermill's documented styles: annotations, `# type:` comments, a typed list over several
# lines, a tuple and a dict with int keys as defaults, a line papermill cannot read.
PYTHON_CELL = PAPERMILL_STYLE_HEAD + (
    "steps = 10\n"
    "sizes = (64, 32)\n"
    "table = {1: 'one', 2: 'two'}\n"
    "when = '2024-01-01'\n"
)
# The notebook checks what it got: a tuple and int keys only survive if the defaults are
# not re-injected through JSON.
PYTHON_BODY = (
    "assert isinstance(sizes, tuple), type(sizes)\n"
    "assert table[1] == 'one', table\n"
    "from research import record\n"
    "record('got', {'msg': msg, 'a': a, 'names': names, 'steps': steps})\n"
)
R_CELL = "alpha <- 0.1\nname <- 'x'\nsizes <- c(1, 2)\n"
JULIA_CELL = "alpha = 0.1\nname = \"x\"\nsizes = [1, 2]\n"


@pytest.fixture
def project(cli, isolated, write_notebook):
    (isolated / "notebooks").mkdir()
    write_notebook(isolated / "notebooks" / "pm.ipynb", PYTHON_BODY, parameters=PYTHON_CELL)
    write_notebook(isolated / "notebooks" / "r.ipynb", "print(alpha)", parameters=R_CELL, kernelspec=R_KERNEL)
    write_notebook(isolated / "notebooks" / "jl.ipynb", "println(alpha)", parameters=JULIA_CELL,
                   kernelspec=JULIA_KERNEL)
    (isolated / "p.yaml").write_text("when: 2024-02-29\nnames: [f, g]\n")
    for slug in ("pm", "r", "jl"):
        cli("add", slug, "--slug", slug)
        cli("link", slug, f"notebooks/{slug}.ipynb")
    return isolated


def injected_cell(nb) -> str:
    cells = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    return cells[0].source if cells else ""


def ours(cli, slug: str, *args: str) -> str:
    """The parameters cell `research run` would inject, as its runner's papermill writes it."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    plan = json.loads(cli("run", slug, "--dry-run", "--json", *args).stdout)
    nb = load_notebook_node(plan[0]["notebook"])  # as papermill.execute_notebook reads it
    return injected_cell(parameterize_notebook(nb, plan[0]["inject"])) if plan[0]["inject"] else ""


def papermills(project, slug: str, *args: str) -> str:
    """The parameters cell `papermill NB OUT ARGS` injects."""
    import nbformat
    from click.testing import CliRunner
    from papermill.cli import papermill

    out = project / f"{slug}-papermill.ipynb"
    result = CliRunner().invoke(papermill, [f"notebooks/{slug}.ipynb", str(out), "--prepare-only", *args])
    assert result.exit_code == 0, result.output
    return injected_cell(nbformat.read(out, as_version=4))


# (research run arguments, papermill arguments): the same parameters in each one's spelling.
SAME = {
    "int over tuple and int-key defaults": (["-p", "steps=20"], ["-p", "steps", "20"]),
    "empty text": (["-p", "msg="], ["-p", "msg", ""]),
    "untyped guesses": (["-p", "msg=None", "-p", "steps=3"], ["-p", "msg", "None", "-p", "steps", "3"]),
    "raw text": (["-r", "msg=007", "-r", "when=2024"], ["-r", "msg", "007", "-r", "when", "2024"]),
    "yaml": (["-y", "names: [p, q]\nsteps: 4", "-y", "when: 2024-01-31"],
             ["-y", "names: [p, q]\nsteps: 4", "-y", "when: 2024-01-31"]),
    "file then -p": (["-f", "p.yaml", "-p", "steps=5"], ["-f", "p.yaml", "-p", "steps", "5"]),
    "later wins, first place kept": (["-y", "steps: 1", "-p", "msg=hi", "-r", "steps=2", "--no-check"],
                                     ["-y", "steps: 1", "-p", "msg", "hi", "-r", "steps", "2"]),
    "float as float": (["-p", "a=0.5"], ["-p", "a", "0.5"]),
    "nothing given": ([], []),
}


@pytest.mark.parametrize("ours_args, theirs_args", SAME.values(), ids=SAME.keys())
def test_python_notebook_injects_what_papermill_injects(cli, project, ours_args, theirs_args):
    assert ours(cli, "pm", *ours_args) == papermills(project, "pm", *theirs_args)


def test_notebook_defaults_are_recorded_not_injected(cli, project):
    plan = json.loads(cli("run", "pm", "--dry-run", "--json", "-p", "steps=20").stdout)[0]
    assert plan["inject"] == {"steps": 20}
    assert plan["params"] == {"msg": None, "a": 2.25, "names": ["x", "y"], "steps": 20, "sizes": [64, 32],
                              "table": {"1": "one", "2": "two"}, "when": "2024-01-01"}


def test_where_research_is_stricter_it_says_so(cli, project):
    # A declared float gets a float; papermill injects `a = 1`. --no-check does what papermill does.
    assert "a = 1.0\n" in ours(cli, "pm", "-p", "a=1")
    assert ours(cli, "pm", "-p", "a=1", "--no-check") == papermills(project, "pm", "-p", "a", "1")
    result = cli("run", "pm", "-p", "steps=many", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "expects int, got 'many'; papermill would pass the str 'many'; `research run --no-check`" in result.stderr
    result = cli("run", "pm", "-p", "stepz=1", ok=False)
    assert "(did you mean 'steps'?); papermill would only warn and inject it" in result.stderr
    assert ours(cli, "pm", "-p", "stepz=1", "-p", "steps=many", "--no-check") == papermills(
        project, "pm", "-p", "stepz", "1", "-p", "steps", "many"
    )
    result = cli("run", "pm", "-r", "steps=5", ok=False)
    assert "expects int, got '5' (-r passes text; -p converts it)" in result.stderr
    assert "expected key=value for -r" in cli("run", "pm", "-r", "nokey", ok=False).stderr


KERNELS = {
    "R": ("r", [], []),
    "R values": ("r", ["-p", "alpha=0.5", "-p", "name=x", "-y", "sizes: [3, 4]\nflag: true", "-p", "none=None"],
                 ["-p", "alpha", "0.5", "-p", "name", "x", "-y", "sizes: [3, 4]\nflag: true", "-p", "none", "None"]),
    "R text": ("r", ["-r", "name=007", "-p", "n=007", "-p", "e="], ["-r", "name", "007", "-p", "n", "007", "-p", "e", ""]),
    "Julia values": ("jl", ["-p", "alpha=2", "-y", "sizes: [1, 2]\ncfg: {a: 1}", "-p", "flag=False"],
                     ["-p", "alpha", "2", "-y", "sizes: [1, 2]\ncfg: {a: 1}", "-p", "flag", "False"]),
}


@pytest.mark.parametrize("slug, ours_args, theirs_args", KERNELS.values(), ids=KERNELS.keys())
def test_other_kernels_inject_what_papermill_injects(cli, project, slug, ours_args, theirs_args):
    """papermill cannot read an R or Julia parameters cell: names and types go unchecked there
    (they were all refused), and the cell is written by papermill's translator for the language."""
    mine, theirs = ours(cli, slug, *ours_args), papermills(project, slug, *theirs_args)
    assert mine == theirs
    assert bool(mine) == bool(ours_args)  # not two empty cells


def test_notebooks_lists_what_papermill_reads(cli, project):
    entries = {e["notebook"]: e for e in cli.json("notebooks")}
    assert [p["name"] for p in entries["notebooks/pm.ipynb"]["parameters"]] == [
        "msg", "a", "names", "steps", "sizes", "table", "when"
    ]
    assert entries["notebooks/r.ipynb"]["parameters"] == []
    assert entries["notebooks/r.ipynb"]["error"] == "papermill cannot read R parameters cells; -p values go unchecked"
    assert entries["notebooks/pm.ipynb"]["error"] is None


@pytest.mark.slow
def test_a_run_gets_what_papermill_gives(cli, project):
    """The notebook runs under papermill with `-p steps 20`, and so under `research run -p steps=20`
    (its tuple and int-key defaults used to come back a list and string keys, and fail it)."""
    result = cli("run", "pm", "-p", "steps=20", "-p", "msg=")
    assert "run 1 succeeded" in result.stdout
    import nbformat

    executed = nbformat.read(project / "runs" / "1" / "output.ipynb", as_version=4)
    assert injected_cell(executed) == papermills(project, "pm", "-p", "steps", "20", "-p", "msg", "")
    detail = cli.json("runs", "show", "1")
    assert detail["metrics"]["got"] == {"msg": "", "a": 2.25, "names": ["x", "y"], "steps": 20}
    assert detail["params"]["sizes"] == [64, 32] and detail["params"]["steps"] == 20


def test_link_defaults_are_given_and_reruns_inject_the_same(cli, project):
    from research.runs.params import injected_parameters
    from research.runs.plan import create_runs, plan_rerun
    from research.store.db import session_scope
    from research.store.models import Run

    cli("link", "pm", "notebooks/pm.ipynb", "-p", "a=0.5")
    plan = json.loads(cli("run", "pm", "--dry-run", "--json", "-p", "steps=20").stdout)[0]
    assert plan["inject"] == {"a": 0.5, "steps": 20}
    with session_scope(project / "todo.db", write=True) as session:
        # A run recorded before runs kept their link's defaults as given: every default in
        # params, only -p in params_given. Its rerun still injects the link's a=0.5.
        old = Run(item_id=1, notebook="notebooks/pm.ipynb", params_given={"steps": "20"}, queued_at="2026-01-01",
                  params={**plan["params"]}, status="succeeded")
        session.add(old)
        session.flush()
        rerun, _ = plan_rerun(session, str(old.id), {"msg": "hi"}, project)
        assert injected_parameters(rerun.given, rerun.params) == {"steps": 20, "a": 0.5, "msg": "hi"}
        (new_id,), _ = create_runs(session, [rerun], project, None)
        again, _ = plan_rerun(session, str(new_id), {}, project)
        assert injected_parameters(again.given, again.params) == {"steps": 20, "a": 0.5, "msg": "hi"}
    with pytest.raises(ResearchError, match="unknown parameter 'nope'"):
        with session_scope(project / "todo.db", write=True) as session:
            plan_rerun(session, str(new_id), {"nope": "1"}, project)
    with session_scope(project / "todo.db", write=True) as session:
        loose, _ = plan_rerun(session, str(new_id), {"nope": "1"}, project, check=False)
        assert injected_parameters(loose.given, loose.params)["nope"] == 1


@pytest.mark.slow
def test_a_run_on_another_kernel_is_parameterized_by_its_translator(cli, project, monkeypatch, write_notebook):
    """The runner's own path for a non-Python kernel: a kernelspec named `ir` with language R
    (run by ipykernel, as no R exists here) gets its cell from papermill's R translator. The
    parameters cell gives Python R's TRUE and NULL, so the injected R runs too."""
    import nbformat

    kernels = project / "jupyter" / "kernels" / "ir"
    kernels.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernels / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "R", "language": "R"}))
    monkeypatch.setenv("JUPYTER_PATH", str(project / "jupyter"))
    write_notebook(project / "notebooks" / "r.ipynb", "from research import record\nrecord('got', [alpha, name, n, flag, none])",
                   parameters="TRUE, NULL = True, None\nalpha = 0.1\nname = 'x'\nn = 1\n", kernelspec=R_KERNEL)
    given = ["alpha=0.5", "name=007", "n=007", "flag=True", "none=None"]
    result = cli("run", "r", "-p", given[0], "-r", given[1], *[a for g in given[2:] for a in ("-p", g)])
    assert "run 1 succeeded" in result.stdout
    executed = nbformat.read(project / "runs" / "1" / "output.ipynb", as_version=4)
    theirs = papermills(project, "r", "-p", "alpha", "0.5", "-r", "name", "007", "-p", "n", "007",
                        "-p", "flag", "True", "-p", "none", "None")
    assert injected_cell(executed) == theirs and "flag = TRUE" in theirs and "none = NULL" in theirs
    assert cli.json("runs", "show", "1")["metrics"]["got"] == [0.5, "007", 7, True, None]

"""Notebook parameter inspection and typed parsing (research.runs.params); no kernels run here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from research.errors import ResearchError
from research.runs.params import (
    ParamSpec,
    coerce_value,
    expand_grid,
    inspect_notebook,
    load_params_file,
    papermill_value,
    parse_assignments,
    parse_grid,
    parse_yaml_params,
    resolve_parameters,
)
from tests.support import JULIA_KERNEL, PAPERMILL_STYLE_HEAD, R_KERNEL

NOTEBOOKS = Path(__file__).parent / "notebooks"
TYPED = NOTEBOOKS / "typed.ipynb"


def spec(type_name, name="p"):
    return ParamSpec(name, type_name, None, "None", "")


# --------------------------------------------------------------------------- inspection


def test_inspect_reads_names_types_defaults_and_help():
    specs = inspect_notebook(TYPED)
    assert list(specs) == ["steps", "lr", "name", "flag", "sizes", "cfg", "budget_mb"]
    assert specs["steps"] == ParamSpec("steps", "int", 3, "3", "number of steps")
    assert specs["lr"].type_name == "float" and specs["lr"].default == 0.5
    assert specs["name"] == ParamSpec("name", "str", "base", '"base"', "run name")
    assert specs["flag"].type_name == "bool" and specs["flag"].default is False
    assert specs["sizes"].type_name == "list" and specs["sizes"].default == [1, 2]
    assert specs["cfg"].type_name == "dict" and specs["cfg"].default == {"a": 1}
    assert specs["budget_mb"].type_name == "int | None" and specs["budget_mb"].optional


def test_inspect_agrees_with_papermill():
    """Our ast reading is papermill's inspection for ordinary cells, plus ``int | None``."""
    import papermill

    theirs = papermill.inspect_notebook(str(TYPED))
    ours = inspect_notebook(TYPED)
    # papermill's regex cannot read `budget_mb: int | None = None`; it drops it.
    assert set(theirs) == set(ours) - {"budget_mb"}
    for name, p in theirs.items():
        assert ours[name].default_repr == p["default"]
        assert ours[name].help == p["help"]
        if p["inferred_type_name"] != "None":
            assert ours[name].type_name == p["inferred_type_name"]


def test_inspect_cell_details(tmp_path, write_notebook):
    parameters = (
        "%matplotlib inline\n"
        "s = 'a#b'  # hash in a string\n"
        "opt: Optional[int] = None\n"
        "n = 5  # type: float\n"
        "dtype = torch.float32\n"
        "big = [1,\n"
        "       2]  # spans lines\n"
        "a = b = 1\n"
    )
    path = write_notebook(tmp_path / "cells.ipynb", parameters=parameters, kernelspec=None)
    specs = inspect_notebook(path)
    assert specs["s"].default == "a#b" and specs["s"].help == "hash in a string"
    assert specs["opt"].optional and specs["opt"].default is None
    assert specs["n"].type_name == "float"
    assert specs["dtype"].type_name is None and specs["dtype"].default_repr == "torch.float32"
    assert specs["big"].default == [1, 2] and specs["big"].help == "spans lines"
    assert "a" not in specs  # chained assignments are not parameters (as in papermill)


def test_inspect_errors(tmp_path):
    with pytest.raises(ResearchError, match="not found"):
        inspect_notebook(tmp_path / "missing.ipynb")
    bad = tmp_path / "bad.ipynb"
    bad.write_text("not json")
    with pytest.raises(ResearchError, match="not a Jupyter notebook"):
        inspect_notebook(bad)
    untagged = inspect_notebook(NOTEBOOKS / "no_params.ipynb")  # papermill runs these: nothing declared
    assert untagged == {} and not untagged.tagged and untagged.readable
    with pytest.raises(ResearchError, match="no cell tagged 'parameters', so it declares no 'steps'.*--no-check"):
        resolve_parameters(untagged, {"steps": "3"}, "no_params.ipynb")
    assert resolve_parameters(untagged, {"steps": "3"}, "no_params.ipynb", check=False) == {"steps": 3}


def test_inspect_without_kernelspec():
    assert list(inspect_notebook(NOTEBOOKS / "no_kernelspec.ipynb")) == ["a"]


# A parameters cell in papermill's documented styles; the last lines are ones no Python parser
# reads, so ours gives up on the cell and papermill's translator (which skips them) reads it.
PAPERMILL_STYLE = PAPERMILL_STYLE_HEAD + 'c: "NoneType" = None\n' + "= 2\n"


def test_unparsable_python_cell_is_read_by_papermill(tmp_path, write_notebook):
    import papermill

    path = write_notebook(tmp_path / "pm.ipynb", parameters=PAPERMILL_STYLE)
    ours = inspect_notebook(path)
    theirs = papermill.inspect_notebook(str(path))
    assert ours.readable and list(ours) == list(theirs) == ["msg", "a", "names", "c"]
    assert ours["a"] == ParamSpec("a", "float", 2.25, "2.25", "the a value")
    assert ours["names"].type_name == "List[str]" and ours["names"].default == ["x", "y"]
    assert ours["msg"].type_name is None and ours["c"].optional
    # ... and so its typed parameters are checked, not refused as unknown.
    assert resolve_parameters(ours, {"a": "1", "names": '["p", "q"]', "msg": "hi"}) == {
        "a": 1.0, "names": ["p", "q"], "msg": "hi"
    }
    with pytest.raises(ResearchError, match="parameter 'names' expects List"):
        resolve_parameters(ours, {"names": '{"p": 1}'})


@pytest.mark.parametrize("kernelspec", [R_KERNEL, JULIA_KERNEL], ids=["R", "julia"])
def test_cell_nobody_can_read_takes_values_unchecked(tmp_path, write_notebook, kernelspec):
    """papermill inspects Python only: an R or Julia cell declares nothing we can check, so
    values pass as papermill passes them instead of every name being refused."""
    path = write_notebook(tmp_path / "k.ipynb", parameters="alpha = 0.1\nname = 'x'\n", kernelspec=kernelspec)
    specs = inspect_notebook(path)
    assert not specs.readable and dict(specs) == {} and specs.language == kernelspec["language"]
    given = {"alpha": "0.5", "steps": "20", "name": "007", "flag": "True", "text": ""}
    assert resolve_parameters(specs, given) == {"alpha": 0.5, "steps": 20, "name": 7, "flag": True, "text": ""}
    assert specs.injectable


def test_language_without_translator_takes_no_values(tmp_path, write_notebook):
    """papermill cannot write a parameters cell for a language it has no translator for: refuse
    before the run, instead of the run failing in papermill."""
    js = {"name": "javascript", "display_name": "JavaScript", "language": "javascript"}
    path = write_notebook(tmp_path / "js.ipynb", parameters="let a = 1;\n", kernelspec=js)
    specs = inspect_notebook(path)
    assert not specs.readable and not specs.injectable
    assert resolve_parameters(specs, {}) == {}
    with pytest.raises(ResearchError, match=r"^papermill has no parameter translator for javascript notebooks "
                       r"\(js.ipynb\), so it cannot inject a, b$"):
        resolve_parameters(specs, {"a": "2", "b": "3"}, "js.ipynb", check=False)


# --------------------------------------------------------------------------- coercion


def test_unknown_parameter_lists_known_ones():
    specs = inspect_notebook(TYPED)
    with pytest.raises(ResearchError) as info:
        resolve_parameters(specs, {"step": "4"}, "notebooks/typed.ipynb")
    message = str(info.value)
    assert message.startswith(
        "unknown parameter 'step' for notebooks/typed.ipynb; "
        "known: steps, lr, name, flag, sizes, cfg, budget_mb"
    )
    assert "did you mean 'steps'" in message


def test_bad_type_is_one_clear_line():
    specs = inspect_notebook(TYPED)
    # One line that also says what papermill would do, and how to get that.
    with pytest.raises(ResearchError) as info:
        resolve_parameters(specs, {"steps": "abc"})
    assert str(info.value) == (
        "parameter 'steps' expects int, got 'abc'; "
        "papermill would pass the str 'abc'; `research run --no-check` does the same"
    )
    with pytest.raises(ResearchError, match="parameter 'lr' expects float"):
        resolve_parameters(specs, {"lr": "fast"})
    with pytest.raises(ResearchError, match="parameter 'flag' expects bool"):
        resolve_parameters(specs, {"flag": "maybe"})
    with pytest.raises(ResearchError, match="parameter 'sizes' expects list"):
        resolve_parameters(specs, {"sizes": '{"a": 1}'})
    with pytest.raises(ResearchError, match="parameter 'steps' expects int"):
        resolve_parameters(specs, {"steps": None})


def test_resolve_converts_every_type():
    specs = inspect_notebook(TYPED)
    given = {
        "steps": "10",
        "lr": "1e-3",
        "name": "007",
        "flag": "YES",
        "sizes": "[4, 5]",
        "cfg": "{b: 2, c: [1]}",  # YAML flow mapping
        "budget_mb": "null",
    }
    assert resolve_parameters(specs, given) == {
        "steps": 10,
        "lr": 0.001,
        "name": "007",
        "flag": True,
        "sizes": [4, 5],
        "cfg": {"b": 2, "c": [1]},
        "budget_mb": None,
    }
    assert resolve_parameters(specs, {"budget_mb": "64"}) == {"budget_mb": 64}


def test_str_is_taken_verbatim():
    for raw in ("007", "true", "1e3", " padded ", "[1]", "none"):
        assert coerce_value(spec("str"), raw) == raw


@pytest.mark.parametrize(
    "raw, expected",
    [("true", True), ("False", False), ("1", True), ("0", False), ("yes", True), ("NO", False)]
    + [(True, True), (0, False)],
)
def test_bool(raw, expected):
    assert coerce_value(spec("bool"), raw) is expected


def test_numbers():
    assert coerce_value(spec("float"), "3") == 3.0 and isinstance(
        coerce_value(spec("float"), 3), float
    )
    assert coerce_value(spec("int"), 4.0) == 4
    with pytest.raises(ResearchError):
        coerce_value(spec("int"), "4.5")
    with pytest.raises(ResearchError):
        coerce_value(spec("int"), True)  # a bool is not an int here


def test_list_and_dict():
    assert coerce_value(spec("list"), "[1, 2]") == [1, 2]
    assert coerce_value(spec("list"), "[a, b]") == ["a", "b"]  # YAML
    assert coerce_value(spec("list[int]"), '["1", 2]') == [1, 2]
    assert coerce_value(spec("dict"), '{"lr": 0.1}') == {"lr": 0.1}
    assert coerce_value(spec("Dict[str, int]"), {"a": 1}) == {"a": 1}
    with pytest.raises(ResearchError, match="items must be int"):
        coerce_value(spec("list[int]"), "[1, x]")
    with pytest.raises(ResearchError, match="expects dict"):
        coerce_value(spec("dict"), "[1]")


def test_optional_types():
    for type_name in ("Optional[int]", "int | None", "None | int", "Union[int, None]"):
        assert coerce_value(spec(type_name), "none") is None
        assert coerce_value(spec(type_name), "NULL") is None
        assert coerce_value(spec(type_name), None) is None
        assert coerce_value(spec(type_name), "5") == 5
    with pytest.raises(ResearchError):
        coerce_value(spec("int"), "none")
    assert coerce_value(spec("str"), "none") == "none"
    assert coerce_value(spec("str | None"), "none") is None


def test_unknown_type_guesses():
    unknown = spec(None)
    assert coerce_value(unknown, "3") == 3
    assert coerce_value(unknown, "0.5") == 0.5
    assert coerce_value(unknown, "true") is True
    assert coerce_value(unknown, "007") == "007"
    assert coerce_value(unknown, "[1, 2]") == [1, 2]
    assert coerce_value(unknown, "hello") == "hello"


PAPERMILL_P_VALUES = ["", "True", "true", "False", "None", "none", "007", "-3", "1e-3", "nan", "inf", "1_000", " 5 ",
                      "[1, 2]", "{a: 1}", "x=y", "hello"]


def test_papermill_value_is_what_papermill_p_passes():
    from papermill.cli import _resolve_type

    for text in PAPERMILL_P_VALUES:
        ours, theirs = papermill_value(text), _resolve_type(text)
        assert type(ours) is type(theirs) and (ours == theirs or ours != ours), text  # nan != nan


def test_empty_value_of_untyped_parameter_is_empty_string():
    # `papermill NB out -p msg ""` passes ""; it was None here (read as empty YAML).
    assert coerce_value(spec(None), "") == ""
    assert coerce_value(spec("str | None"), "") == ""
    assert coerce_value(spec(None), " ") == " "


def test_raw_values_are_text():
    specs = inspect_notebook(TYPED)
    got = resolve_parameters(specs, {"name": "007", "steps": "5"}, raw=["name"])
    assert got == {"name": "007", "steps": 5}
    untyped = {"tag": spec(None, "tag")}
    assert resolve_parameters(untyped, {"tag": "True"}, raw=["tag"]) == {"tag": "True"}
    assert resolve_parameters(untyped, {"tag": "True"}) == {"tag": True}
    with pytest.raises(ResearchError) as info:
        resolve_parameters(specs, {"steps": "5"}, raw=["steps"])
    assert str(info.value).startswith("parameter 'steps' expects int, got '5' (-r passes text; -p converts it)")
    assert "papermill would pass the str '5'" in str(info.value)


def test_typed_values_are_not_guessed_again():
    untyped = {"x": spec(None, "x")}
    assert resolve_parameters(untyped, {"x": "5"}, typed=["x"]) == {"x": "5"}  # YAML said "5"
    assert resolve_parameters(untyped, {"x": "5"}) == {"x": 5}  # -p x=5


def test_no_check_passes_values_as_papermill_does():
    specs = inspect_notebook(TYPED)
    given = {"steps": "abc", "nope": "3", "name": "007", "lr": "None", "sizes": "[1]", "cfg": {"b": 1}, "r": "1"}
    got = resolve_parameters(specs, given, raw=["r"], typed=["cfg"], check=False)
    assert got == {"steps": "abc", "nope": 3, "name": 7, "lr": None, "sizes": "[1]", "cfg": {"b": 1}, "r": "1"}


def test_unknown_name_says_what_papermill_does():
    specs = inspect_notebook(TYPED)
    with pytest.raises(ResearchError) as info:
        resolve_parameters(specs, {"stepz": "4"})
    assert str(info.value).endswith(
        "(did you mean 'steps'?); papermill would only warn and inject it (`research run --no-check` does the same)"
    )


def test_yaml_parameters_read_as_papermill_reads_them(tmp_path):
    import yaml
    from papermill.iorw import NoDatesSafeLoader

    texts = ["day: 2024-01-31\nlr: 1e-3\nsizes: [1, 2]\nok: yes", "lr: 0.5\nname: '007'"]
    theirs: dict = {}
    for text in texts:
        theirs.update(yaml.load(text, Loader=NoDatesSafeLoader))
    assert parse_yaml_params(texts) == theirs
    assert theirs["day"] == "2024-01-31" and theirs["lr"] == 0.5
    (tmp_path / "p.yaml").write_text(texts[0])
    assert load_params_file(tmp_path / "p.yaml")["day"] == "2024-01-31"
    assert parse_yaml_params([]) == {} and parse_yaml_params([""]) == {}
    with pytest.raises(ResearchError, match=r"^-y '\[1, 2\]' must hold a mapping"):
        parse_yaml_params(["[1, 2]"])
    with pytest.raises(ResearchError, match="could not parse -y"):
        parse_yaml_params(["a: [1"])
    with pytest.raises(ResearchError, match="bad parameter name"):
        parse_yaml_params(["1x: 2"])


# --------------------------------------------------------------------------- CLI input


def test_parse_assignments():
    assert parse_assignments(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(ResearchError, match="expected key=value"):
        parse_assignments(["novalue"])
    with pytest.raises(ResearchError, match="bad parameter name"):
        parse_assignments(["1x=3"])


def test_load_params_file(tmp_path):
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("steps: 5\nname: '007'\nsizes: [1, 2]\n")
    assert load_params_file(yaml_file) == {"steps": 5, "name": "007", "sizes": [1, 2]}
    json_file = tmp_path / "p.json"
    json_file.write_text(json.dumps({"lr": 0.1}))
    assert load_params_file(json_file) == {"lr": 0.1}
    (tmp_path / "empty.yaml").write_text("")
    assert load_params_file(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ResearchError, match="must hold a mapping"):
        load_params_file(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ResearchError, match="could not parse") as info:
        load_params_file(tmp_path / "broken.yaml")
    assert "\n" not in str(info.value)
    with pytest.raises(ResearchError, match="not found"):
        load_params_file(tmp_path / "nope.yaml")
    # typed values from a file are coerced like strings from -p
    specs = inspect_notebook(TYPED)
    assert resolve_parameters(specs, {"lr": 1, "steps": 2.0}) == {"lr": 1.0, "steps": 2}


def test_expand_grid():
    assert expand_grid(["a=1,2", "b=x,y"]) == [
        {"a": "1", "b": "x"},
        {"a": "1", "b": "y"},
        {"a": "2", "b": "x"},
        {"a": "2", "b": "y"},
    ]
    assert expand_grid(["sizes=[1,2],[3,4]", "c=5"]) == [
        {"sizes": "[1,2]", "c": "5"},
        {"sizes": "[3,4]", "c": "5"},
    ]
    assert expand_grid([]) == [{}]
    with pytest.raises(ResearchError, match="given twice"):
        expand_grid(["a=1", "a=2"])
    with pytest.raises(ResearchError, match="empty value"):
        expand_grid(["a=1,,2"])
    with pytest.raises(ResearchError, match="expected key=value"):
        expand_grid(["a"])



def test_a_grid_is_counted_without_being_built():
    grid = parse_grid(["seed=0..999999999", "steps=1..1000000000", "lr=0.1,0.2"])
    assert len(grid) == 10**9 * 10**9 * 2  # counted from the sizes: building it would never end
    points = iter(grid)
    assert next(points) == {"seed": "0", "steps": "1", "lr": "0.1"}
    assert next(points) == {"seed": "0", "steps": "1", "lr": "0.2"}
    assert expand_grid(["a=-1..1", "b=x"]) == [{"a": "-1", "b": "x"}, {"a": "0", "b": "x"}, {"a": "1", "b": "x"}]
    assert expand_grid(["a=1..1"]) == [{"a": "1"}] and len(parse_grid([])) == 1
    with pytest.raises(ResearchError, match="empty range"):
        parse_grid(["a=3..1"])

def test_engine_modules_import_nothing_heavy():
    code = (
        "import sys, research.runs.params, research.runs.child, research.runs.environment\n"
        "heavy = ['papermill', 'nbclient', 'jupyter_client', 'nbformat', 'yaml', 'torch', 'psutil']\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

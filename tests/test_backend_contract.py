"""The backend contract is stated once, in ``xpnet.backend.CONTRACT``: Backend implements exactly its methods,
docs/backends.md's contract table repeats it with Backend's signatures, and every built-in backend (and the
documented example backend) overrides methods without changing their signatures."""

import importlib.util
import inspect
import re
from importlib import import_module
from pathlib import Path

import pytest

from xpnet import backend as registry
from xpnet.backend import CONTRACT, Backend

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "backends.md"
EXAMPLE = ROOT / "docs" / "examples" / "xpnet-tiny-backend" / "xpnet_tiny_backend.py"
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*(.*?)\s*\|$")


def public_methods(cls: type) -> set[str]:
    """Names of the public callables of ``cls`` (its own and inherited)."""
    return {name for name, value in inspect.getmembers(cls) if not name.startswith("_") and callable(value)}


def call_signature(name: str) -> str:
    """``im2col(x, kernel, stride, padding, dilation=(1, 1))``: Backend's method as a caller sees it."""
    params = list(inspect.signature(getattr(Backend, name)).parameters.values())[1:]  # without self
    shown = [p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params]
    return f"{name}({', '.join(shown)})"


def parameters(func) -> list[tuple]:
    """What a call depends on: each parameter's name, kind and default (annotations are only documentation)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


def expected_table() -> str:
    """The contract table docs/backends.md must hold, to paste there when this test fails."""
    rows = [f"| `{call_signature(name)}` | {text} |" for name, text in CONTRACT.items()]
    return "\n".join(["| method | contract |", "|---|---|", *rows])


def doc_rows() -> list[tuple[str, str]]:
    """(signature, contract) of each row of the table under docs/backends.md's "## The contract" heading."""
    lines = DOC.read_text().split("## The contract\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | contract |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        match = ROW.match(line)
        assert match, f"docs/backends.md contract row is not '| `signature` | contract |': {line!r}"
        rows.append(match.groups())
    return rows


def test_contract_names_exactly_the_public_methods_of_backend():
    assert set(CONTRACT) == public_methods(Backend), (
        f"in Backend, not in CONTRACT: {sorted(public_methods(Backend) - set(CONTRACT))}; "
        f"in CONTRACT, not in Backend: {sorted(set(CONTRACT) - public_methods(Backend))}")


def test_each_contract_is_one_table_cell():
    for name, text in CONTRACT.items():
        assert text and "|" not in text and "\n" not in text, f"CONTRACT[{name!r}] must fit one markdown cell"


def test_docs_table_is_the_contract_with_backends_signatures():
    rows = doc_rows()
    names = [signature.split("(", 1)[0] for signature, _ in rows]
    assert len(names) == len(set(names)), f"docs/backends.md lists a method twice: {names}"
    documented = {name: row for name, row in zip(names, rows)}
    expected = {name: (call_signature(name), text) for name, text in CONTRACT.items()}
    help_ = f"docs/backends.md's contract table should read:\n{expected_table()}"
    assert documented.keys() == expected.keys(), help_
    for name, (signature, text) in expected.items():
        assert documented[name][0] == signature, f"{name}: documented {documented[name][0]!r}\n{help_}"
        assert documented[name][1] == text, f"{name}: documented contract differs from CONTRACT\n{help_}"


def builtin_backends() -> list:
    """Each built-in backend's module and class name (imported, not constructed: that would need its device)."""
    params = []
    for name, target in sorted(registry._BUILTIN.items()):
        module, _, attr = target.partition(":")
        missing = name == "numba" and importlib.util.find_spec("numba") is None
        params.append(pytest.param(module, attr, id=name,
                                   marks=pytest.mark.skipif(missing, reason="numba is not installed")))
    return params


def assert_overrides_keep_signatures(cls: type) -> None:
    overridden = [name for name in CONTRACT if getattr(cls, name) is not getattr(Backend, name)]
    for name in overridden:
        assert parameters(getattr(cls, name)) == parameters(getattr(Backend, name)), (
            f"{cls.__name__}.{name}{inspect.signature(getattr(cls, name))} does not keep "
            f"Backend.{name}{inspect.signature(getattr(Backend, name))}")


@pytest.mark.parametrize("module, attr", builtin_backends())
def test_builtin_backends_keep_backends_signatures(module, attr):
    cls = getattr(import_module(module), attr)
    assert issubclass(cls, Backend)
    assert_overrides_keep_signatures(cls)


def test_the_documented_example_backend_keeps_backends_signatures():
    spec = importlib.util.spec_from_file_location("xpnet_tiny_backend_contract_check", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.TinyBackend.col2im is not Backend.col2im  # the example does override something
    assert_overrides_keep_signatures(example.TinyBackend)


def test_a_changed_signature_is_caught():
    """The signature check itself: an override that drops dilation's default, or renames a parameter, fails."""
    class Dropped(Backend):
        def col2im(self, cols, x_shape, stride, padding, dilation):
            return None

    class Renamed(Backend):
        def relu_backward(self, y, g):
            return g

    for cls in (Dropped, Renamed):
        with pytest.raises(AssertionError, match="does not keep"):
            assert_overrides_keep_signatures(cls)

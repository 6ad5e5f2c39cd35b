"""docs/cli.md is the output of ``python -m xpnet.cli_doc``: regenerate it when an option, key or model changes."""

from pathlib import Path

from xpnet import cli_doc
from xpnet.config import FIELD_TYPES, parser
from xpnet.models import DESCRIPTIONS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_cli_md_is_the_generated_page():
    assert PAGE.read_text() == cli_doc.render(), "regenerate it: python -m xpnet.cli_doc > docs/cli.md"


def test_the_page_names_every_option_key_and_model():
    page = cli_doc.render()
    for action in parser()._actions:
        if action.dest != "help":
            assert f"`{max(action.option_strings, key=len)}" in page
    for key in FIELD_TYPES:
        assert f"`{key}`" in page
    for name in DESCRIPTIONS:
        assert f"| `{name}` |" in page

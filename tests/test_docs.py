"""Documentation that is generated from code stays in step with it."""

from pathlib import Path

from magicseg_models.config import configuration_doc

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_matches_the_code():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == configuration_doc(), "regenerate: python -m magicseg_models.config > docs/configuration.md"


def test_readme_has_the_two_setup_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()

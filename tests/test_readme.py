from pathlib import Path

from piunet_dist.config import reference

README = Path(__file__).parent.parent / "README.md"


def test_readme_configuration_reference_is_generated_from_the_dataclasses():
    assert reference() in README.read_text()


def test_readme_starts_with_the_two_commands():
    head = README.read_text().split("## ", 1)[0]
    assert "make demo" in head and "make test" in head

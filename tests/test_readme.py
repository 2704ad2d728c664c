from pathlib import Path

from piunet_dist.core.config_flags import reference

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"


def test_the_settings_page_is_generated_from_the_dataclasses():
    assert reference() in (ROOT / "docs" / "settings.md").read_text()


def test_readme_starts_with_the_two_commands_and_reads_in_five_minutes():
    text = README.read_text()
    head = text.split("## ", 1)[0]
    assert "make demo" in head and "make test" in head
    assert len(text.splitlines()) <= 250
    assert text.index("## Quick start: the real data set on a GPU cluster") < 40 * 80  # near the top


def test_every_page_the_readme_links_is_there():
    import re

    for target in re.findall(r"\]\(([^)#]+)", README.read_text()):
        assert (ROOT / target).is_file(), target


def test_the_readme_model_snippet_runs_on_a_published_format_checkpoint(tmp_path, monkeypatch):
    import torch

    from references.reference_piunet import RefPIUNet

    snippet = (ROOT / "docs" / "code.md").read_text().split("## The model\n\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    torch.save(RefPIUNet().state_dict(), "nir_model_checkpoint.pt")  # the published format: a bare state_dict
    scope = {"lr_dn": 7000 + 500 * torch.rand(2, 9, 32, 32)}
    with torch.no_grad():
        exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["sr_dn"].shape == scope["laplace_scale_dn"].shape == (2, 1, 96, 96)
    assert (scope["laplace_scale_dn"] > 0).all() and 5000 < scope["sr_dn"].mean() < 9000

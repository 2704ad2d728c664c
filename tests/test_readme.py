from pathlib import Path

from piunet_dist.core.config import reference

README = Path(__file__).parent.parent / "README.md"


def test_readme_configuration_reference_is_generated_from_the_dataclasses():
    assert reference() in README.read_text()


def test_readme_starts_with_the_two_commands():
    head = README.read_text().split("## ", 1)[0]
    assert "make demo" in head and "make test" in head


def test_the_readme_model_snippet_runs_on_a_published_format_checkpoint(tmp_path, monkeypatch):
    import torch

    from references.reference_piunet import RefPIUNet

    snippet = README.read_text().split("## The model\n\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    torch.save(RefPIUNet().state_dict(), "nir_model_checkpoint.pt")  # the published format: a bare state_dict
    scope = {"lr_dn": 7000 + 500 * torch.rand(2, 9, 32, 32)}
    with torch.no_grad():
        exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["sr_dn"].shape == scope["laplace_scale_dn"].shape == (2, 1, 96, 96)
    assert (scope["laplace_scale_dn"] > 0).all() and 5000 < scope["sr_dn"].mean() < 9000

import ast
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from piunet_dist.core.errors import UserError
from piunet_dist.network.model import PIUNet, TemporalAttention, filter_frames
from piunet_dist.network.weights import load_weights, model_from_weights
from references.reference_piunet import RefPIUNet
from tests.helpers.models import randomise_norm_stats

TSV = Path(__file__).with_name("piunet_state_dict.tsv")


def published_shapes():
    rows = [line.rstrip("\n").split("\t") for line in TSV.read_text().splitlines() if line and not line.startswith("#")]
    return [(key, tuple(ast.literal_eval(shape))) for key, shape in rows]


def paired_models(n_feat=42, r_bneck=8, n_tefa=16, n_heads=1, seed=0):
    torch.manual_seed(seed)
    ref = randomise_norm_stats(RefPIUNet(n_feat, r_bneck, n_tefa, n_heads))
    fast = PIUNet(n_feat, r_bneck, n_tefa, n_heads)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return fast, ref


def test_state_dict_matches_published_checkpoints():
    model = PIUNet()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == published_shapes()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 828_355


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("n_heads", [1, 2])
def test_matches_straightforward_reference(mode, n_heads):
    fast, ref = paired_models(n_feat=16, r_bneck=4, n_tefa=2, n_heads=n_heads)
    getattr(fast, mode)()
    getattr(ref, mode)()
    x = torch.randn(2, 5, 12, 12)
    x_ref = x.clone().requires_grad_()
    x = x.requires_grad_()
    (mu, s), (mu_r, s_r) = fast(x), ref(x_ref)
    torch.testing.assert_close(mu, mu_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s, s_r, rtol=1e-4, atol=1e-5)
    (mu.square().mean() + s.mean()).backward()
    (mu_r.square().mean() + s_r.mean()).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-3, atol=1e-6)
    for (name, p), p_r in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_r.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_paper_configuration_matches_reference():
    fast, ref = paired_models()
    fast.eval()
    ref.eval()
    x = torch.randn(1, 9, 16, 16)
    with torch.no_grad():
        for a, b in zip(fast(x), ref(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_invariant_to_frame_order(mode):
    torch.manual_seed(1)
    model = randomise_norm_stats(PIUNet(n_feat=16, r_bneck=4, n_tefa=2))
    getattr(model, mode)()
    x = torch.randn(2, 6, 10, 10)
    with torch.no_grad():
        mu, s = model(x)
        for perm in [torch.randperm(6) for _ in range(3)] + [torch.arange(5, -1, -1)]:
            mu_p, s_p = model(x[:, perm])
            torch.testing.assert_close(mu_p, mu, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(s_p, s, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("t, size", [(1, 8), (3, 16), (9, 32), (13, 20)])
def test_output_shapes(t, size):
    model = PIUNet(n_feat=8, r_bneck=4, n_tefa=1).eval()
    with torch.no_grad():
        mu, s = model(torch.randn(2, t, size, size))
    assert mu.shape == s.shape == (2, 1, 3 * size, 3 * size)


def test_rejects_input_without_frame_axis():
    with pytest.raises(ValueError, match=r"\(B, T, X, Y\)"):
        PIUNet(n_feat=8, n_tefa=1)(torch.randn(2, 8, 8))


def hand_attention(att: TemporalAttention, h_btfxy: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per pixel and head, one pixel at a time."""
    b, f, t, x, y = h_btfxy.shape
    heads = att.n_heads
    d = f // heads
    w_q, w_k, w_v = att.in_proj_weight.chunk(3)
    b_q, b_k, b_v = att.in_proj_bias.chunk(3)
    out = torch.empty_like(h_btfxy)
    for i, px, py in itertools.product(range(b), range(x), range(y)):
        tokens = h_btfxy[i, :, :, px, py].T  # (T, F)
        q, k, v = tokens @ w_q.T + b_q, tokens @ w_k.T + b_k, tokens @ w_v.T + b_v
        per_head = []
        for j in range(heads):
            sl = slice(j * d, (j + 1) * d)
            weights = torch.softmax(q[:, sl] @ k[:, sl].T / d**0.5, dim=-1)
            per_head.append(weights @ v[:, sl])
        out[i, :, :, px, py] = (att.out_proj(torch.cat(per_head, dim=1))).T
    return out


@pytest.mark.parametrize("n_heads", [1, 3])
def test_temporal_attention_matches_hand_written(n_heads):
    torch.manual_seed(2)
    att = TemporalAttention(12, n_heads)
    with torch.no_grad():
        att.in_proj_bias.normal_()
        att.out_proj.bias.normal_()
    b, t, f, x, y = 2, 4, 12, 3, 5
    h = torch.randn(b, f, t, x, y)
    frames = h.permute(0, 2, 1, 3, 4).reshape(b * t, f, x, y).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = att(frames, t).reshape(b, t, f, x, y).permute(0, 2, 1, 3, 4)
        torch.testing.assert_close(got, hand_attention(att, h), rtol=1e-4, atol=1e-5)
        mha = nn.MultiheadAttention(f, n_heads)
        mha.load_state_dict(att.state_dict())
        seq = h.permute(2, 0, 3, 4, 1).reshape(t, b * x * y, f)
        want = mha(seq, seq, seq, need_weights=False)[0].reshape(t, b, x, y, f).permute(1, 4, 0, 2, 3)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_per_frame_filtering_matches_hand_written():
    torch.manual_seed(3)
    n, c, x, y = 6, 3, 7, 9
    h = torch.randn(n, c, x, y)
    filters = torch.randn(n, 1, 5, 5)
    want = torch.zeros_like(h)
    padded = torch.nn.functional.pad(h, (2, 2, 2, 2))
    for i, ch, px, py in itertools.product(range(n), range(c), range(x), range(y)):
        want[i, ch, px, py] = (padded[i, ch, px : px + 5, py : py + 5] * filters[i, 0]).sum()
    torch.testing.assert_close(filter_frames(h, filters), want, rtol=1e-5, atol=1e-5)


# --- weights -----------------------------------------------------------------------


def test_published_format_file_loads_strictly_and_gives_reference_outputs(tmp_path):
    _, ref = paired_models()
    path = tmp_path / "nir_model_checkpoint.pt"
    torch.save(ref.state_dict(), path)
    model = model_from_weights(path).eval()
    ref.eval()
    x = torch.randn(1, 9, 16, 16)
    with torch.no_grad():
        for a, b in zip(model(x), ref(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_project_checkpoint_forms_load(tmp_path):
    from safetensors.torch import save_file

    model = PIUNet(n_feat=8, r_bneck=4, n_tefa=2)
    state = {"module._orig_mod." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "step": 3}, tmp_path / "wrapped.pt")
    (tmp_path / "step_0000003").mkdir()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "step_0000003" / "model.safetensors")
    )
    for source in (tmp_path / "wrapped.pt", tmp_path / "step_0000003"):
        loaded = model_from_weights(source)
        assert (loaded.conv_in.weight.shape[0], len(loaded.res)) == (8, 2)
        torch.testing.assert_close(loaded.conv_in.weight, model.conv_in.weight)


def test_mismatched_checkpoints_say_what_is_wrong(tmp_path):
    small = PIUNet(n_feat=8, r_bneck=4, n_tefa=2)
    torch.save(small.state_dict(), tmp_path / "small.pt")
    with pytest.raises(UserError, match=r"small\.pt: does not fit.*wrong shapes: conv_in\.weight"):
        load_weights(PIUNet(n_feat=16, r_bneck=4, n_tefa=2), tmp_path / "small.pt")
    with pytest.raises(UserError, match=r"unexpected keys: res\.2\."):
        load_weights(PIUNet(n_feat=8, r_bneck=4, n_tefa=2), _with_extra_block(tmp_path))
    state = small.state_dict()
    del state["norm0.running_var"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(UserError, match=r"1 missing keys: norm0\.running_var"):
        load_weights(PIUNet(n_feat=8, r_bneck=4, n_tefa=2), tmp_path / "missing.pt")


def _with_extra_block(tmp_path):
    torch.save(PIUNet(n_feat=8, r_bneck=4, n_tefa=3).state_dict(), tmp_path / "three.pt")
    return tmp_path / "three.pt"


def test_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    torch.save({"lr": 1e-4}, tmp_path / "config.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    for name in ("notes.txt", "config.pt", "tensor.pt"):
        with pytest.raises(UserError, match=rf"{name}: not a (readable )?checkpoint"):
            model_from_weights(tmp_path / name)
    with pytest.raises(UserError, match="no such checkpoint"):
        model_from_weights(tmp_path / "absent.pt")
    with pytest.raises(UserError, match="not a checkpoint directory"):
        model_from_weights(tmp_path)


def test_checkpointed_blocks_give_the_same_outputs_gradients_and_statistics():
    import copy

    torch.manual_seed(0)
    plain = randomise_norm_stats(PIUNet(n_feat=8, r_bneck=4, n_tefa=2))
    recomputed = copy.deepcopy(plain)
    recomputed.checkpoint_blocks = True
    x = torch.randn(2, 5, 16, 16)
    for model in (plain, recomputed):
        for _ in range(2):
            mu, s = model(x)
            (mu.square().mean() + s.mean()).backward()
    for (key, a), b in zip(plain.state_dict().items(), recomputed.state_dict().values()):
        assert torch.equal(a, b), key  # batch-norm statistics updated once per forward, not again in backward
    for (key, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        assert torch.equal(a.grad, b.grad), key

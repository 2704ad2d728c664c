import dataclasses
from pathlib import Path

import pytest

from piunet_dist.__main__ import main
from piunet_dist.core.config import Config, config_hash, to_yaml
from piunet_dist.core.config_flags import reference
from piunet_dist.core.config_load import check_world, load_config
from piunet_dist.core.errors import UserError

CONFIGS = Path(__file__).parent.parent / "configs"


def test_base_is_the_paper_recipe():
    cfg = load_config(CONFIGS / "base.yaml")
    assert (cfg.model.n_feat, cfg.model.r_bneck, cfg.model.n_tefa, cfg.model.n_heads) == (42, 8, 16, 1)
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay, cfg.train.grad_clip) == (24, 1e-4, 0.0, 15.0)
    assert (cfg.train.lr_milestones, cfg.train.lr_gamma) == ([150_000], 0.2)
    assert (cfg.data.n_frames, cfg.data.patch, cfg.data.min_clear, cfg.data.min_clearance) == (9, 32, 0.1, 0.85)


@pytest.mark.parametrize("name, band", [("nir", "NIR"), ("red", "RED"), ("demo", "NIR")])
def test_band_and_demo_files_extend_base(name, band):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.data.band == band and cfg.train.grad_clip == 15.0


def test_overrides_are_typed():
    cfg = load_config(
        CONFIGS / "base.yaml",
        ["train.lr=3e-4", "train.lr_milestones=[10, 20]", "data.register=true", "run_dir=/tmp/x", "train.max_steps=7"],
    )
    assert cfg.train.lr == 3e-4 and cfg.train.lr_milestones == [10, 20]
    assert cfg.data.register is True and cfg.run_dir == "/tmp/x" and cfg.train.max_steps == 7
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # an integer is a number
    # YAML 1.1 would read these as booleans; a setting's own type decides
    words = load_config(None, ["train.sync_bn=on", "train.precision=no", "data.augment=no", "run_dir=yes"])
    assert (words.train.sync_bn, words.train.precision, words.data.augment, words.run_dir) == ("on", "no", False, "yes")


def test_batch_sizes_of_whole_scenes_are_auto_or_a_number(tmp_path):
    assert (Config().train.val_batch_size, Config().eval.batch_size) == ("auto", "auto")
    (tmp_path / "c.yaml").write_text("train:\n  val_batch_size: 4\neval:\n  batch_size: auto\n")
    cfg = load_config(tmp_path / "c.yaml", ["eval.batch_size=16"])
    assert (cfg.train.val_batch_size, cfg.eval.batch_size) == ("4", "16")
    with pytest.raises(UserError, match="train.val_batch_size: expected auto or a positive whole number, got '0'"):
        load_config(None, ["train.val_batch_size=0"])


def test_yaml_booleans_become_the_words_a_setting_takes(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  sync_bn: off\n  precision: no\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.train.sync_bn, cfg.train.precision) == ("off", "no")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_step=5", "unknown setting train.max_step; did you mean train.max_steps?"),
        ("trian.lr=1", "unknown setting trian; did you mean train?"),
        ("train.max_steps=abc", "train.max_steps: expected an integer, got 'abc'"),
        ("train.max_steps=true", "train.max_steps: expected an integer, got 'true'"),
        ("train.precision=fp8", "train.precision: 'fp8' is not one of auto, no, bf16, fp16"),
        ("data.min_clear=1.5", "data.min_clear: must be in [0, 1), got 1.5"),
        ("train.batch_size=0", "train.batch_size: must be positive, got 0"),
        ("model.n_heads=5", "model.n_feat: 42 is not divisible by model.n_heads=5"),
        ("model.attention=flash", "model.attention: 'flash' is not one of auto, sdpa, matmul, triton"),
        ("eval.precision=fp16", "eval.precision: 'fp16' is not one of auto, no, bf16"),
        ("train=3", "train is a section; give it as train.<setting>"),
        ("train.lr=nan", "train.lr: must be positive, got nan"),
        ("train.lr=inf", "train.lr: must be a finite number, got inf"),
        ("train.lr_gamma=-0.2", "train.lr_gamma: must be positive, got -0.2"),
        ("train.weight_decay=-1", "train.weight_decay: must not be negative, got -1.0"),
        ("train.l1_warmup_steps=-3", "train.l1_warmup_steps: must not be negative, got -3"),
        ("train.seed=-1", "train.seed: must not be negative, got -1"),
        ("launch.max_requeues=-1", "launch.max_requeues: must not be negative, got -1"),
        ("data.workers=-1", "data.workers: must not be negative, got -1"),
        ("data.max_skipped_share=1", "data.max_skipped_share: must be in [0, 1), got 1.0"),
        ("train.lr", "'train.lr': expected section.key=value"),
        ("launch.gpus_per_node=-1", "launch.gpus_per_node: expected auto or a whole number of at least 0, got '-1'"),
        ("launch.gpus_per_node=some", "launch.gpus_per_node: expected auto or a whole number of at least 0"),
        (
            "train.init_weights=w.pt",  # base.yaml's L1 epoch on a trained network
            "train.l1_warmup_steps: 260 steps of the L1 loss at the start of a fine-tune from train.init_weights; "
            "give train.l1_warmup_steps=0 (as configs/finetune.yaml does)",
        ),
    ],
)
def test_bad_settings_say_what_is_wrong(override, message):
    with pytest.raises(UserError) as e:
        load_config(CONFIGS / "base.yaml", [override])
    assert message in str(e.value)


def test_global_batch_must_split_over_processes():
    cfg = load_config(None, ["train.batch_size=24", "train.grad_accum=2"])
    assert check_world(cfg, 3) == 4
    with pytest.raises(
        UserError, match=r"train.batch_size: 24 patches \(train.grad_accum=2\) do not split evenly over 5"
    ):
        check_world(cfg, 5)


def test_yaml_files_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(UserError, match="extends itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("train:\n  bach_size: 4\n")
    with pytest.raises(UserError, match=r"typo.yaml: unknown setting train.bach_size; did you mean train.batch_size\?"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(UserError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_every_mistake_of_a_yaml_file_is_reported_at_once(tmp_path):
    (tmp_path / "three.yaml").write_text("train:\n  bach_size: 4\n  lr: fast\ndata:\n  band: [NIR]\n")
    with pytest.raises(UserError) as e:
        load_config(tmp_path / "three.yaml", ["model.n_fet=8"])
    assert str(e.value).splitlines() == [
        "4 mistakes in the settings:",
        f"  {tmp_path / 'three.yaml'}: unknown setting train.bach_size; did you mean train.batch_size?",
        f"  {tmp_path / 'three.yaml'}: train.lr: expected a number, got 'fast'",
        f"  {tmp_path / 'three.yaml'}: data.band: expected a string, got ['NIR']",
        "  override: unknown setting model.n_fet; did you mean model.n_feat?",
    ]


def test_resolved_yaml_round_trips_and_hash_ignores_where_it_runs(tmp_path):
    cfg = load_config(CONFIGS / "demo.yaml")
    (tmp_path / "r.yaml").write_text(to_yaml(cfg))
    again = load_config(tmp_path / "r.yaml")
    assert again == cfg
    moved = load_config(tmp_path / "r.yaml", ["run_dir=/elsewhere", "launch.nodes=4"])
    assert config_hash(moved) == config_hash(cfg)
    assert config_hash(load_config(tmp_path / "r.yaml", ["train.lr=0.5"])) != config_hash(cfg)


def test_reference_lists_every_setting_with_its_meaning():
    table = reference()
    for key in (
        "run_dir",
        "data.shards",
        "data.band",
        "train.max_steps",
        "train.val_every",
        "train.ckpt_every",
        "train.batch_size",
        "train.precision",
        "train.seed",
        "launch.nodes",
        "eval.self_ensemble",
    ):
        assert f"| `{key}` |" in table
    leaves = sum(
        len(dataclasses.fields(getattr(Config(), f.name))) if dataclasses.is_dataclass(getattr(Config(), f.name)) else 1
        for f in dataclasses.fields(Config)
    )
    assert len(table.splitlines()) == 2 + leaves


def test_cli_reports_one_line_and_exit_code_2(capsys):
    assert main(["train", "--config", str(CONFIGS / "demo.yaml"), "train.max_step=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["piunet-dist train: error: override: unknown setting train.max_step; did you mean train.max_steps?"]


def test_evaluate_reads_its_settings_from_the_eval_section_and_the_flags_win(tmp_path):
    from piunet_dist.__main__ import build_command_parser
    from piunet_dist.evaluation.evaluate import eval_settings

    yaml_file = tmp_path / "eval.yaml"
    yaml_file.write_text("eval:\n  ensemble: median\n  split: test\n  batch_size: 3\n")
    parser = build_command_parser("evaluate")
    settings = eval_settings(parser.parse_args(["--runs", "r", "--config", str(yaml_file), "--split", "val"]))
    assert (settings.ensemble, settings.split, settings.batch_size, settings.out) == ("median", "val", "3", "runs/eval")
    defaults = eval_settings(parser.parse_args(["--runs", "r"]))
    assert defaults == Config().eval
    with pytest.raises(SystemExit):
        parser.parse_args(["--runs", "r", "--ensemble", "vote"])


def test_a_fine_tune_keeps_its_schedule_inside_its_steps_and_its_recipe_passes():
    with pytest.raises(UserError) as e:
        load_config(
            CONFIGS / "base.yaml", ["train.init_weights=w.pt", "train.l1_warmup_steps=0", "train.max_steps=9000"]
        )
    assert str(e.value) == (
        "train.lr_milestones: [150000] at or beyond this fine-tune's train.max_steps=9000; give milestones inside "
        "its steps (configs/finetune.yaml has [15000] of 20000), or []"
    )
    recipe = load_config(CONFIGS / "finetune.yaml", ["train.init_weights=w.pt"])
    assert recipe.train.l1_warmup_steps == 0 and recipe.train.lr_milestones == [15000] < [recipe.train.max_steps]


def test_gpus_and_precision_default_to_what_the_machine_has():
    cfg = load_config(CONFIGS / "base.yaml", ["launch.gpus_per_node=4"])
    assert (Config().launch.gpus_per_node, Config().train.precision, cfg.launch.gpus_per_node) == ("auto", "auto", "4")
    assert load_config(CONFIGS / "base.yaml").train.precision == "auto"
    import torch

    from piunet_dist.evaluation.inference import resolve_precision

    cpu = torch.device("cpu")  # this machine's
    assert resolve_precision("auto", cpu, "train.precision") == ("no", "train.precision auto: float32 without a GPU")
    assert resolve_precision("bf16", cpu, "train.precision") == ("bf16", "")


def test_help_gives_every_settings_default():
    import json

    from piunet_dist.launch.cli import build_evaluate_parser, build_parser

    for parser, sections in ((build_parser(), ("launch",)), (build_evaluate_parser(), ("eval", "launch"))):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            for section in sections:
                defaults = getattr(Config(), section)
                value = getattr(defaults, action.dest, None)
                if action.dest in defaults.__dict__ and not isinstance(value, bool):
                    assert f"(default {json.dumps(value)}: {section}.{action.dest})" in text, action.dest


def test_trackers_are_a_list_of_names_each_known_and_installed_or_all():
    from piunet_dist.core.tracking import resolve

    assert load_config(CONFIGS / "base.yaml", ["train.log_with=tensorboard, mlflow"]).train.log_with == [
        "tensorboard",
        "mlflow",
    ]
    assert load_config(CONFIGS / "base.yaml", ["train.log_with=[wandb]"]).train.log_with == ["wandb"]
    with pytest.raises(UserError, match=r"train.log_with: expected a list of names \(a,b or \[a, b\]\), got 3"):
        load_config(CONFIGS / "base.yaml", ["train.log_with=3"])
    assert {"tensorboard", "wandb", "mlflow"} <= set(resolve(["all"]))  # the dev extras install both
    assert resolve(["tensorboard", "wandb", "tensorboard"]) == ["tensorboard", "wandb"]
    with pytest.raises(UserError, match="train.log_with: 'wandbb' is not a tracker: tensorboard, wandb, mlflow"):
        resolve(["wandbb"])

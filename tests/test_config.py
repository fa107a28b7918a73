"""Config loading: schema defaults, YAML, dotted overrides, and errors that name the key."""

import os
import subprocess
import sys

import pytest

from aim_video.config import Config, ConfigError, from_dict, load_config, save_config, to_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  num_frames: 16\nmodel:\n  vit_kwargs: {depth: 2}\n")
    cfg = load_config(str(path), ["data.batch_size=3", "train.betas=[0.8,0.9]", "model.vit_kwargs.embed_dim=32"])
    assert isinstance(cfg, Config)
    assert cfg.data.num_frames == 16 and cfg.data.batch_size == 3
    assert tuple(cfg.train.betas) == (0.8, 0.9)
    assert cfg.model.vit_kwargs == {"depth": 2, "embed_dim": 32}
    assert cfg.data.frame_stride == 16  # schema default kept


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.num_workrs=2"])
    msg = str(err.value)
    assert "data.num_workrs" in msg and "Did you mean 'num_workers'" in msg and "Allowed keys here:" in msg
    path = tmp_path / "c.yaml"
    path.write_text("modle:\n  arch: x\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'modle'. Did you mean 'model'"):
        load_config(str(path))


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"bad value for config key 'train.lr'"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent.yaml")


def test_a_number_other_than_0_or_1_for_a_bool_key_is_refused(tmp_path):
    # OmegaConf alone reads any int as a bool: flip=2 trained with flips, silently
    with pytest.raises(ConfigError, match=r"'data.flip': 2 is not a bool"):
        load_config(None, ["data.flip=2"])
    (tmp_path / "c.yaml").write_text("model:\n  grad_checkpointing: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: bad value for config key 'model.grad_checkpointing': 3"):
        load_config(str(tmp_path / "c.yaml"))
    cfg = load_config(None, ["data.flip=0", "model.compile=1", "data.pin_memory=false"])
    assert (cfg.data.flip, cfg.model.compile, cfg.data.pin_memory) == (False, True, False)


def test_an_empty_override_is_an_empty_value_not_null():
    assert load_config(None, ["model.pretrained="]).model.pretrained == ""
    with pytest.raises(ConfigError, match="bad value for config key 'train.epochs'"):
        load_config(None, ["train.epochs="])


def test_round_trip_and_saved_file(tmp_path):
    cfg = load_config(None, ["data.num_frames=4", "model.vit_kwargs={depth: 2}"])
    assert from_dict(to_dict(cfg)) == cfg
    path = save_config(cfg, str(tmp_path / "run"))
    assert load_config(path) == cfg
    assert not [f for f in os.listdir(tmp_path / "run") if ".tmp" in f]


def test_every_shipped_config_loads():
    folder = os.path.join(REPO, "configs")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert "demo.yaml" in names
    for name in names:
        load_config(os.path.join(folder, name))


def test_cli_exits_nonzero_naming_bad_key():
    script = os.path.join(REPO, "tools", "pretrain_backbone.py")
    proc = subprocess.run(
        [sys.executable, script, "--config", os.path.join(REPO, "configs", "demo.yaml"), "data.bogus_key=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "data.bogus_key" in proc.stderr and "Allowed keys here" in proc.stderr


def test_a_value_that_is_not_one_of_the_names_stops_at_load_time():
    """model.method=foo or data.sampling=foo surfaced only once a model or a worker used them."""
    from aim_video.config import CHOICES, ConfigError, load_config

    with pytest.raises(ConfigError, match=r"'eval.average': 'probs' is not one of .*Did you mean 'prob'\?"):
        load_config(None, ["eval.average=probs"])
    with pytest.raises(ConfigError, match=r"'data.sampling': 'foo' is not one of 'dense', 'uniform'"):
        load_config(None, ["data.sampling=foo"])
    cfg = load_config(None, [])
    for key, allowed in CHOICES.items():  # every default is one of its names
        section, leaf = key.split(".")
        assert getattr(getattr(cfg, section), leaf) in allowed, key


def test_a_key_given_twice_with_other_values_is_named(capsys, monkeypatch):
    """`--resume auto train.epochs=4 ... train.epochs=3` resumed into 'nothing to train' with no hint why."""
    import aim_video.config as config
    from aim_video.config import load_config

    monkeypatch.setattr(config, "_WARNED", set())
    monkeypatch.delenv("RANK", raising=False)
    assert load_config(None, ["train.epochs=4", "train.lr=0.1", "train.epochs=3"]).train.epochs == 3
    assert "warning: train.epochs is given as 4, 3: the last one counts" in capsys.readouterr().err
    load_config(None, ["output_dir=x", "output_dir=x"])  # the same value twice (tools append their own): quiet
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.frame_stride=0", "'data.frame_stride': 0; it must be at least 1"),  # every frame the same one
        ("data.frame_stride=-4", "'data.frame_stride': -4; it must be at least 1"),  # a clip played backwards
        ("data.test_num_crops=2", "'data.test_num_crops': 2; it must be 1 (centre) or 3"),
        ("eval.view_chunk=0", "'eval.view_chunk': 0; it must be at least 1"),
        ("data.rrc_scale=[0.9,0.5]", "'data.rrc_scale': (0.9, 0.5); it must be (min, max) with 0 < min <= max <= 1"),
        ("model.drop_path_rate=1.0", "'model.drop_path_rate': 1.0; it must be in [0, 1)"),
        ("data.rand_augment_m=31", "'data.rand_augment_m': 31; it must be a magnitude in 0..30"),
        ("data.test_short_side=16", "data.test_short_side=16 is smaller than data.input_size=224"),
        ("data.rrc_scale=[0.5,1.0", "override 'data.rrc_scale=[0.5,1.0': its value is not valid YAML"),
        ("train.base_batch_size=0", "'train.base_batch_size': 0; it must be at least 1"),  # ZeroDivisionError
        ("train.backbone_lr_mult=-1", "'train.backbone_lr_mult': -1.0; it must be more than 0"),  # gradient ascent
        ("train.min_lr=0.1", "train.min_lr=0.1 is above train.lr=0.0003"),  # the lr rose after warm-up
        # the authors' mmaction statistics are on 0-255: the model saw a nearly constant input
        ("data.mean=[122.769,116.74,104.04]", "'data.mean': (122.769, 116.74, 104.04); it must be per-channel"),
        ("data.std=[0.2,0,0.2]", "divide 0-255 statistics by 255"),  # a ZeroDivisionError at the first batch
        ("data.decode_device=gpu", "'data.decode_device': 'gpu'; it must be cpu, cuda or cuda:N"),  # every video
        ("train.seed=-1", "'train.seed': -1; it must be 0 or more"),  # a ValueError at the first batch
        # a bad element said "Value '$VALUE' of type '$VALUE_TYPE'", or called an existing key unknown
        ("data.mean=[0.5,0.5,x]", "'data.mean': an element of [0.5, 0.5, 'x'] could not be converted to Float"),
        ("profile.batch_sizes=[8,3x]", "'profile.batch_sizes[1]': Value '3x' of type 'str' could not be converted"),
    ],
)
def test_a_value_out_of_range_or_malformed_stops_at_load_time_naming_the_key(override, message):
    """These were accepted, then trained on something else than asked (a repeated frame), failed at the first
    evaluation hours later, or (a malformed list) ended in a YAML scanner traceback."""
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_a_warm_up_longer_than_the_run_is_allowed_with_a_warning(capsys, monkeypatch):
    import aim_video.config as config

    monkeypatch.setattr(config, "_WARNED", set())  # what other tests' configs warned of
    monkeypatch.delenv("RANK", raising=False)
    cfg = load_config(None, ["train.warmup_epochs=40"])
    assert cfg.train.warmup_epochs == 40 and capsys.readouterr().err == ""  # evaluations load it too: not told
    config.warn_training_settings(cfg)  # training is
    assert "train.warmup_epochs=40.0 is longer than train.epochs=30" in capsys.readouterr().err
    config.warn_training_settings(load_config(None, ["train.warmup_epochs=40", "train.max_steps=100"]))
    assert capsys.readouterr().err == ""  # max_steps fits it in: no warning
    # a recipe's test_short_side=224 with a smaller input: evaluated on crops of part of the frame (55.6% vs 77.8%)
    load_config(None, ["data.input_size=112"])
    assert "data.test_short_side=224 is 2x data.input_size=112" in capsys.readouterr().err
    load_config(None, ["data.test_short_side=256"])  # resize 256, crop 224: the usual, no warning
    assert capsys.readouterr().err == ""
    # once per process, and in the first rank's only: every rank loads the config, resumes and evaluations again
    load_config(None, ["data.input_size=112"])
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(config, "_WARNED", set())
    monkeypatch.setenv("RANK", "3")
    load_config(None, ["data.input_size=112"])
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    load_config(None, ["data.input_size=112"])
    assert "data.test_short_side=224 is 2x" in capsys.readouterr().err


def test_a_run_saves_its_paths_absolute(tmp_path, monkeypatch):
    """config.yaml and the weights kept `root: v64`, `class_map: lists/classes.txt` as typed: tools/test.py and
    infer.py resolved them against their own folder and failed anywhere but where training ran."""
    from aim_video.config import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    given = ["data.root=v64", "data.class_map=lists/classes.txt", "output_dir=runs/a"]
    given += ["data.verify_report=r/train.json, r/val.json", "model.pretrained=", "data.test_list="]
    given += ["data.train_list='lists/k400,v2/train.txt'"]  # a comma in a folder name: one path, not two
    cfg = load_config(None, given)
    out = with_absolute_paths(cfg)
    assert out.data.root == str(tmp_path / "v64") and out.data.class_map == str(tmp_path / "lists" / "classes.txt")
    assert out.data.train_list == str(tmp_path / "lists" / "k400,v2" / "train.txt")
    assert out.output_dir == str(tmp_path / "runs" / "a")
    assert out.data.verify_report == f"{tmp_path}/r/train.json,{tmp_path}/r/val.json"
    assert out.model.pretrained == "" and out.data.test_list == ""  # unset stays unset
    assert with_absolute_paths(load_config(None, [])).data.root == str(tmp_path)  # relative list entries start here
    assert cfg.data.root == "v64"  # a copy: the caller's config is untouched


def test_a_config_file_that_is_not_yaml_or_not_a_mapping_is_a_config_error(tmp_path):
    """Both gave a traceback and exit status 1 (a PyYAML scanner error; OmegaConf's merge of a list)."""
    broken, listed, empty = tmp_path / "broken.yaml", tmp_path / "list.yaml", tmp_path / "empty.yaml"
    broken.write_text("data:\n  root: [abc\n")
    listed.write_text("- data\n- model\n")
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML: .*line 2, column 9"):
        load_config(str(broken))
    with pytest.raises(ConfigError, match=r"list.yaml: a config is a mapping of sections"):
        load_config(str(listed))
    assert load_config(str(empty)) == load_config()  # an empty file: the defaults


def test_a_list_of_the_wrong_length_names_its_key_and_how_to_write_it(tmp_path):
    """OmegaConf's error for a tuple of another length names no key: 'TupleConfig length 2 does not match ...'."""
    with pytest.raises(ConfigError, match=r"override: bad value for config key 'data.mean': .*length 2 .*\[a, b, c\]"):
        load_config(None, ["data.mean=[0.5,0.5]"])
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data:\n  std: [0.5, 0.5]\n")
    with pytest.raises(ConfigError, match=r"c.yaml: bad value for config key 'data.std'"):
        load_config(str(yaml_file))
    with pytest.raises(ConfigError, match=r"'data.rrc_scale': .*a list is written \[a, b, c\]"):
        load_config(None, ["data.rrc_scale=0.5"])
    with pytest.raises(ConfigError, match="data.batch_size") as scalar:  # a list for a number: no list advice
        load_config(None, ["data.batch_size=[1,2]"])
    assert "a list is written" not in str(scalar.value)


def test_an_empty_output_dir_or_one_that_is_a_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="output_dir is empty"):
        load_config(None, ["output_dir="])
    (tmp_path / "config.yaml").write_text("")
    with pytest.raises(ConfigError, match="config.yaml is a file"):
        load_config(None, [f"output_dir={tmp_path / 'config.yaml'}"])


def test_an_interpolation_may_name_a_key_of_the_file_or_of_the_defaults(tmp_path):
    """The bool check resolved each source on its own: `${data.root}` in an override failed as 'Interpolation key
    not found' although the config file sets data.root."""
    cfg = load_config(
        os.path.join(REPO, "configs", "k400_vit_b16_8f.yaml"),
        ["data.train_list=${data.root}/t.txt", "output_dir=runs/${data.num_frames}f"],
    )
    assert (cfg.data.train_list, cfg.output_dir) == ("data/k400/videos/t.txt", "runs/8f")
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  root: ${output_dir}/videos\n")
    assert load_config(str(path), []).data.root == "runs/default/videos"
    # a bool that names a number other than 0/1 is refused as a literal 8 is (it was read as true)
    with pytest.raises(ConfigError, match=r"'train.scale_lr': \$\{data.num_frames\} is 8, not a bool"):
        load_config(None, ["train.scale_lr=${data.num_frames}"])
    assert load_config(None, ["train.scale_lr=${data.flip}"]).train.scale_lr is True
    # relative keys and resolvers too (both read as true), and interpolations that cannot resolve, without a traceback
    with pytest.raises(ConfigError, match=r"'train.scale_lr': \$\{.seed\} is 5, not a bool"):
        load_config(None, ["train.seed=5", "train.scale_lr=${.seed}"])
    with pytest.raises(ConfigError, match=r"'train.scale_lr': \$\{oc.env:AIM_VIDEO_UNSET,7\} is '7', not a bool"):
        load_config(None, ["train.scale_lr=${oc.env:AIM_VIDEO_UNSET,7}"])
    assert load_config(None, ["train.scale_lr=${oc.env:AIM_VIDEO_UNSET,true}"]).train.scale_lr is True
    with pytest.raises(ConfigError, match=r"'train.scale_lr': .*'decord' is not a valid bool"):
        load_config(None, ["train.scale_lr=${data.backend}"])
    with pytest.raises(ConfigError, match=r"'data.num_frames': Interpolation key 'data.nope' not found"):
        load_config(None, ["data.num_frames=${data.nope}"])
    with pytest.raises(ConfigError, match=r"'data.num_frames': .*'decord' of type 'str' could not be converted"):
        load_config(None, ["data.num_frames=${data.backend}"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.num_frames=0", "'data.num_frames': 0; it must be at least 1"),  # an empty clip
        ("train.grad_accum_steps=0", "'train.grad_accum_steps': 0; it must be at least 1"),  # no optimizer step
        ("train.label_smoothing=1.0", "'train.label_smoothing': 1.0; it must be in [0, 1)"),  # a uniform target
        ("data.rrc_scale=[0.5,1.5]", "'data.rrc_scale': (0.5, 1.5); it must be (min, max) with 0 < min <= max <= 1"),
        ("data.test_num_clips=0", "'data.test_num_clips': 0; it must be at least 1"),  # no view to evaluate
        ("train.precision=fp8", "'train.precision': 'fp8' is not one of 'bf16', 'fp16', 'fp32'"),
        ("data.decode_device=cpu0", "'data.decode_device': 'cpu0'; it must be cpu, cuda or cuda:N"),
        ("data.decode_device=cuda:0x", "'data.decode_device': 'cuda:0x'; it must be cpu, cuda or cuda:N"),
    ],
)
def test_more_values_out_of_range_stop_at_load_time(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.lr=0.001", "train.min_lr=0.001"],  # a constant lr after the warm-up: min_lr may equal lr
        ["train.lr=0", "train.min_lr=0"],  # a frozen run (lr 0), as a test of the data path
        ["train.label_smoothing=0", "model.drop_path_rate=0", "model.head_dropout=0"],
        ["data.rand_augment_m=30", "data.random_erasing=1", "data.rrc_scale=[1.0,1.0]"],
        ["data.decode_device=cuda:1", "data.decode_device=cuda", "data.test_num_crops=3"],
        ["data.num_frames=1", "data.frame_stride=1", "train.grad_accum_steps=1", "data.test_num_clips=1"],
    ],
)
def test_the_edges_of_each_range_are_accepted(overrides):
    load_config(None, overrides)

"""tools/profile.py: --quick with overrides around it writes profile.json and prints the table; a bad key exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from aim_video.config import to_yaml
from tests.profiling.conftest import tiny_config
from tests.tools.conftest import PYTHONPATH, REPO


def test_cli_quick_writes_json_and_bad_key_exits_2(demo_root, tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1")
    cfg = tiny_config(demo_root)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(to_yaml(cfg))
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "tools/profile.py"), "--config", str(config_path)]
    small = ["profile.max_workers=1", "profile.steps=2", "data.input_size=32", "model.vit_kwargs.img_size=32"]
    # overrides before, between and after the options (argparse's parse_args refused the ones among them)
    mixed = [*small[:1], "--quick", *small[1:3], "--out", str(out), *small[3:]]
    done = subprocess.run([*cmd, *mixed], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "verdict:" in done.stdout and "clips/s" in done.stdout
    with open(out / "profile.json") as f:
        result = json.load(f)
    assert [row["batch_size"] for row in result["model"]] == [1, 4]  # --quick's batch sizes
    assert [row["workers"] for row in result["loader"]] == [1]  # the overrides after --quick win
    assert result["end_to_end"]["steps"] == 2 and result["config"]["input_size"] == 32
    bad = subprocess.run([*cmd, "profile.max_wrokers=2", "--quick"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "max_workers" in bad.stderr and "unrecognized" not in bad.stderr


def test_tools_dir_does_not_shadow_the_stdlib_profile_module() -> None:
    """Scripts in tools/ run with tools/ first on sys.path; `import cProfile` (torch._dynamo does it when timm loads)
    must still get the standard library's `profile`, not tools/profile.py."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.join(REPO, 'tools')!r}); import cProfile, profile; "
        "assert hasattr(profile, 'Profile') and hasattr(profile, 'run'), profile.__file__; "
        "cProfile.run('sum(range(10))', sort='calls'); print(profile.__file__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not done.stdout.strip().splitlines()[-1].startswith(os.path.join(REPO, "tools"))


SMALL = ["--quick", "profile.max_workers=1", "profile.steps=2", "profile.batch_sizes=[1]", "data.input_size=32",
         "model.vit_kwargs.img_size=32"]  # fmt: skip


def _profile(config_path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools/profile.py"), "--config", str(config_path), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_writes_into_output_dir_profile_by_default(demo_root, tmp_path) -> None:
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(to_yaml(tiny_config(demo_root)))
    run = tmp_path / "run"
    done = _profile(config_path, *SMALL, f"output_dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"[profile] wrote {run / 'profile' / 'profile.json'}" in done.stdout
    assert json.load(open(run / "profile" / "profile.json"))["end_to_end"]["steps"] == 2
    assert os.listdir(run) == ["profile"]


def test_cli_a_train_list_that_does_not_exist_is_status_2(demo_root, tmp_path) -> None:
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(to_yaml(tiny_config(demo_root)))
    missing = f"data.train_list={tmp_path / 'no_such_list.txt'}"
    done = _profile(config_path, *SMALL, missing, "--out", str(tmp_path / "o"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error:" in done.stderr and "no_such_list.txt" in done.stderr and "Traceback" not in done.stderr


def test_cli_a_backbone_file_that_does_not_fit_is_status_2_not_a_traceback(demo_root, tmp_path) -> None:
    """tools/train.py, test.py and infer.py end a model.pretrained file of another architecture with one error line
    and status 2; tools/profile.py caught AnnotationError, FileNotFoundError and ValueError only, so
    PretrainedLoadError (a RuntimeError) was a traceback and status 1."""
    import torch
    from safetensors.torch import save_file

    misfit = str(tmp_path / "other.safetensors")
    save_file({"blocks.0.norm1.weight": torch.ones(3)}, misfit)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(to_yaml(tiny_config(demo_root)))
    done = _profile(config_path, *SMALL, f"model.pretrained={misfit}", "--out", str(tmp_path / "o"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "does not fit" in done.stderr and "Traceback" not in done.stderr

"""The embedded demo dataset: real encoded videos, labels as written, reversed classes really reversed."""

import csv
import json
import os

import numpy as np
import pytest

from aim_video.data.annotations import load_annotations
from aim_video.data.decode import probe, read_frames
from aim_video.data.demo_data import CLASSES, TEMPORAL_PAIRS, DemoSpec, generate, render


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo") / "demo")
    spec = DemoSpec(num_frames=16, size=32, train_per_class=2, val_per_class=1, seed=3)
    return generate(root, spec), spec


def test_lists_csv_and_manifest_agree(demo):
    files, spec = demo
    manifest = json.load(open(files["manifest"]))
    videos = manifest["videos"]
    assert len(videos) == len(CLASSES) * (spec.train_per_class + spec.val_per_class)
    for split in ("train", "val"):
        lines = open(files[f"{split}_list"]).read().split("\n")
        entries = [line.split() for line in lines if line]
        expected = [(v["path"], str(v["label"])) for v in videos if v["split"] == split]
        assert [tuple(e) for e in entries] == expected
    rows = list(csv.DictReader(open(files["csv"])))
    assert set(rows[0]) == {"label", "youtube_id", "time_start", "time_end", "split"}
    for row, video in zip(rows, videos, strict=True):
        name = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}.mp4"
        assert video["path"] == f"{row['label'].replace(' ', '_')}/{name}"
        assert CLASSES.index(row["label"]) == video["label"] and row["split"] == video["split"]
    assert open(files["class_map"]).read().split("\n")[: len(CLASSES)] == CLASSES
    for split in ("train", "val"):  # the CSV holds both splits: each reads back as its list file
        ann = load_annotations(files["csv"], files["root"], classes=CLASSES, split=split)
        expected = [(v["path"], v["label"]) for v in videos if v["split"] == split]
        assert [(os.path.relpath(r.path, files["root"]), r.label) for r in ann.records] == expected


def test_every_video_decodes_with_decord(demo):
    files, spec = demo
    for video in json.load(open(files["manifest"]))["videos"]:
        path = os.path.join(files["root"], video["path"])
        info = probe(path, backend="decord")
        assert (info.num_frames, info.height, info.width) == (spec.num_frames, spec.size, spec.size)
        frames = read_frames(path, list(range(spec.num_frames)), backend="decord")
        assert frames.shape == (spec.num_frames, spec.size, spec.size, 3)


def test_reversed_class_is_the_reverse(demo):
    files, spec = demo
    videos = json.load(open(files["manifest"]))["videos"]
    reversed_labels = {rev: fwd for fwd, rev in TEMPORAL_PAIRS}
    checked = 0
    for video in videos:
        if video["label"] not in reversed_labels:
            continue
        assert video["reversed_of"] == reversed_labels[video["label"]]
        decoded = read_frames(os.path.join(files["root"], video["path"]), list(range(spec.num_frames)))
        forward = render(video["reversed_of"], np.random.default_rng(video["seed"]), spec)
        decoded = decoded.numpy().astype(float)
        # every decoded frame t is nearest to forward frame T-1-t (lossy h264 + 4:2:0 chroma: compare distances)
        dist = np.abs(decoded[:, None] - forward[None].astype(float)).mean(axis=(2, 3, 4))  # [T, T]
        nearest = dist.argmin(axis=1)  # neighbouring frames of a slow fade can tie after compression: allow +-1
        assert np.abs(nearest - np.arange(spec.num_frames - 1, -1, -1)).max() <= 1, nearest
        assert dist.diagonal().mean() > 2 * np.fliplr(dist).diagonal().mean()
        checked += 1
    assert checked == len(TEMPORAL_PAIRS) * (spec.train_per_class + spec.val_per_class)


def test_generation_is_cached_and_seeded(demo):
    files, spec = demo
    stamp = os.path.getmtime(files["manifest"])
    assert generate(files["root"], spec) == files
    assert os.path.getmtime(files["manifest"]) == stamp  # not rewritten
    a = render(4, np.random.default_rng(7), spec)
    assert np.array_equal(a, render(4, np.random.default_rng(7), spec))


def test_a_folder_that_is_no_demo_dataset_is_never_replaced_and_killed_partials_go(tmp_path):
    """generate() replaced whatever data.root named whenever its stamp differed: a user's folder was deleted."""
    spec = DemoSpec(num_frames=16, size=32, train_per_class=1, val_per_class=1, seed=3)
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a demo dataset"):
        generate(str(precious), spec)
    assert (precious / "notes.txt").read_text() == "keep me"
    root = tmp_path / "demo"
    dead = tmp_path / "demo.tmp999999999"  # a generation killed midway (no such process)
    dead.mkdir()
    generate(str(root), spec)
    assert not dead.exists() and (root / "dataset.json").exists()

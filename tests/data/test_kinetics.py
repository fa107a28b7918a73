"""aim_video.data.kinetics: Kinetics CSVs, their splits and classes, and where their clips are found."""

import os

import pytest

from aim_video.data.annotations import (
    AnnotationError,
    VideoRecord,
    load_annotations,
    parse_list_file,
    read_class_map,
)
from aim_video.data.kinetics import kinetics_classes, kinetics_clip_name, parse_kinetics_csv
from tests.data.conftest import KINETICS, touch


def test_kinetics_csv_names_classes_and_folder_conventions(tmp_path):
    root = str(tmp_path / "k400")
    csv = tmp_path / "train.csv"
    csv.write_text(KINETICS)
    # one class in the normalised folder convention, the others with spaces kept
    touch(os.path.join(root, "passing_American_football_in_game", "abc_000014_000024.mp4"))
    touch(os.path.join(root, "abseiling", "def_000000_000010.mp4"))
    recs, classes = parse_kinetics_csv(str(csv), root)
    assert classes == ["abseiling", "passing American football (in game)", "zumba"]
    assert [r.label for r in recs] == [1, 0, 0, 2]
    assert recs[0].path.endswith("passing_American_football_in_game/abc_000014_000024.mp4")
    assert recs[1].path == os.path.join(root, "abseiling", "def_000000_000010.mp4")
    assert recs[3].path.endswith("zumba/jkl_000100_000110.mp4")


def test_kinetics_val_uses_train_classes_and_rejects_unknown(tmp_path):
    csv = tmp_path / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nzumba,q,1,11,val\n")
    recs, classes = parse_kinetics_csv(str(csv), "", classes=["abseiling", "zumba"])
    assert recs[0].label == 1 and classes == ["abseiling", "zumba"]
    csv.write_text("label,youtube_id,time_start,time_end,split\nyoga,q,1,11,val\n")
    with pytest.raises(AnnotationError, match="'yoga' is not among the 2 classes given"):
        parse_kinetics_csv(str(csv), "", classes=["abseiling", "zumba"])


def test_a_labelled_split_other_than_train_needs_the_train_classes(tmp_path):
    """Its own sorted labels would number the classes differently from training whenever one is absent from it:
    here 'zumba' would be 0 instead of 1, silently."""
    csv = tmp_path / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nzumba,q,1,11,val\n")
    with pytest.raises(AnnotationError, match=r"val.csv: a labelled 'val' split, but no train classes.*class_map"):
        parse_kinetics_csv(str(csv), "")
    (tmp_path / "train.csv").write_text(KINETICS)  # the train split numbers its own classes
    assert [r.label for r in parse_kinetics_csv(str(tmp_path / "train.csv"), "")[0]] == [1, 0, 0, 2]


def test_kinetics_labels_match_normalised_class_folders_and_other_extensions(tmp_path):
    """Class folders named the download scripts' way ('massaging_persons_head') define classes a CSV's raw labels
    must match; clips downloaded as .webm or .mkv are found under their own extension."""
    root = tmp_path / "videos"
    webm = touch(str(root / "massaging_persons_head" / "q_000001_000011.webm"))
    mp4 = touch(str(root / "zumba" / "r_000002_000012.mp4"))
    csv = tmp_path / "val.csv"
    csv.write_text(
        'label,youtube_id,time_start,time_end,split\n"massaging person\'s head",q,1,11,val\nzumba,r,2,12,val\n'
    )
    recs, _ = parse_kinetics_csv(str(csv), str(root), classes=["massaging_persons_head", "zumba"])
    assert [(r.path, r.label) for r in recs] == [(webm, 0), (mp4, 1)]
    assert load_annotations(str(csv), str(root), ["massaging_persons_head", "zumba"]).missing == []


def test_a_byte_order_mark_is_not_part_of_the_first_entry(tmp_path):
    bom = "\ufeff"
    (tmp_path / "train.csv").write_text(bom + KINETICS, encoding="utf-8")
    recs, classes = parse_kinetics_csv(str(tmp_path / "train.csv"), "")
    assert classes == ["abseiling", "passing American football (in game)", "zumba"] and recs[0].label == 1
    (tmp_path / "train.txt").write_text(bom + "a/x.mp4 3\r\n", encoding="utf-8")
    assert parse_list_file(str(tmp_path / "train.txt"), root="/d") == [VideoRecord("/d/a/x.mp4", 3, (3,))]
    (tmp_path / "classes.txt").write_text(bom + "abseiling\r\nzumba\r\n", encoding="utf-8")
    assert read_class_map(str(tmp_path / "classes.txt")) == ["abseiling", "zumba"]


def test_kinetics_test_split_without_labels(tmp_path):
    csv = tmp_path / "test.csv"
    csv.write_text("youtube_id,time_start,time_end,split\nq,1,11,test\n")
    recs, _ = parse_kinetics_csv(str(csv), "/r", classes=["a"])
    assert recs[0].path == "/r/q_000001_000011.mp4" and recs[0].label == -1


def test_not_a_kinetics_csv(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("name,value\na,1\n")
    with pytest.raises(AnnotationError, match="not a Kinetics CSV"):
        parse_kinetics_csv(str(csv))


def test_kinetics_csv_errors_name_the_line_of_the_file(tmp_path):
    """A truncated row is an error naming its line, not a TypeError; line numbers count blank lines and the rows
    of other splits."""
    csv_path = tmp_path / "k.csv"
    csv_path.write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,aaa,0,10,train\nzumba,bbb,0,10,train\n\n\n"
        "yodelling,ccc,0,10,val\n"
    )
    with pytest.raises(AnnotationError, match=r"k.csv:6: label 'yodelling' is not among the 2 classes"):
        parse_kinetics_csv(str(csv_path), str(tmp_path), split="val")
    csv_path.write_text("label,youtube_id,time_start,time_end,split\nabseiling,aaa,0,10,train\nabseiling,bbb\n")
    with pytest.raises(AnnotationError, match=r"k.csv:3: 2 fields where the header has 5 \(no time_start, time_end"):
        parse_kinetics_csv(str(csv_path), str(tmp_path))
    csv_path.write_text("label,youtube_id,time_start,time_end,split\nabseiling,aaa,x,10,train\n")
    with pytest.raises(AnnotationError, match=r"k.csv:2: bad time_start/time_end"):
        parse_kinetics_csv(str(csv_path), str(tmp_path))


def test_a_csv_holding_several_splits_gives_each_split_its_rows(tmp_path):
    """The demo's kinetics_demo.csv holds train and val rows: as data.val_list every row was evaluated as val (and
    as data.train_list it would train on val)."""
    csv = tmp_path / "all.csv"
    csv.write_text(
        "label,youtube_id,time_start,time_end,split\nzumba,a,0,10,train\nabseiling,b,0,10,train\n"
        "zumba,c,0,10,val\nyoga,d,0,10,test\n"
    )
    for split, ids in (("train", ["a", "b"]), ("val", ["c"]), ("test", ["d"])):
        recs, classes = parse_kinetics_csv(str(csv), "/r", split=split) if split != "test" else (None, None)
        if recs is not None:
            assert [os.path.basename(r.path)[0] for r in recs] == ids and classes == ["abseiling", "zumba"]
    assert [r.label for r in parse_kinetics_csv(str(csv), "/r", split="val")[0]] == [1]
    with pytest.raises(AnnotationError, match="'yoga' is not among the 2 classes"):  # test labels: train classes
        parse_kinetics_csv(str(csv), "/r", split="test")
    with pytest.raises(AnnotationError, match=r"holds the splits \['test', 'train', 'val'\], none of them the 'x'"):
        parse_kinetics_csv(str(csv), "/r", split="x")
    assert len(parse_kinetics_csv(str(csv), "/r", classes=["abseiling", "yoga", "zumba"])[0]) == 4  # no split: all


def test_kinetics_clips_are_found_in_the_layouts_download_tools_write(tmp_path):
    """One root with train/<label>/ and val/<label>/ (and flat folders, as the CVDF downloads are) gave 'no videos
    left to read' for `prepare_kinetics.py lists --root videos`."""
    root = tmp_path / "videos"
    by_split = touch(str(root / "train" / "air drumming" / "a_000001_000011.mp4"))
    flat_split = touch(str(root / "val" / "b_000002_000012.mp4"))
    flat = touch(str(root / "c_000003_000013.mp4"))
    csv = tmp_path / "all.csv"
    csv.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "air drumming,a,1,11,train\nzumba,b,2,12,validate\nzumba,c,3,13,train\nzumba,d,4,14,train\n"
    )
    recs, _ = parse_kinetics_csv(str(csv), str(root))
    assert [r.path for r in recs[:3]] == [by_split, flat_split, flat]
    assert recs[3].path == str(root / "zumba" / "d_000004_000014.mp4")  # not found: the usual place is named
    with pytest.raises(AnnotationError, match=r"1 of 4 videos not found.*looked for in root/<label>/.*root/<split>/"):
        load_annotations(str(csv), str(root))


def test_the_train_csv_classes_are_read_once_per_version_of_the_file(tmp_path):
    """kinetics_classes is asked for by every split and by the weights' metadata: remembered, but never stale."""
    path = tmp_path / "train.csv"
    path.write_text("label,youtube_id,time_start,time_end,split\nb,y1,0,10,train\na,y2,0,10,train\n")
    assert kinetics_classes(str(path)) == ["a", "b"]
    assert kinetics_classes(str(path)) == ["a", "b"]
    path.write_text(path.read_text() + "c c,y3,0,10,train\n")  # another version: read again
    assert kinetics_classes(str(path)) == ["a", "b", "c c"]
    classes = kinetics_classes(str(path))
    classes.append("x")  # a caller's list is its own
    assert kinetics_classes(str(path)) == ["a", "b", "c c"]


def test_kinetics_clips_are_found_in_mmaction2_folder_names(tmp_path, monkeypatch):
    """mmaction2's rename_classnames.sh only turns spaces into '_' (`tying_knot_(not_on_a_tie)`,
    `massaging_person's_head`): only root/<label>/ and root/<label without quotes or parentheses>/ were tried, so
    these clips were not found, and under data.missing_files=drop whole classes vanished without a word."""
    root = tmp_path / "k400"
    knot = touch(str(root / "tying_knot_(not_on_a_tie)" / "a_000001_000011.mp4"))
    head = touch(str(root / "train" / "massaging_person's_head" / "b_000002_000012.mp4"))
    csv = tmp_path / "train.csv"
    csv.write_text(
        'label,youtube_id,time_start,time_end,split\n"tying knot (not on a tie)",a,1,11,train\n'
        '"massaging person\'s head",b,2,12,train\n"tying knot (not on a tie)",c,3,13,train\n'
    )
    listed = []
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p=".": listed.append(str(p).rstrip(os.sep)) or listdir(p))
    recs, classes = parse_kinetics_csv(str(csv), str(root))
    assert classes == ["massaging person's head", "tying knot (not on a tie)"]
    assert [(r.path, r.label) for r in recs[:2]] == [(knot, 1), (head, 0)]
    assert len(listed) == len(set(listed))  # every folder listed once, however many clips it holds
    # a missing clip is named in its class's folder, and the message says which folders were searched
    assert recs[2].path == str(root / "tying_knot_(not_on_a_tie)" / "c_000003_000013.mp4")
    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(AnnotationError, match=r"1 of 3 videos not found.*'_'.*parentheses.*root/<split>/"):
        load_annotations(str(csv), str(root))


def test_a_csv_without_train_rows_as_the_train_csv_says_so(tmp_path):
    """kinetics_classes turned 'no train classes' into [], so a val CSV given as data.train_list showed "label 'x'
    is not among the 0 classes given" instead of the reason."""
    csv = tmp_path / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nzumba,q,1,11,val\n")
    for _ in range(2):  # read, then remembered: the same answer
        with pytest.raises(AnnotationError, match=r"val.csv: a labelled 'val' split, but no train classes"):
            kinetics_classes(str(csv))


def test_a_csv_of_one_split_serves_as_any_split(tmp_path):
    """Kinetics' val CSV as data.test_list (the usual recipe): its rows say val, the loader asks for test."""
    csv = tmp_path / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nzumba,a,0,10,val\nabseiling,b,0,10,val\n")
    records, _ = parse_kinetics_csv(str(csv), "/r", classes=["abseiling", "zumba"], split="test")
    assert [r.label for r in records] == [1, 0]


def test_training_rows_are_train_rows_for_the_classes(tmp_path):
    """Some releases name the split `training`: its labels are the classes, not the val rows' too."""
    csv = tmp_path / "all.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nzumba,a,0,10,training\nabseiling,b,0,10,training\n"
                   "yoga,c,0,10,validation\n")  # fmt: skip
    assert kinetics_classes(str(csv)) == ["abseiling", "zumba"]


def test_clip_names_truncate_fractional_times_as_the_download_scripts_do():
    """`'%06d' % 1.7` is 000001 in the download scripts: rounding would look for a file that is not there."""
    assert kinetics_clip_name("x", "1.7", "11.5") == "x_000001_000011.mp4"


def test_the_first_extension_is_looked_for_in_every_folder_before_the_next_extension(tmp_path):
    """_find: extensions in order, then folders: root/x.mp4 wins over root/<label>/x.webm."""
    root = tmp_path / "k"
    mp4 = touch(str(root / "x_000001_000011.mp4"))
    touch(str(root / "zumba" / "x_000001_000011.webm"))
    csv = tmp_path / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end\nzumba,x,1,11\n")
    (rec,), _ = parse_kinetics_csv(str(csv), str(root), classes=["zumba"])
    assert rec.path == mp4


def test_a_missing_clip_is_named_in_the_normalised_class_folder(tmp_path):
    csv = tmp_path / "val.csv"
    csv.write_text('label,youtube_id,time_start,time_end\n"passing American football (in game)",x,1,11\n')
    (rec,), _ = parse_kinetics_csv(str(csv), str(tmp_path / "k"), classes=["passing American football (in game)"])
    assert rec.path == os.path.join(str(tmp_path / "k"), "passing_American_football_in_game", "x_000001_000011.mp4")

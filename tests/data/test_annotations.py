"""aim_video.data.annotations: list files, class-folder trees, the record table and load_annotations."""

import os

import pytest

from aim_video.data.annotations import (
    AnnotationError,
    RecordTable,
    VideoRecord,
    load_annotations,
    normalize_class_name,
    parse_list_file,
    read_class_map,
    write_lines,
    write_list_file,
)
from aim_video.data.kinetics import parse_kinetics_csv
from tests.data.conftest import KINETICS, touch


def test_list_file_labels_unlabelled_and_multilabel(tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("# comment\na/x.mp4 3\n\nb/y.mp4\nc/z.mp4 -1\nd/w.mp4\t1 4 7\n")
    recs = parse_list_file(str(lst), root="/data")
    assert [(r.path, r.label, r.labels) for r in recs] == [
        ("/data/a/x.mp4", 3, (3,)),
        ("/data/b/y.mp4", -1, ()),
        ("/data/c/z.mp4", -1, ()),
        ("/data/d/w.mp4", 1, (1, 4, 7)),
    ]


def test_list_file_bad_label_names_file_and_line(tmp_path):
    lst = tmp_path / "bad.txt"
    lst.write_text("a.mp4 1\nb.mp4 two\n")
    with pytest.raises(AnnotationError, match=r"bad.txt:2: .*integer labels, got 'b.mp4 two'"):
        parse_list_file(str(lst))
    lst.write_text("a.mp4 1\nb.mp4 \u0663\n", encoding="utf-8")  # an Arabic-Indic 3: int() reads it, a typo
    with pytest.raises(AnnotationError, match=r"bad.txt:2: .*integer labels"):
        parse_list_file(str(lst))


def test_list_file_paths_may_hold_spaces(tmp_path):
    """Kinetics class folders are often named by their labels ('air drumming'): the labels are the integers at
    the end of a line, the path the rest, so the lists `prepare_kinetics.py lists` writes for them read back."""
    clip = touch(str(tmp_path / "air drumming" / "my clip 2.mp4"))
    lst = tmp_path / "train.txt"
    lst.write_text("air drumming/my clip 2.mp4 1\nair drumming/my clip 2.mp4\t3 4\nair drumming/my clip 2.mp4\n")
    recs = parse_list_file(str(lst), root=str(tmp_path))
    assert [(r.path, r.labels) for r in recs] == [(clip, (1,)), (clip, (3, 4)), (clip, ())]
    out = str(tmp_path / "out.txt")
    write_list_file(out, recs, root=str(tmp_path))
    assert parse_list_file(out, root=str(tmp_path)) == recs


def test_normalize_class_name():
    assert normalize_class_name("passing American football (in game)") == "passing_American_football_in_game"
    assert normalize_class_name("tying bow tie") == "tying_bow_tie"
    assert normalize_class_name("massaging person's head") == "massaging_persons_head"


def test_class_folders_and_missing_policy(tmp_path):
    root = tmp_path / "folders"
    touch(str(root / "b_cls" / "2.mp4"))
    touch(str(root / "b_cls" / "1.avi"))
    touch(str(root / "a_cls" / "x.mp4"))
    touch(str(root / "a_cls" / "notes.txt"))
    ann = load_annotations(str(root))
    assert ann.classes == ["a_cls", "b_cls"]
    assert [(os.path.basename(r.path), r.label) for r in ann.records] == [("x.mp4", 0), ("1.avi", 1), ("2.mp4", 1)]

    lst = tmp_path / "list.txt"
    lst.write_text("a_cls/x.mp4 0\ngone1.mp4 1\ngone2.mp4 1\n")
    found = r"2 of 3 videos not found, e.g. .*gone1.mp4.*data.root.*missing_files=drop"
    with pytest.raises(AnnotationError, match=found):
        load_annotations(str(lst), root=str(root))
    ann = load_annotations(str(lst), root=str(root), missing="drop")
    assert len(ann.records) == 1 and len(ann.missing) == 2
    with pytest.raises(AnnotationError, match="not found"):
        load_annotations(str(tmp_path / "nope.txt"))


def test_a_folder_of_videos_without_class_folders_is_an_unlabelled_evaluation_split(tmp_path):
    """Videos to predict sit in one folder: `lists --test FOLDER` refused it ("no class folders found"), so a user
    wrote the list by hand. For val and test they are listed unlabelled (-1); training still needs class folders."""
    root = tmp_path / "to_predict"
    touch(str(root / "b.mp4"))
    touch(str(root / "a.webm"))
    touch(str(root / "notes.txt"))
    ann = load_annotations(str(root), classes=["x", "y"], split="test")
    listed = [(os.path.basename(r.path), r.label, r.labels) for r in ann.records]
    assert listed == [("a.webm", -1, ()), ("b.mp4", -1, ())]
    assert ann.classes == ["x", "y"]
    assert [r.label for r in load_annotations(str(root), split="val").records] == [-1, -1]
    with pytest.raises(AnnotationError, match="no class folders found.*for val or test only"):
        load_annotations(str(root), split="train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="no class folders found"):  # nothing to list at all
        load_annotations(str(tmp_path / "empty"), split="test")


def test_a_val_class_folder_tree_takes_the_train_classes_indices(tmp_path):
    """A val tree that lacks a class, or spells one the download scripts' way, keeps training's indices."""
    for name in ("abseiling", "air drumming", "zumba"):
        touch(str(tmp_path / "train" / name / "t.mp4"))
    touch(str(tmp_path / "val" / "abseiling" / "v.mp4"))
    touch(str(tmp_path / "val" / "zumba" / "v.mp4"))
    touch(str(tmp_path / "val" / "air_drumming" / "v.mp4"))  # normalised name
    train = load_annotations(str(tmp_path / "train"))
    val = load_annotations(str(tmp_path / "val"), classes=train.classes)
    assert train.classes == val.classes == ["abseiling", "air drumming", "zumba"]
    assert [(r.path.split(os.sep)[-2], r.label) for r in val.records] == [
        ("abseiling", 0), ("air_drumming", 1), ("zumba", 2)
    ]  # fmt: skip
    # a class map fixes the indices even of the train tree
    mapped = load_annotations(str(tmp_path / "train"), classes=["zumba", "air drumming", "abseiling"])
    assert [r.label for r in mapped.records] == [2, 1, 0]
    touch(str(tmp_path / "val" / "yodelling" / "v.mp4"))
    with pytest.raises(AnnotationError, match="1 class folders are not among the 3 classes given.*'yodelling'"):
        load_annotations(str(tmp_path / "val"), classes=train.classes)


def test_written_list_and_class_map_round_trip(tmp_path):
    lst = tmp_path / "in.txt"
    lst.write_text("a.mp4 3\nb.mp4\nc.mp4 1 2\n")
    recs = parse_list_file(str(lst), root=str(tmp_path))
    out = str(tmp_path / "sub" / "out.txt")
    write_list_file(out, recs, root=str(tmp_path))
    assert open(out).read() == "a.mp4 3\nb.mp4 -1\nc.mp4 1 2\n"
    assert parse_list_file(out, root=str(tmp_path)) == recs
    write_lines(str(tmp_path / "classes.txt"), ["x y", "z"])
    assert read_class_map(str(tmp_path / "classes.txt")) == ["x y", "z"]
    assert not [f for f in os.listdir(tmp_path / "sub") if ".tmp" in f]


def test_record_table_reads_back_every_record():
    records = [
        VideoRecord("/data/k400/abseiling/a_000001_000011.mp4", 0, (0,)),
        VideoRecord("/data/ssv2/ünïcödé clip.webm", 7, (7, 3, 12)),  # multi-label, non-ASCII, a space
        VideoRecord("relative/unlabelled.mp4", -1, ()),
    ]
    table = RecordTable(records)
    assert len(table) == 3 and list(table) == records and table[-1] == records[2] and table[1:] == records[1:]
    with pytest.raises(IndexError, match="record 3 out of range for 3 records"):
        table[3]
    assert len(RecordTable([])) == 0 and list(RecordTable([])) == []
    counted = RecordTable(records, {"/data/ssv2/ünïcödé clip.webm": 48, os.path.abspath("relative/unlabelled.mp4"): 9})
    assert [counted.frame_count(i) for i in range(3)] == [None, 48, 9] and table.frame_count(1) is None


def test_record_table_stays_shared_by_forked_workers():
    """A list of 300,000 records grows each DataLoader worker's private memory by about 100 MB per pass (reading an
    object writes its reference count, so the pages get copied); the table's arrays are only read."""
    import psutil
    from torch.utils.data import DataLoader, Dataset

    class Paths(Dataset):
        def __init__(self, records):
            self.records = RecordTable(records)

        def __len__(self):
            return len(self.records)

        def __getitem__(self, i):
            return len(self.records[i].path)

    n = 300_000
    records = [VideoRecord(f"/data/k700/class_{i % 700}/video_{i:06d}_000000_000010.mp4", i % 700, (i % 700,))
               for i in range(n)]  # fmt: skip
    loader = DataLoader(Paths(records), batch_size=2000, num_workers=2, persistent_workers=True)
    del records
    batches = iter(loader)
    next(batches)

    def private_mib() -> float:
        return sum(c.memory_full_info().uss for c in psutil.Process().children()) / 2**20

    before = private_mib()
    assert sum(len(b) for b in batches) == n - 2000
    assert private_mib() - before < 15, (before, private_mib())


def test_an_empty_list_says_so(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    with pytest.raises(AnnotationError, match="empty.txt: lists no video"):
        load_annotations(str(tmp_path / "empty.txt"))


def test_a_class_folder_tree_skips_what_macos_and_file_systems_leave_there(tmp_path, caplog):
    """A tree copied from a Mac held `._clip.mp4` (AppleDouble) beside every clip, read as videos, and a
    `__MACOSX` folder that became class 0, shifting every index; a folder named like a video was a record."""
    root = tmp_path / "tree"
    clip = touch(str(root / "archery" / "a.mp4"))
    touch(str(root / "archery" / "._a.mp4"))
    touch(str(root / "archery" / ".partial.mp4"))
    os.makedirs(root / "archery" / "folder.mp4")
    touch(str(root / "__MACOSX" / "archery" / "._a.mp4"))
    touch(str(root / "lost+found" / "x.mp4"))
    touch(str(root / ".cache" / "x.mp4"))
    os.symlink(clip, root / "bowling_link.mp4")  # a file at the top: no class
    os.makedirs(root / "bowling")
    os.symlink(clip, root / "bowling" / "linked.mp4")  # links to files are videos
    os.symlink(str(tmp_path / "gone.mp4"), root / "bowling" / "dangling.mp4")  # reported missing, not skipped
    os.makedirs(root / "cooking" / "nested")  # no video directly inside: warned about, still a class
    touch(str(root / "cooking" / "nested" / "n.mp4"))
    touch(str(root / "diving" / "d.MP4"))
    with caplog.at_level("WARNING"):
        ann = load_annotations(str(root), missing="drop")
    assert ann.classes == ["archery", "bowling", "cooking", "diving"]
    assert [(os.path.relpath(r.path, root), r.label) for r in ann.records] == [
        ("archery/a.mp4", 0), ("bowling/linked.mp4", 1), ("diving/d.MP4", 3)
    ]  # fmt: skip
    assert ann.missing == [str(root / "bowling" / "dangling.mp4")]
    assert "links whose target does not exist" in caplog.text and "data.root" not in caplog.text
    assert "1 class folders hold no video file directly (sub-folders are not searched), e.g. 'cooking'" in caplog.text
    assert "still a class with its index" in caplog.text
    # a file at the top and one a level down were left out without a word (a class/subject/clip.mp4 tree: every one)
    expected = f"2 video files are not listed: a class tree lists {root}/<class>/<video> only, e.g. {root}/bowling"
    assert expected + "_link.mp4" in caplog.text


def test_non_utf8_names_and_files(tmp_path):
    """A file name that is not UTF-8 (a tree from a Latin-1 system) crashed RecordTable with UnicodeEncodeError; a
    list, CSV or class map saved as Latin-1 failed with a bare UnicodeDecodeError naming neither file nor line."""
    folder = os.path.join(os.fsencode(str(tmp_path)), b"tree", b"caf\xe9")
    os.makedirs(folder)
    open(os.path.join(folder, b"cr\xe8me.mp4"), "wb").close()
    ann = load_annotations(str(tmp_path / "tree"))
    table = RecordTable(ann.records)
    assert list(table) == ann.records and os.path.isfile(table[0].path)
    for name, text in (("l.txt", b"a.mp4 0\ncaf\xe9.mp4 1\n"), ("c.txt", b"a\nb\ncaf\xe9\n")):
        (tmp_path / name).write_bytes(text)
    with pytest.raises(AnnotationError, match=r"l.txt:2: not UTF-8 \(byte 0xe9 in b'caf\\xe9.mp4 1'\).*iconv"):
        parse_list_file(str(tmp_path / "l.txt"))
    with pytest.raises(AnnotationError, match=r"c.txt:3: not UTF-8"):
        read_class_map(str(tmp_path / "c.txt"))
    (tmp_path / "k.csv").write_bytes(KINETICS.encode() + b"caf\xe9,x,0,10,train,0\n")
    with pytest.raises(AnnotationError, match=r"k.csv:6: not UTF-8"):
        parse_kinetics_csv(str(tmp_path / "k.csv"))


def test_missing_files_drop_does_not_skip_an_unlabelled_line_with_spaces(tmp_path):
    """Such a line is a path with spaces that does not exist, or a label that is not an integer: dropping it would
    hide the typo, so it is refused under either policy, and the message says how to keep it."""
    (tmp_path / "l.txt").write_text("gone file.mp4\n")
    for missing in ("fail", "drop"):
        with pytest.raises(AnnotationError, match=r"l.txt:1: .*missing_files=drop does not skip such a line.*-1"):
            load_annotations(str(tmp_path / "l.txt"), str(tmp_path), missing=missing)


def test_a_record_tables_fingerprint_tells_lists_of_one_length_apart():
    """Ranks compare it before training and evaluation: counts alone let two nodes that each lack another file
    through, and the evaluation then joined other videos' labels and paths by index."""
    from aim_video.data.annotations import RecordTable, VideoRecord

    one = [VideoRecord("/d/a.mp4", 0), VideoRecord("/d/b.mp4", 1)]
    assert RecordTable(one).fingerprint() == RecordTable(list(one)).fingerprint()
    assert RecordTable(one).fingerprint() != RecordTable([one[0], VideoRecord("/d/c.mp4", 1)]).fingerprint()
    assert RecordTable(one).fingerprint() != RecordTable([one[0], VideoRecord("/d/b.mp4", 0)]).fingerprint()
    assert RecordTable(one).fingerprint() != RecordTable(one[::-1]).fingerprint()
    # where one path ends and the next begins, and every label of a multi-label line, count too
    split = [VideoRecord("/d/ab", 0), VideoRecord("c", 1)]
    assert RecordTable(split).fingerprint() != RecordTable([VideoRecord("/d/a", 0), VideoRecord("bc", 1)]).fingerprint()
    multi = [VideoRecord("/d/a.mp4", 0, (0, 2)), VideoRecord("/d/b.mp4", 1, (1,))]
    other = [VideoRecord("/d/a.mp4", 0, (0, 3)), VideoRecord("/d/b.mp4", 1, (1,))]
    assert RecordTable(multi).fingerprint() != RecordTable(other).fingerprint()


def test_missing_keep_keeps_the_absent_videos_and_names_them(tmp_path):
    """`verify` lists every listed file (missing ones as unreadable): missing="keep" must keep them."""
    (tmp_path / "a.mp4").write_bytes(b"x")
    listing = tmp_path / "l.txt"
    listing.write_text("a.mp4 0\nb.mp4 1\n")
    ann = load_annotations(str(listing), str(tmp_path), missing="keep")
    assert [r.label for r in ann.records] == [0, 1] and ann.missing == [str(tmp_path / "b.mp4")]


def test_a_class_map_that_names_a_class_twice_is_refused(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\nb\na\n")
    with pytest.raises(AnnotationError, match="duplicate class names"):
        read_class_map(str(path))

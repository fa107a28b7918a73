"""Annotation sources -> a list of (video path, label) records and the class names.

Three sources, chosen by what the path is:
- a `path label` list file (whitespace separated; label absent or -1 for unlabelled inference lists; several
  labels on a line for multi-label sets; the labels are the integers at the end, so a path may hold spaces),
- a Kinetics CSV (`label,youtube_id,time_start,time_end,split[,is_cc]`; clips named
  `{youtube_id}_{start:06d}_{end:06d}.mp4` in per-class folders; class index = position of the label in the
  sorted set of train labels; read by `kinetics.py`),
- a class-folder tree (`root/<class>/<video>`; classes sorted by name; hidden entries, `__MACOSX` and the like
  skipped); for a val or test split, a folder of videos without class folders lists them unlabelled.

Missing files are found up front: `missing="fail"` raises with the count and the first examples, `"drop"` drops
them and reports the same summary.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")


_INT = re.compile(r"-?[0-9]+")  # ASCII digits only: \d also matches "٣", which int() reads as 3


class AnnotationError(ValueError):
    """An annotation file is malformed or names videos that do not exist."""


@dataclass(frozen=True)
class VideoRecord:
    path: str  # absolute, or as resolved against the data root
    label: int  # -1 when unlabelled; the first label of a multi-label line
    labels: tuple[int, ...] = ()  # every label of the line (multi-label sets); () when unlabelled


class RecordTable(Sequence[VideoRecord]):
    """The records of a data set as a few numpy arrays, read back as `VideoRecord`s by index.

    DataLoader workers are forked copies of the dataset. A list of Python objects does not stay shared: reading an
    object writes its reference count, so every worker slowly copies every page the list touches (about 100 MB per
    worker per pass over Kinetics-700's 545,000 records; docs/benchmarks.md). Arrays of bytes and integers are only
    read, so their pages stay shared. (mmengine serializes its data lists for the same reason.)
    """

    def __init__(self, records: Iterable[VideoRecord], frame_counts: dict[str, int] | None = None):
        """`frame_counts`: {absolute path: frames that really decode} (a verify report), kept per record."""
        records = list(records)
        counts = frame_counts or {}
        self._counts = np.array([counts.get(os.path.abspath(r.path), -1) for r in records], dtype=np.int64)
        # surrogateescape: a file name that is not UTF-8 (a class-folder tree copied from an old Windows or Latin-1
        # system) comes from os.listdir with its bytes escaped; it goes back to the same str, so to the same file
        paths = [r.path.encode("utf-8", "surrogateescape") for r in records]
        self._path_ends = np.cumsum([len(p) for p in paths], dtype=np.int64)
        self._paths = np.frombuffer(b"".join(paths), dtype=np.uint8) if paths else np.zeros(0, np.uint8)
        self._labels = np.array([r.label for r in records], dtype=np.int64)
        self._label_ends = np.cumsum([len(r.labels) for r in records], dtype=np.int64)
        self._all_labels = np.array([lbl for r in records for lbl in r.labels], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._labels)

    def fingerprint(self) -> str:
        """A digest of the paths and labels in order: whether processes on other nodes read the same list."""
        digest = hashlib.sha1(self._paths.tobytes())
        for part in (self._path_ends, self._labels, self._label_ends, self._all_labels):
            digest.update(part.tobytes())
        return digest.hexdigest()

    @property
    def labels(self) -> np.ndarray:
        """Every record's (first) label, -1 for unlabelled ones, without building the records."""
        return self._labels

    @overload
    def __getitem__(self, index: int) -> VideoRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[VideoRecord]: ...

    def __getitem__(self, index: int | slice) -> VideoRecord | list[VideoRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"record {index} out of range for {n} records")
        i = index % n
        start = int(self._path_ends[i - 1]) if i else 0
        path = self._paths[start : int(self._path_ends[i])].tobytes().decode("utf-8", "surrogateescape")
        lo = int(self._label_ends[i - 1]) if i else 0
        labels = tuple(int(v) for v in self._all_labels[lo : int(self._label_ends[i])])
        return VideoRecord(path, int(self._labels[i]), labels)

    def frame_count(self, index: int) -> int | None:
        """The frames that really decode in record `index` (from the verify report), None when not known."""
        count = int(self._counts[index])
        return count if count >= 0 else None


@dataclass
class Annotations:
    records: list[VideoRecord]
    classes: list[str] = field(default_factory=list)  # index -> name; [] when the source has no names
    missing: list[str] = field(default_factory=list)  # paths dropped because the file does not exist


def normalize_class_name(name: str) -> str:
    """The folder name Kinetics download scripts use for a label: quotes and parentheses removed, spaces -> '_'."""
    for ch in "\"'()":
        name = name.replace(ch, "")
    return name.strip().replace(" ", "_")


def resolve_path(root: str, path: str) -> str:
    """`path` under `root` unless absolute, spelled one way (`./a/../v.mp4` and `v.mp4` are one video: evaluation
    counted such a repeat twice)."""
    return os.path.normpath(path if os.path.isabs(path) or not root else os.path.join(root, path))


def not_utf8_error(path: str) -> AnnotationError:
    """The error for a text file that is not UTF-8 (a list saved as Latin-1 or cp1252), naming its line."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = raw.count(b"\n", 0, err.start) + 1
        line = raw.split(b"\n")[lineno - 1].rstrip(b"\r")
        return AnnotationError(
            f"{path}:{lineno}: not UTF-8 (byte {raw[err.start]:#04x} in {line!r}): save the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > fixed.txt` when it was written as Latin-1"
        )
    return AnnotationError(f"{path}: not UTF-8: save the file as UTF-8")


def parse_list_file(path: str, root: str = "") -> list[VideoRecord]:
    """Read a `path label [label ...]` file; blank lines and lines starting with '#' are skipped.

    The labels are the integer tokens at the end of a line and the path is everything before them, so paths may
    hold spaces (Kinetics class folders named by their labels: `air drumming/<clip>.mp4 1`). A line without an
    integer at its end is an unlabelled path; one that also holds whitespace must name an existing file, else it
    is taken for a label that is not an integer and refused, also under data.missing_files=drop (a missing file
    and a malformed label cannot be told apart there: dropping the line would hide the typo). The file must be
    UTF-8; any other encoding is refused naming the line.
    """
    try:
        return _parse_list_lines(path, root)
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None


def _parse_list_lines(path: str, root: str) -> list[VideoRecord]:
    records = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Windows editors) is not part of a path
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            tokens = text.split()
            count = 0
            while count < len(tokens) - 1 and _INT.fullmatch(tokens[-1 - count]):
                count += 1
            labels = tuple(int(tok) for tok in tokens[len(tokens) - count :])
            video = re.sub(rf"(?:\s+-?\d+){{{count}}}$", "", text) if count else text  # the path keeps its spaces
            if not count and len(tokens) > 1 and not os.path.exists(resolve_path(root, text)):
                raise AnnotationError(
                    f"{path}:{lineno}: expected 'path label' with integer labels, got {text!r} (or, if that is a "
                    "path with spaces, the file does not exist; data.missing_files=drop does not skip such a line, "
                    "as a missing file cannot be told from a label that is not an integer there: give it label -1 or "
                    "delete it)"
                )
            if any(lbl < -1 for lbl in labels):
                raise AnnotationError(f"{path}:{lineno}: negative label in {text!r} (-1 means unlabelled)")
            labels = tuple(lbl for lbl in labels if lbl >= 0)
            records.append(VideoRecord(resolve_path(root, video), labels[0] if labels else -1, labels))
    return records


# folders that operating systems and archivers put in a tree, never classes: a zip made on a Mac holds __MACOSX/
# (AppleDouble copies of every file); lost+found sits at the top of every ext4 file system
NOT_CLASS_FOLDERS = frozenset({"__MACOSX", "lost+found", "$RECYCLE.BIN", "System Volume Information"})


def class_folder_names(root: str) -> list[str]:
    """The classes of a class-folder tree: its sub-folders, sorted by name, less hidden ones ('.' first) and those
    of `NOT_CLASS_FOLDERS` (a `__MACOSX` folder would be class 0 and shift every index)."""
    return sorted(
        d
        for d in os.listdir(root)
        if not d.startswith(".") and d not in NOT_CLASS_FOLDERS and os.path.isdir(os.path.join(root, d))
    )


def _videos_in(folder: str) -> list[str]:
    """The video files directly in `folder`, sorted: files (or links to them) with a video extension, less hidden
    ones (macOS's AppleDouble `._clip.mp4` beside each clip copied from a Mac, `.clip.mp4.part`). A link whose
    target is gone is kept, so that it is reported missing rather than skipped without a word."""
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if not e.name.startswith(".")
            and e.name.lower().endswith(VIDEO_EXTENSIONS)
            and (e.is_file() or (e.is_symlink() and not os.path.exists(e.path)))
        )


def _nested_videos(folder: str) -> list[str]:
    """Video files in the sub-folders of `folder` (any depth, hidden ones left out), which a class tree skips."""
    found = []
    with os.scandir(folder) as entries:
        subdirs = [e.path for e in entries if e.is_dir() and not e.name.startswith(".")]
    for sub in subdirs:
        for dirpath, dirnames, files in os.walk(sub):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS)
                      and not f.startswith(".")]  # fmt: skip
    return found


def parse_class_folders(
    root: str, classes: list[str] | None = None, unlabelled_ok: bool = False
) -> tuple[list[VideoRecord], list[str]]:
    """`root/<class>/<video>`, videos sorted by name within a class. Without `classes` the sorted folder names are
    the classes; with them (the train split's, a class map) each folder takes the index of the class it names, by
    name or by normalised name, as a Kinetics CSV's labels do: a val tree lacking a class keeps training's indices.
    A class folder without a video is warned about; it still is a class (its place in the sorted folders is its
    index, and a train tree's classes are its folders, empty or not, wherever they are asked for).
    With `unlabelled_ok` (an evaluation split), a folder of videos and no class folders lists them unlabelled."""
    folders = class_folder_names(root)
    if not folders and unlabelled_ok and (loose := _videos_in(root)):  # videos to predict, not to score
        log.warning(
            "%s: no class folders: its %d videos are listed unlabelled (videos to predict; a class tree is "
            "%s/<class>/<video>)", root, len(loose), root,
        )  # fmt: skip
        return [VideoRecord(os.path.join(root, f), -1, ()) for f in loose], list(classes or [])
    if not folders:
        hint = "" if unlabelled_ok else "; a folder of unlabelled videos (no class folders) is for val or test only"
        raise AnnotationError(f"{root}: no class folders found (expected {root}/<class>/<video>.mp4{hint})")
    own = classes is None  # the folders number the classes
    if classes is None:
        classes = folders
    index = {normalize_class_name(name): k for k, name in enumerate(classes)}
    index.update({name: k for k, name in enumerate(classes)})
    unknown = [name for name in folders if name not in index and normalize_class_name(name) not in index]
    if unknown:
        raise AnnotationError(
            f"{root}: {len(unknown)} class folders are not among the {len(classes)} classes given (the train split's "
            f"or the class map), e.g. {', '.join(repr(n) for n in unknown[:3])}: rename them to a class, or give the "
            "class map that holds them"
        )
    records = []
    empty = []
    skipped = _videos_in(root)  # loose at the top, and below a class folder's first level: not listed
    skipped = [os.path.join(root, f) for f in skipped]
    for name in folders:
        k = index[name] if name in index else index[normalize_class_name(name)]
        videos = _videos_in(os.path.join(root, name))
        empty += [] if videos else [name]
        records += [VideoRecord(os.path.join(root, name, fname), k, (k,)) for fname in videos]
        skipped += _nested_videos(os.path.join(root, name))
    if skipped:  # a class/subject/clip.mp4 layout lost every clip without a word
        log.warning(
            "%s: %d video files are not listed: a class tree lists %s/<class>/<video> only, e.g. %s; move them "
            "there, or write a list file",
            root, len(skipped), root, skipped[0],
        )  # fmt: skip
    if empty:
        kept = (
            "each is still a class with its index (the sorted folders are the classes), with no video to learn it "
            "from: delete a folder that is no class, as it shifts the index of every class after it"
            if own
            else "their classes keep their indices and have no video here"
        )
        log.warning(
            "%s: %d class folders hold no video file directly (sub-folders are not searched), e.g. %s: %s",
            root, len(empty), ", ".join(repr(n) for n in empty[:3]), kept,
        )  # fmt: skip
    return records, list(classes)


def read_class_map(path: str) -> list[str]:
    """Class names, one per line, in index order."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            names = [line.rstrip("\r\n") for line in f if line.strip()]
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None
    if len(set(names)) != len(names):
        raise AnnotationError(f"{path}: duplicate class names in the class map")
    return names


def write_lines(path: str, lines: list[str]) -> None:
    """Write text lines atomically (temporary name, then rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(f"{line}\n" for line in lines)
    os.replace(tmp, path)


def write_list_file(path: str, records: list[VideoRecord], root: str = "") -> None:
    """`path label` lines (paths relative to `root` when given); unlabelled records get -1."""

    def rel(p: str) -> str:
        return os.path.relpath(p, root) if root else p

    write_lines(path, [f"{rel(r.path)} {' '.join(map(str, r.labels)) if r.labels else -1}" for r in records])


def load_annotations(
    source: str,
    root: str = "",
    classes: list[str] | None = None,
    missing: str = "fail",
    what: str = "annotations",
    split: str = "",
    unlabelled_ok: bool | None = None,
) -> Annotations:
    """Read any supported source and check that every video exists (see the module docstring). `split` picks the
    rows of a Kinetics CSV that holds several splits. `missing="keep"` (tools that report on every listed file)
    warns and keeps them. `unlabelled_ok`: whether a folder of videos without class folders lists them unlabelled
    (default: for the val and test splits; tools that read no label say so)."""
    if missing not in ("fail", "drop", "keep"):
        raise AnnotationError(f"data.missing_files must be 'fail' or 'drop' (tools: also 'keep'), got {missing!r}")
    if not source:
        raise AnnotationError(f"no {what} given: set the list file, Kinetics CSV or class folder in the config")
    if os.path.isdir(source):
        unlabelled_ok = split in ("val", "test") if unlabelled_ok is None else unlabelled_ok
        records, names = parse_class_folders(source, classes, unlabelled_ok=unlabelled_ok)
    elif not os.path.isfile(source):
        raise AnnotationError(f"{what} not found: {source}")
    elif source.lower().endswith(".csv"):
        from aim_video.data.kinetics import parse_kinetics_csv  # kinetics builds on this module's records

        records, names = parse_kinetics_csv(source, root, classes, split=split)
    else:
        records, names = parse_list_file(source, root), list(classes or [])
    if not records:
        raise AnnotationError(f"{source}: lists no video (an empty file, or only comments and blank lines)")
    absent = [r.path for r in records if not os.path.isfile(r.path)]
    if absent:
        if os.path.isdir(source):  # data.root plays no part in a tree: only links can point at nothing
            hint = "(links whose target does not exist, or files removed while the folders were read"
        else:
            where = ""
            if source.lower().endswith(".csv"):
                from aim_video.data.kinetics import KINETICS_LAYOUTS

                where = f"; a CSV's clips are looked for in {KINETICS_LAYOUTS}"
            hint = (
                f"(check the folder the paths start from, {root!r}: data.root, or --root in tools/prepare_kinetics.py"
                + where
            )
        summary = f"{source}: {len(absent)} of {len(records)} videos not found, e.g. {', '.join(absent[:3])} {hint}"
        if missing == "fail":
            skip = "data.missing_files=drop (tools/prepare_kinetics.py lists: --missing drop)"
            raise AnnotationError(f"{summary}; or skip them: {skip})")
        log.warning("%s; %s)", summary, "kept" if missing == "keep" else "dropped")
        if missing == "drop":
            gone = set(absent)
            records = [r for r in records if r.path not in gone]
    if not records:
        raise AnnotationError(f"{source}: no videos left to read")
    return Annotations(records, names, absent)

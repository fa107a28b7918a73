"""Kinetics CSVs: rows and splits, the train classes, and where each clip lies on disk.

`label,youtube_id,time_start,time_end,split[,is_cc]`; clips named `{youtube_id}_{start:06d}_{end:06d}.mp4` in
per-class folders (the download tools' layouts, `KINETICS_LAYOUTS`); class index = position of the label in the sorted
set of train labels. `annotations.load_annotations` reads a CSV through `parse_kinetics_csv`.
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Sequence

from aim_video.data.annotations import (
    VIDEO_EXTENSIONS,
    AnnotationError,
    VideoRecord,
    normalize_class_name,
    not_utf8_error,
    resolve_path,
)

KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def kinetics_clip_name(youtube_id: str, start: float, end: float, ext: str = ".mp4") -> str:
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}{ext}"


LINE = "_line"  # the key under which each row read keeps its line number in the file, for error messages


def read_kinetics_csv(path: str) -> list[dict[str, str]]:
    """The rows of a Kinetics CSV as dicts, each with its line number under `LINE`; raises naming the file (and the
    line) when required columns are absent or a row is short of fields, or the file is not UTF-8."""
    try:
        return _read_kinetics_rows(path)
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None


def _read_kinetics_rows(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: else a BOM renames the first column
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or ())
        cols = set(header)
        needed = set(KINETICS_COLUMNS[1:])  # the test split has no label column
        if cols and not needed <= cols:
            raise AnnotationError(
                f"{path}: not a Kinetics CSV: columns {sorted(cols)} lack {sorted(needed - cols)} "
                f"(expected header {','.join(KINETICS_COLUMNS)},split[,is_cc])"
            )
        rows = []
        for row in reader:
            short = [col for col in header if row.get(col) is None]
            if short:
                raise AnnotationError(
                    f"{path}:{reader.line_num}: {len(header) - len(short)} fields where the header has {len(header)} "
                    f"(no {', '.join(short)}): a truncated line? Fix or delete it"
                )
            row[LINE] = reader.line_num  # type: ignore[assignment]
            rows.append(row)
    return rows


# the names the `split` column of Kinetics-style CSVs uses for each split
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "validate", "validation"), "test": ("test", "testing")}


def _split_of(row: dict[str, str]) -> str:
    return (row.get("split") or "").strip().lower()


def rows_of_split(rows: list[dict[str, str]], split: str, path: str) -> list[dict[str, str]]:
    """The rows of `split` when the CSV holds several splits (one file for train and val); else every row."""
    present = {_split_of(row) for row in rows} - {""}
    if not split or len(present) <= 1:
        return rows
    names = SPLIT_NAMES.get(split, (split,))
    kept = [row for row in rows if _split_of(row) in names]
    if not kept:
        raise AnnotationError(f"{path}: holds the splits {sorted(present)}, none of them the {split!r} split")
    return kept


def _train_labels(rows: list[dict[str, str]]) -> list[str] | None:
    """The sorted labels of the train rows (of every labelled row when there is no split column); None when the
    labelled rows all belong to another split."""
    labelled = [row for row in rows if row.get("label", "").strip()]
    train = [row for row in labelled if _split_of(row) in SPLIT_NAMES["train"]]
    if not train and any(_split_of(row) for row in labelled):
        return None
    return sorted({row["label"].strip() for row in (train or labelled)})


def _no_train_classes(path: str, rows: list[dict[str, str]]) -> AnnotationError:
    first = next(_split_of(row) for row in rows if row.get("label", "").strip())
    return AnnotationError(
        f"{path}: a labelled '{first}' split, but no train classes to take its label indices from (its "
        "own sorted labels would number the classes differently whenever one is absent from it): give the "
        "class names (data.class_map or --class-map classes.txt, written by `prepare_kinetics.py lists`), "
        "or the train CSV as data.train_list"
    )


def _classes_of_csv(path: str) -> list[str]:
    rows = read_kinetics_csv(path)
    classes = _train_labels(rows)
    if classes is None:
        raise _no_train_classes(path, rows)
    return classes


def kinetics_classes(csv_path: str) -> list[str]:
    """Class names in index order: the sorted set of the train labels of (normally the train) CSV; a CSV whose
    labelled rows all belong to another split is refused (it names no train classes).

    Remembered per file version (path, size, modification time): training asks for them for every split it loads
    and for the weights' metadata, and reading Kinetics-700's train CSV takes about a second each time."""
    if not os.path.isfile(csv_path):
        return _classes_of_csv(csv_path)  # its own error for a missing file
    stat = os.stat(csv_path)
    return list(_kinetics_classes(csv_path, stat.st_size, stat.st_mtime_ns))  # errors name the path as given


@functools.lru_cache(maxsize=8)
def _kinetics_classes(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    return tuple(_classes_of_csv(path))


def parse_kinetics_csv(
    path: str, root: str = "", classes: list[str] | None = None, ext: str = ".mp4", split: str = ""
) -> tuple[list[VideoRecord], list[str]]:
    """Records of a Kinetics CSV; `classes` (from the train CSV, a class map or class folders) fixes the indices.

    Without `classes` the sorted labels of the file's train rows are the classes (of all its rows when it has no
    `split` column); a labelled file of another split alone is refused (its own labels would number the classes
    otherwise than training whenever one is absent from it). `split` ("train" | "val" | "test") keeps the rows
    of that split when the file holds several. A label matches a class by name or by normalised name (class folders
    named the download scripts' way). Each clip is looked for (`KINETICS_LAYOUTS`) in every folder of `root/` whose
    name is the label's up to the download tools' renaming (`normalize_class_name` of both equal: `air drumming`,
    `air_drumming`, mmaction2's `tying_knot_(not_on_a_tie)` and `massaging_persons_head` all match their labels),
    the exact label first, then in `root/` itself, then the same under `root/<split>/` (one root holding train/,
    val/ and test/), as `ext` first, then with the other video extensions (downloads are often .webm or .mkv); the
    first that exists wins, else the path in the label's folder (its normalised name when there is none) with `ext`
    is recorded (and reported missing later). Folders are listed once each, so a lookup costs no file-system call.
    """
    all_rows = read_kinetics_csv(path)
    rows = rows_of_split(all_rows, split, path)
    if classes is None:
        classes = _train_labels(all_rows)
        if classes is None:
            raise _no_train_classes(path, all_rows)
    index = {name: k for k, name in enumerate(classes)}
    index.update({normalize_class_name(name): k for k, name in enumerate(classes)})
    extensions = (ext,) + tuple(e for e in VIDEO_EXTENSIONS if e != ext)
    listing = _Listing()
    records = []
    for row in rows:
        lineno = row[LINE]
        try:
            name = kinetics_clip_name(row["youtube_id"].strip(), row["time_start"], row["time_end"], ext)
        except ValueError:
            raise AnnotationError(f"{path}:{lineno}: bad time_start/time_end in {row}") from None
        label_name = row.get("label", "").strip()
        value = _split_of(row)  # its folder may use another of the split's names: validate/ for "val"
        split_dirs = next((names for names in SPLIT_NAMES.values() if value in names), (value,)) if value else ()
        if not label_name:
            folders = ["", *split_dirs]
            records.append(VideoRecord(_find(root, folders, name, extensions, listing, folders[0]), -1, ()))
            continue
        key = label_name if label_name in index else normalize_class_name(label_name)
        if key not in index:
            raise AnnotationError(
                f"{path}:{lineno}: label {label_name!r} is not among the {len(classes)} classes given (the train "
                "CSV's labels, the class map or the class folders): pass the train CSV or a class map that holds it"
            )
        norm = normalize_class_name(label_name)
        folders, label_folders = [], []
        for base in ("", *split_dirs):
            matches = listing.matching(resolve_path(root, base), norm)
            found = [os.path.join(base, f) for f in sorted(matches, key=lambda f: f != label_name)]  # exact first
            label_folders += found
            folders += [*found, base]
        default = label_folders[0] if label_folders else norm  # a missing clip is named in its class's folder
        records.append(VideoRecord(_find(root, folders, name, extensions, listing, default), index[key], (index[key],)))
    return records, list(classes)


KINETICS_LAYOUTS = (
    "root/<label>/ (any folder named as the label with spaces or '_', with or without its quotes and parentheses: "
    "'air drumming', 'air_drumming', 'tying_knot_(not_on_a_tie)'), root/, and root/<split>/ followed by each of those"
)


class _Listing:
    """The names in each folder, read once: a clip looked up in several folders and extensions costs set lookups,
    not a stat each (545,000 clips, most of them found at the first try, the missing ones at every try)."""

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str]] = {}
        self._by_norm: dict[str, dict[str, list[str]]] = {}  # folder -> {normalised name: names in it}

    @staticmethod
    def _key(folder: str) -> str:
        return folder.rstrip(os.sep) or (os.sep if folder else ".")  # "root/" and "root" are listed once

    def names(self, folder: str) -> frozenset[str]:
        folder = self._key(folder)
        names = self._names.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(folder))
            except OSError:  # absent, or not a folder
                names = frozenset()
            self._names[folder] = names
        return names

    def has(self, path: str) -> bool:
        folder, name = os.path.split(path)
        return name in self.names(folder)

    def matching(self, folder: str, norm: str) -> list[str]:
        """The names in `folder` whose normalised name is `norm` (a file among them is harmless: listing it as a
        folder gives nothing)."""
        key = self._key(folder)
        by_norm = self._by_norm.get(key)
        if by_norm is None:
            by_norm = {}
            for name in sorted(self.names(folder)):
                by_norm.setdefault(normalize_class_name(name), []).append(name)
            self._by_norm[key] = by_norm
        return by_norm.get(norm, [])


def _find(root: str, folders: list[str], name: str, extensions: Sequence[str], listing: _Listing, default: str) -> str:
    """The first root/<folder>/<name with an extension> that exists, extensions in order, then folders; else
    root/<default>/<name> with the first extension (reported missing later)."""
    stem = os.path.splitext(name)[0]
    for ext in extensions:
        for folder in folders:
            candidate = resolve_path(root, os.path.join(folder, stem + ext))
            if listing.has(candidate):
                return candidate
    return resolve_path(root, os.path.join(default, stem + extensions[0]))

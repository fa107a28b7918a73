"""Prepare a Kinetics-style data set: list files, re-encoding for fast random access, frame-accuracy checks.

    # 1. Kinetics CSVs (or list files, or class folders) -> train.txt / val.txt / classes.txt; clips are found in
    # <root>/<label>/, <root>/<label_with_underscores>/, <root>/ or <root>/<split>/ any of those
    python tools/prepare_kinetics.py lists --train k400/train.csv --val k400/validate.csv \\
        --root /data/k400/videos --out-dir /data/k400/lists

    # 2a. either re-encode every video of a list (short side 256, a keyframe every 16 frames, x264 tuned for
    # random access: fastdecode, no B-frames), 8 ffmpeg processes; each output is frame-checked before it is
    # listed, a rerun skips finished outputs; writes a list file of the outputs (repeat for val.txt)
    python tools/prepare_kinetics.py reencode --list /data/k400/lists/train.txt --root /data/k400/videos \\
        --out-root /data/k400/videos_256 --out-list /data/k400/lists/train_256.txt --jobs 8

    # 2b. or keep the originals: check random access against one sequential decode, per video (exact / shifted /
    # corrupt_after_seek / short / hangs / unreadable); resumable; report.json + report.csv, whose true frame
    # counts are what training samples from (data.verify_report=train_verify.json,val_verify.json: one report per
    # list, comma-separated); with the reports, training and evaluation
    # refuse videos they found returning wrong frames for data.backend (data.inexact_videos=fail|drop|keep)
    python tools/prepare_kinetics.py verify --list /data/k400/lists/train.txt --root /data/k400/videos \\
        --report /data/k400/lists/train_verify.json --backend decord --jobs 8 --timeout 300
    # ... then re-encode the videos that are not exact (originals untouched), verify the copies, relist; a rerun
    # keeps the copies already made; train with both reports (it prints the keys)
    python tools/prepare_kinetics.py repair --report /data/k400/lists/train_verify.json \\
        --list /data/k400/lists/train.txt --root /data/k400/videos --out-root /data/k400/repaired \\
        --out-list /data/k400/lists/train_repaired.txt --keyint 16 --jobs 8

    # 3. train on the result (data.root: the folder the list's relative paths start from; data.num_classes and
    # model.num_classes: the number of lines of classes.txt, 400 for Kinetics-400); a folder of new videos to
    # predict: `lists --test FOLDER` lists them unlabelled, and tools/test.py predicts them
    deepspeed tools/train.py --config configs/k400_vit_b16_8f.yaml data.root=/data/k400/videos_256 \\
        data.train_list=/data/k400/lists/train_256.txt data.val_list=/data/k400/lists/val_256.txt \\
        data.class_map=/data/k400/lists/classes.txt

Each subcommand is a function `cmd_<name>(args) -> int` registered in `SUBCOMMANDS`; add one by adding both.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

# run from a checkout: the repo root on the path, tools/ off it (tools/profile.py would shadow the stdlib profile)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aim_video.data import repair, verify  # noqa: E402
from aim_video.data.annotations import (  # noqa: E402
    AnnotationError,
    VideoRecord,
    load_annotations,
    read_class_map,
    write_list_file,
)
from aim_video.data.decode import BACKENDS, SEEK_MODES  # noqa: E402
from aim_video.data.encode import x264_tune  # noqa: E402
from aim_video.data.kinetics import SPLIT_NAMES, kinetics_classes, read_kinetics_csv  # noqa: E402
from aim_video.data.prepare import (  # noqa: E402
    build_lists,
    claim_out_root,
    encoder_settings,
    finish_out_root,
    output_path,
    reencode_all,
    write_outputs_list,
)

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")  # fmt: skip


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low` (a negative --short-side kept the size, --keyint 0 failed per video)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its error: "invalid integer value"
    return parse


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # --fps 0 failed every video with "no video stream"
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0")
    return value


def crf_value(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 51:
        raise argparse.ArgumentTypeError(f"{value} is outside x264's 0-51")
    return value


def add_lists(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lists", help="Kinetics CSV / list file / class folders -> list files and class map")
    p.add_argument("--train", default="", help="train CSV, list file or class folder (defines the classes; "
                   "optional with --class-map, e.g. to list a test folder that lives elsewhere)")  # fmt: skip
    p.add_argument("--val", default="", help="validation source")
    p.add_argument("--test", default="", help="test source (also a folder of videos to predict: listed unlabelled)")
    p.add_argument("--root", default="", help="folder the videos' relative paths start from")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--class-map", default="", help="class names, one per line, instead of the train labels")
    p.add_argument("--missing", choices=("drop", "fail"), default="drop", help="entries whose file does not exist")
    p.add_argument("--absolute", action="store_true", help="write absolute paths instead of paths under --root")


def cmd_lists(args: argparse.Namespace) -> int:
    sources = {k: v for k, v in (("train", args.train), ("val", args.val), ("test", args.test)) if v}
    written = build_lists(sources, args.root, args.out_dir, args.class_map, args.missing, not args.absolute)
    for name, (path, count, dropped) in written.items():
        print(f"{name}: {count} entries -> {path}" + (f" ({dropped} missing videos dropped)" if dropped else ""))
    return 0


def add_reencode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reencode", help="re-encode videos: short side, keyframe interval, constant frame rate")
    p.add_argument("--list", required=True, help="list file, Kinetics CSV or class folder of the source videos")
    p.add_argument("--root", default="", help="folder the source paths are relative to (mirrored under --out-root)")
    p.add_argument("--out-root", required=True)
    p.add_argument("--out-list", default="", help="list file of the re-encoded videos (paths under --out-root)")
    p.add_argument("--split", default="", choices=("", "train", "val", "test"), help="the rows of this split of a "
                   "Kinetics CSV that holds several (default: every row; --out-list then needs one)")  # fmt: skip
    p.add_argument("--short-side", type=at_least(0), default=256, help="256 or 320 as in the papers; 0 keeps the "
                   "size")  # fmt: skip
    p.add_argument("--keyint", type=at_least(1), default=16, help="frames between keyframes: 16 (default) loads 8x16 "
                   "clips 1.2-2.2x and TSN clips 1.5-2.6x faster than x264's default interval, the most on costly-"
                   "to-decode video; 8 gives 1.5x / 2.3x on low-bitrate footage, for 1.2-1.35x the bytes")  # fmt: skip
    p.add_argument("--crf", type=crf_value, default=23, help="x264 quality, 0-51 (lower: better, larger)")
    p.add_argument("--preset", default="fast", choices=X264_PRESETS, help="x264 preset")
    p.add_argument("--tune", default="fastdecode", help="x264 tune: fastdecode (default) decodes 1.6-1.9x faster "
                   "for 12-16%% more bytes; 'none' for x264's default (CABAC, deblocking)")  # fmt: skip
    p.add_argument("--bframes", type=int, default=0, help="B-frames between reference frames: 0 (default) reads "
                   "clips 1.07-1.26x faster for 7-19%% more bytes; -1 for x264's default (3)")  # fmt: skip
    p.add_argument("--fps", type=positive_float, default=None, help="output frame rate (default: the source's)")
    p.add_argument("--keep-audio", action="store_true")
    p.add_argument("--jobs", type=at_least(1), default=max(1, (os.cpu_count() or 2) - 1), help="parallel ffmpeg "
                   "processes")  # fmt: skip
    p.add_argument("--check-backend", default="decord", choices=BACKENDS, help="backend that must read each output "
                   "exactly (the one training will use, e.g. torchcodec)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="re-encode even when the output exists (needed to "
                   "change settings in an --out-root: it records them in aim_video_reencode.json; later runs of any "
                   "list into it re-encode the outputs older than the overwrite)")  # fmt: skip
    p.add_argument("--class-map", default="", help="class names for a Kinetics CSV that is not the train split")


def csv_splits(path: str) -> list[str]:
    """The splits a Kinetics CSV's rows hold (none for other lists), each by its canonical name (`validate` and
    `val` are one split)."""
    if not (path.lower().endswith(".csv") and os.path.isfile(path)):
        return []
    canonical = {name: split for split, names in SPLIT_NAMES.items() for name in names}
    found = {(row.get("split") or "").strip().lower() for row in read_kinetics_csv(path)} - {""}
    return sorted({canonical.get(name, name) for name in found})


def cmd_reencode(args: argparse.Namespace) -> int:
    x264_tune(args.tune)  # a wrong name fails here, not once per video
    classes = read_class_map(args.class_map) if args.class_map else None
    if args.out_list and not args.split and len(splits := csv_splits(args.list)) > 1:  # a train list with val videos
        raise ValueError(
            f"--list {args.list} holds the splits {', '.join(splits)}: --out-list would list them all as one; name "
            "one with --split (run once per split), or leave --out-list out to re-encode every row"
        )
    ann = load_annotations(args.list, args.root, classes, missing="drop", what="--list", split=args.split,
                           unlabelled_ok=True)  # fmt: skip
    src_root = args.root or (
        args.list if os.path.isdir(args.list) else os.path.commonpath([os.path.dirname(r.path) for r in ann.records])
    )
    pairs = [(r.path, output_path(r.path, src_root, args.out_root)) for r in ann.records]
    onto = [src for src, dst in pairs if os.path.realpath(src) == os.path.realpath(dst)]  # links too
    if onto:  # --out-root the sources' own folder: the copies would replace the originals
        raise ValueError(
            f"--out-root {args.out_root} is where the sources are: {len(onto)} outputs would overwrite their "
            f"originals, e.g. {onto[0]}; choose another --out-root"
        )
    options = dict(
        short_side=args.short_side, keyint=args.keyint, crf=args.crf, preset=args.preset, tune=args.tune, fps=args.fps,
        bframes=None if args.bframes < 0 else args.bframes, keep_audio=args.keep_audio,
    )  # fmt: skip
    existing = sum(os.path.exists(dst) for _, dst in pairs)
    # a changed setting stops here; during an --overwrite (this run's or an earlier one's), older outputs are stale
    stale = claim_out_root(args.out_root, encoder_settings(**options), args.overwrite, existing)
    results = reencode_all(pairs, jobs=args.jobs, stale_before=stale, check_backend=args.check_backend, **options)
    left = finish_out_root(args.out_root)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    print(f"re-encoded {counts['done']}, skipped {counts['skipped']} (already done), failed {counts['failed']}"
          + (f", {len(ann.missing)} sources missing" if ann.missing else ""))  # fmt: skip
    if left:
        print(f"{left} videos in {args.out_root} still have the settings from before --overwrite (other lists' "
              "outputs, or failures here): run reencode on their lists with these settings to re-encode "
              "them")  # fmt: skip
    if args.out_list:
        n = write_outputs_list(args.out_list, ann, results, args.out_root)
        print(f"list of {n} re-encoded videos -> {args.out_list}")
    failed = [r for r in results if r.status == "failed"]
    if failed or ann.missing:
        print("failures:")
        for path in ann.missing:
            print(f"  {path}: source file not found")
        for r in failed:
            print(f"  {r.src}: {r.reason}")
    return 1 if failed or ann.missing else 0


def _add_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="decord", choices=BACKENDS, help="the backend training will use")
    p.add_argument("--seek-mode", default="exact", choices=SEEK_MODES, help="torchcodec's seek mode")
    p.add_argument("--jobs", type=at_least(1), default=max(1, (os.cpu_count() or 2) - 1), help="videos checked at "
                   "once")  # fmt: skip
    p.add_argument("--timeout", type=non_negative_float, default=300.0, help="seconds per video; slower is "
                   "classified `hangs` (0: no limit)")  # fmt: skip


def add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check random-access frame accuracy of every video against a sequential decode")
    p.add_argument("--list", required=True, help="list file, Kinetics CSV or class folder")
    p.add_argument("--root", default="", help="folder the list's relative paths start from")
    p.add_argument("--class-map", default="", help="class names for a Kinetics CSV that is not the train split")
    p.add_argument("--report", required=True, help="JSON report to write (a CSV is written beside it)")
    p.add_argument("--fresh", action="store_true", help="ignore the journal of an interrupted run")
    _add_check_args(p)


def cmd_verify(args: argparse.Namespace) -> int:
    classes = read_class_map(args.class_map) if args.class_map else None
    needs_map = False  # repair writes a list with labels: a CSV without train rows needs the train classes there
    if classes is None and args.list.lower().endswith(".csv") and os.path.isfile(args.list):
        # labels play no part in a check: a val CSV needs no class map here (its own labels number its rows)
        classes = sorted({(row.get("label") or "").strip() for row in read_kinetics_csv(args.list)} - {""}) or None
        try:
            kinetics_classes(args.list)
        except AnnotationError:  # no train rows to number the labels by
            needs_map = classes is not None
    # missing files stay in: the report lists them `unreadable` (the warning said "dropped" while it did so)
    ann = load_annotations(args.list, args.root, classes, missing="keep", what="--list", unlabelled_ok=True)
    if len(ann.missing) == len(ann.records):  # a wrong --root: a report of nothing but "file not found"
        raise ValueError(
            f"none of the {len(ann.records)} videos of --list {args.list} exists (e.g. {ann.missing[0]}): give --root, "
            "the folder the list's paths start from"
        )
    journal = args.report + ".partial.jsonl"
    if args.fresh and os.path.exists(journal):
        os.remove(journal)
    paths = [r.path for r in ann.records]
    checks = verify.verify_videos(paths, args.backend, args.seek_mode, args.jobs, args.timeout, journal=journal)
    for c in checks:  # a check resumed from an older journal, or a crashed child's, has not asked yet
        if c.status == "unreadable" and c.plays is None:
            c.plays = verify.plays(c.path)
    csv_path = verify.write_report(checks, args.report, args.backend, args.seek_mode)
    os.remove(journal)
    counts = verify.summarize(checks)
    print(", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {args.report}, {csv_path}")
    if counts["exact"] == len(checks):
        return 0
    print("\n".join(verify.explain(checks)))
    gone = [c.path for c in checks if not os.path.exists(c.path)]
    if gone:
        print(f"{len(gone)} listed file(s) not found, e.g. {gone[0]}: download them, or drop them from the list "
              f"(--root {args.root or '(none)'}); training and evaluation with this report leave them out and list "
              "them")  # fmt: skip
    here = [c for c in checks if os.path.exists(c.path)]
    broken = sum(c.status == "unreadable" and c.plays is False for c in here)  # PyAV decodes nothing of them
    if broken:
        print(f"{broken} `unreadable` file(s) decode with nothing (truncated or failed downloads): download them "
              "again, or drop them from the list; training and evaluation with this report leave them out and list "
              "them")  # fmt: skip
    if sum(c.status != "exact" for c in here) - broken:  # what re-encoding can mend
        print(
            "re-encode the others (originals untouched; `short` ones also train as they are, from the report's "
            f"counts):\n  python tools/prepare_kinetics.py repair --report {args.report} --list {args.list}"
            + (f" --root {args.root}" if args.root else "")
            + (f" --class-map {args.class_map}" if args.class_map else "")
            + (" --class-map CLASSES_TXT (the train classes, which number the labels of the list it writes)"
               if needs_map else "")  # fmt: skip
            + " --out-root DIR --out-list NEW_LIST"
        )
    return 1


def add_repair(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("repair", help="re-encode the videos a verify report found not exact, verify again, relist")
    p.add_argument("--report", required=True, help="JSON report of `verify`")
    p.add_argument("--list", required=True, help="the list the report was made from")
    p.add_argument("--root", default="", help="folder the list's relative paths start from (mirrored in --out-root)")
    p.add_argument("--class-map", default="", help="class names for a Kinetics CSV that is not the train split")
    p.add_argument("--out-root", required=True, help="folder for the repaired copies (never the originals' folder; "
                   "a rerun with the same settings keeps the copies made)")  # fmt: skip
    p.add_argument("--out-list", required=True, help="list file: repaired copies in place of their originals "
                   "(absolute paths: the copies and the originals live under two roots)")  # fmt: skip
    p.add_argument("--keyint", type=at_least(1), default=16, help="frames between keyframes")
    p.add_argument("--short-side", type=at_least(0), default=0, help="0 keeps the size")
    p.add_argument("--crf", type=crf_value, default=18, help="x264 quality, 0-51")
    p.add_argument("--tune", default="fastdecode", help="x264 tune ('none' for x264's default), as for reencode")
    _add_check_args(p)


def cmd_repair(args: argparse.Namespace) -> int:
    x264_tune(args.tune)
    classes = read_class_map(args.class_map) if args.class_map else None
    ann = load_annotations(args.list, args.root, classes, missing="drop", what="--list", unlabelled_ok=True)
    listed = {os.path.abspath(p) for p in [r.path for r in ann.records] + ann.missing}  # missing: reported still
    reported = verify.load_report(args.report)
    checks = [c for c in reported if os.path.abspath(c.path) in listed]  # only this list's videos are repaired
    if reported and not checks:
        raise ValueError(
            f"--report {args.report} covers none of the {len(listed)} videos of --list {args.list} (e.g. "
            f"{reported[0].path} against {next(iter(sorted(listed)))}): give the report verify wrote for this list, "
            "with the same --root"
        )
    # copies mirror the sources' folders below --root, or below the list's folder tree or their common folder
    root = args.root or (args.list if os.path.isdir(args.list) else "")
    mapping, rechecked, kept = repair.repair_videos(
        checks, args.out_root, root, args.keyint, args.short_side, args.crf, args.backend, args.seek_mode,
        args.jobs, args.timeout, tune=args.tune,
    )  # fmt: skip
    # absolute, all of them (as --out-list says): the copies and the originals live under two roots
    records = [VideoRecord(mapping.get(os.path.abspath(r.path), os.path.abspath(r.path)), r.label, r.labels)
               for r in ann.records]  # fmt: skip
    write_list_file(args.out_list, records)
    report = os.path.splitext(args.out_list)[0] + "_verify.json"
    verify.write_report(rechecked, report, args.backend, args.seek_mode)
    sources = {os.path.abspath(c.path) for c in checks}
    still_bad = [c for c in rechecked if c.path in sources]  # originals kept: no exact copy replaces them
    earlier = f"; {kept} copies an earlier run made with these settings were kept" if kept else ""
    print(f"repaired {len(mapping)} of {len(mapping) + len(still_bad)} videos -> {args.out_list} (copies verified: "
          f"{report}{earlier})")  # fmt: skip
    for c in still_bad:
        print(f"  not repaired: {c.path}: {c.status} {c.reason}")
    # the new report covers the copies; the original one every other video of the list (and what was not repaired)
    print(f"train with both reports: data.train_list={os.path.abspath(args.out_list)} (or the val/test list key) "
          f"data.verify_report={os.path.abspath(args.report)},{os.path.abspath(report)}")  # fmt: skip
    return 1 if still_bad else 0


SUBCOMMANDS = {
    "lists": (add_lists, cmd_lists),
    "reencode": (add_reencode, cmd_reencode),
    "verify": (add_verify, cmd_verify),
    "repair": (add_repair, cmd_repair),
}


def main(argv: list[str] | None = None) -> int:
    first, _, examples = __doc__.split("Each subcommand is a function")[0].partition("\n\n")
    parser = argparse.ArgumentParser(description=first, epilog=examples, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    try:
        return SUBCOMMANDS[args.command][1](args)
    except (AnnotationError, RuntimeError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # finished outputs (renamed into place when whole) and journals are kept
        again = " again to go on from where it stopped" if args.command in ("reencode", "verify") else " again"
        print(f"\ninterrupted: run the same {args.command} command{again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

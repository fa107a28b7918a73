"""Repair: re-encode the videos a `verify` report found not exact, so that random access reads them exactly.

Copies go to their own folder (originals are only read), mirroring the originals' paths, as h264 .mp4 at a constant
frame rate with closed groups of pictures of exactly `keyint` frames (`encode.transcode`), and are verified with
the same backend as the originals. The folder records the settings its copies were made with
(`aim_video_repair.json`): a rerun with the same settings keeps the copies an earlier run finished (a copy is
written under a temporary name and renamed, so one that exists is whole) and verifies them again; a run with other
settings re-encodes every copy older than its record.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

from aim_video.data import decode, encode, watchdog
from aim_video.data.annotations import write_lines
from aim_video.data.verify import VideoCheck, verify_videos

RECORD = "aim_video_repair.json"


def _transcode_one(job: tuple[str, str, int, int, int, str]) -> int:
    src, dst, keyint, short_side, crf, tune = job
    return encode.transcode(src, dst, keyint=keyint, short_side=short_side, crf=crf, tune=tune)


def claim_folder(out_dir: str, settings: dict) -> float:
    """Record `settings` in `out_dir` unless they are recorded there already; returns the record's time (the folder's
    clock, as the copies' times). A copy at least that new was made with `settings`; an older one (other settings,
    or a folder with no record) is not known to be, and is re-encoded."""
    path = os.path.join(out_dir, RECORD)
    try:
        with open(path, encoding="utf-8") as f:
            same = json.load(f).get("settings") == settings
    except (OSError, ValueError, AttributeError):  # none yet, unreadable, or not this tool's
        same = False
    if not same:
        write_lines(path, [json.dumps({"settings": settings}, indent=2, sort_keys=True)])  # atomic
    return os.path.getmtime(path)


def _finished(dst: str, since: float) -> bool:
    try:
        return os.path.getmtime(dst) >= since  # a tie is this encoding's: a copy done in the record's second
    except FileNotFoundError:
        return False


def repair_videos(
    checks: list[VideoCheck],
    out_dir: str,
    root: str = "",
    keyint: int = 16,
    short_side: int = 0,
    crf: int = 18,
    backend: str = "decord",
    seek_mode: str = "exact",
    jobs: int = 1,
    timeout_s: float = 600.0,
    progress: bool = True,
    tune: str = "fastdecode",
) -> tuple[dict[str, str], list[VideoCheck], int]:
    """Re-encode every video that is not `exact` into `out_dir` and verify the copies with the same backend.

    Copies mirror the originals' paths relative to `root` (default: their common folder), as .mp4: constant frame rate,
    closed GOPs of `keyint` frames, optionally resized to `short_side`, x264's `tune` (`encode.transcode`).
    Originals are only read; two originals that differ only in extension (`x.mp4`, `x.mkv`) get copies `x.mp4` and
    `x_mkv.mp4`. A copy an earlier run made with the same settings is kept (and verified again). Returns
    ({original absolute path: repaired path} for copies that verify `exact`, the checks to report: the copies', and
    for every original not replaced (its copy failed to encode or is not exact) its own check, the failure added to
    the reason, so that training with the new report still knows what it is; how many copies were kept).
    """
    out_dir = os.path.abspath(out_dir)
    sources = [os.path.abspath(c.path) for c in checks if c.status != "exact"]
    if not root and sources:  # their common folder: copies keep the folders below it (class folders, say)
        root = os.path.commonpath([os.path.dirname(p) for p in sources])
    settings = {"keyint": keyint, "short_side": short_side, "crf": crf, "tune": encode.x264_tune(tune)}
    original: dict[str, VideoCheck] = {}
    dst_of: dict[str, str] = {}  # original -> copy, in input order
    taken: set[str] = set()
    for check in checks:
        if check.status == "exact":
            continue
        src = os.path.abspath(check.path)
        if src in original:
            continue
        rel = os.path.relpath(src, os.path.abspath(root)) if root else os.path.basename(src)
        if rel.startswith(".."):
            rel = os.path.basename(src)
        stem, ext = os.path.splitext(rel)
        dst = os.path.join(out_dir, stem + ".mp4")
        if dst in taken:  # another original with this name and another extension already has it
            dst = os.path.join(out_dir, f"{stem}_{ext.lstrip('.').lower()}.mp4")
        if os.path.realpath(dst) == os.path.realpath(src):  # a linked output folder too
            raise ValueError(f"repair would overwrite {src}; choose an output folder other than the videos' own")
        if dst in taken:
            raise ValueError(
                f"repair would write two copies to {dst}; give --root, the folder the list's paths start from (copies "
                "mirror the folders below it), or rename one of their originals"
            )
        taken.add(dst)
        original[src] = replace(check, path=src)
        dst_of[src] = dst
    since = claim_folder(out_dir, settings) if dst_of else 0.0
    encoded = {dst: src for src, dst in dst_of.items() if _finished(dst, since)}  # copy -> original
    kept = len(encoded)
    todo = [(src, dst, keyint, short_side, crf, tune) for src, dst in dst_of.items() if dst not in encoded]
    failed: list[VideoCheck] = []
    for job, _, err in watchdog.run_pool(_transcode_one, todo, jobs, timeout_s):
        if err is None:
            encoded[job[1]] = job[0]
        else:
            reason = err.reason if isinstance(err, decode.VideoReadError) else f"{type(err).__name__}: {err}"
            before = original[job[0]]
            failed.append(replace(before, reason=f"re-encoding failed: {reason}; as it is: {before.reason}"))
    position = {src: k for k, src in enumerate(dst_of)}  # the pool yields as jobs finish: report in input order
    copies = sorted(encoded, key=lambda dst: position[encoded[dst]])
    failed.sort(key=lambda c: position[c.path])
    rechecked = verify_videos(copies, backend, seek_mode, jobs, timeout_s, progress=progress)
    mapping = {encoded[c.path]: c.path for c in rechecked if c.status == "exact"}
    not_exact = [  # originals whose copy is not exact stay in the list: the report must still say what they are
        replace(original[encoded[c.path]], reason=f"its copy {c.path} is {c.status} too; as it is: "
                + original[encoded[c.path]].reason)
        for c in rechecked
        if c.status != "exact"
    ]  # fmt: skip
    return mapping, rechecked + not_exact + failed, kept

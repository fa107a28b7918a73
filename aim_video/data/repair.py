"""Repair: re-encode the videos a `verify` report found not exact, so that random access reads them exactly.

Copies go to their own folder (originals are only read), mirroring the originals' paths, as h264 .mp4 at a constant
frame rate with closed groups of pictures of exactly `keyint` frames (`encode.transcode`), and are verified with
the same backend as the originals. Each finished copy is journalled in that folder (`aim_video_repair.jsonl`: the
copy, its original's path, size and modification time, the settings, the copy's own size and time), so a rerun keeps
a copy only when all of that still holds (a copy is written under a temporary name and renamed, so one that exists
is whole) and verifies it again; a copy of another original, of an original changed since, or made with other
settings is made again.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace

from aim_video.data import decode, encode, watchdog
from aim_video.data.verify import VideoCheck, file_stamp, verify_videos

JOURNAL = "aim_video_repair.jsonl"


def _transcode_one(job: tuple[str, str, int, int, int, str]) -> int:
    src, dst, keyint, short_side, crf, tune = job
    return encode.transcode(src, dst, keyint=keyint, short_side=short_side, crf=crf, tune=tune)


def _entry(src: str, dst: str, settings: dict, source_stamp: list[int]) -> dict:
    """What a copy was made from and with, as the journal keeps it (`source_stamp`: the original's before encoding;
    stamps as lists, as JSON reads them back)."""
    return {"copy": dst, "source": src, "source_stamp": source_stamp, "settings": settings,
            "copy_stamp": list(file_stamp(dst))}  # fmt: skip


def _journalled(out_dir: str) -> dict[str, dict]:
    """{copy: its latest journal entry} (a line cut short by a kill is skipped)."""
    entries: dict[str, dict] = {}
    with contextlib.suppress(FileNotFoundError), open(os.path.join(out_dir, JOURNAL), encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and "copy" in entry:
                    entries[entry["copy"]] = entry
    return entries


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
    `x_mkv.mp4`. A copy an earlier run made of the same original with the same settings is kept (and verified
    again). Returns ({original absolute path: repaired path} for copies that verify `exact`, the checks to report:
    the copies', and for every original not replaced (its copy failed to encode or is not exact) its own check, the
    failure added to the reason, so that training with the new report still knows what it is; how many copies were
    kept).
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
    done = _journalled(out_dir)
    stamps = {src: list(file_stamp(src)) for src in dst_of}  # before encoding: a replaced original is not this copy's
    encoded = {dst: src for src, dst in dst_of.items() if done.get(dst) == _entry(src, dst, settings, stamps[src])}
    kept = len(encoded)
    todo = [(src, dst, keyint, short_side, crf, tune) for src, dst in dst_of.items() if dst not in encoded]
    failed: list[VideoCheck] = []
    journal = os.path.join(out_dir, JOURNAL)
    if todo:
        os.makedirs(out_dir, exist_ok=True)
        with contextlib.suppress(FileNotFoundError), open(journal, "rb+") as f:  # a line a kill cut short ends here
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")
    for job, _, err in watchdog.run_pool(_transcode_one, todo, jobs, timeout_s):
        if err is None:
            encoded[job[1]] = job[0]
            with open(journal, "a", encoding="utf-8") as f:  # one line per finished copy
                f.write(json.dumps(_entry(job[0], job[1], settings, stamps[job[0]])) + "\n")
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

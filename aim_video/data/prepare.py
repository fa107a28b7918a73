"""Offline preparation: list files from any annotation source, and re-encoding for fast random access.

Re-encoding (the AIM recipe pre-resizes videos once, offline) makes each clip cheaper twice over: fewer pixels to
decode (short side 256 or 320 instead of 720 or more) and a short keyframe interval, so a seek decodes at most
`keyint - 1` frames before the one asked for. Output is H.264 in mp4 at a constant frame rate with closed GOPs and
a keyframe exactly every `keyint` frames (no scene-cut keyframes), moov atom first, video only by default, tuned
for random access: x264 `-tune fastdecode` (CAVLC entropy coding, no deblocking filter) and no B-frames (a frame
decodes once the frames before it have, never waiting for a later one; `encode.transcode` encodes the same way).

The encoder is the `ffmpeg` program (the same FFmpeg libraries torchcodec needs; Debian/Ubuntu:
`apt-get install -y ffmpeg`). Every output is written under a temporary name, checked to decode, then renamed:
an existing output is therefore complete, and a rerun skips it. The output folder records the encoder settings
(`aim_video_reencode.json`), so a rerun with other settings stops instead of mixing two encodings in one folder.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import inspect
import json
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from aim_video.data.annotations import (
    VIDEO_EXTENSIONS,
    Annotations,
    class_folder_names,
    load_annotations,
    read_class_map,
    write_lines,
    write_list_file,
)
from aim_video.data.decode import VideoReadError, video_stream_index
from aim_video.data.encode import x264_tune
from aim_video.data.verify import check_video


@dataclass
class EncodeResult:
    src: str
    dst: str
    status: str  # done | skipped | failed
    reason: str = ""


def ffmpeg_binary() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("re-encoding needs the ffmpeg program: `apt-get install -y ffmpeg` (Debian/Ubuntu)")
    return exe


@functools.lru_cache(maxsize=4)
def constant_rate_option(binary: str) -> tuple[str, ...]:
    """`-fps_mode cfr` (FFmpeg 5.1 and later), or its older spelling `-vsync cfr` for an ffmpeg that does not know
    it (FFmpeg 4.x, e.g. Ubuntu 22.04's), where `-fps_mode` would fail every encode with "Unrecognized option"."""
    try:
        out = subprocess.run([binary, "-hide_banner", "-h", "full"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ("-fps_mode", "cfr")  # the encode itself then says what is wrong with the binary
    return ("-fps_mode", "cfr") if "-fps_mode" in out.stdout else ("-vsync", "cfr")


def reencode_command(
    src: str,
    dst: str,
    short_side: int = 256,
    keyint: int = 16,
    crf: int = 23,
    preset: str = "fast",
    tune: str = "fastdecode",
    bframes: int | None = 0,
    fps: float | None = None,
    keep_audio: bool = False,
    threads: int = 1,
    stream_index: int | None = None,
) -> list[str]:
    """The ffmpeg command line: short side <= `short_side` (never upscaled, even sizes), keyframe every `keyint`.

    `fps` None keeps the source's frame rate (made constant); `short_side` 0 keeps the size; `keyint` 0 keeps the
    encoder's default keyframe placement (x264: at most 250 frames apart, plus scene cuts). `tune` is x264's
    `-tune` ("" or "none" for none); the default, fastdecode, turns off CABAC, the deblocking filter and weighted
    prediction: clips decode 1.6-1.9x faster for 12-16% more bytes (docs/benchmarks.md, generated and real footage).
    `bframes` is x264's B-frames between reference frames (None: x264's default, 3). The default, 0, reads clips of
    keyframe-16 copies 1.07-1.26x faster for 7-19% more bytes: a frame is decoded from the frames before it, never
    waiting for a later one (docs/benchmarks.md, "Loader"; generated and real footage).
    """
    if short_side > 0:
        s = int(short_side)
        scale = (
            f"scale=w='if(gt(iw,ih),-2,trunc(min({s},iw)/2)*2)':h='if(gt(iw,ih),trunc(min({s},ih)/2)*2,-2)'"
            ":flags=bicubic"
        )
    else:
        scale = "scale=trunc(iw/2)*2:trunc(ih/2)*2"
    vf = scale if fps is None else f"fps={fps},{scale}"
    binary = ffmpeg_binary()
    cmd = [binary, "-nostdin", "-y", "-loglevel", "error", "-threads", str(threads), "-i", src]
    video = "0:v:0" if stream_index is None else f"0:{stream_index}"  # reencode_one: the stream decoders read
    cmd += ["-map", video] + (["-map", "0:a?", "-c:a", "aac"] if keep_audio else ["-an"])
    cmd += ["-vf", vf, "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p"]
    tune = x264_tune(tune)
    if tune:
        cmd += ["-tune", tune]
    if bframes is not None:
        if bframes < 0:
            raise ValueError(f"bframes must be >= 0 (or None for x264's default), got {bframes}")
        cmd += ["-bf", str(bframes)]
    if keyint > 0:
        cmd += ["-g", str(keyint), "-keyint_min", str(keyint), "-sc_threshold", "0", "-flags", "+cgop"]
    cmd += [*constant_rate_option(binary), "-threads", str(threads), "-movflags", "+faststart", "-f", "mp4", dst]
    return cmd


def check_decodes(path: str, backend: str = "decord") -> str:
    """'' when random access with `backend` returns exactly the frames of a sequential decode (`verify.check_video`:
    every seek point, mid-group and last frames), else the verdict and reason."""
    check = check_video(path, backend)
    return "" if check.status == "exact" else f"{check.status}: {check.reason}"


def _remove_dead_partials(dst: str) -> None:
    """Delete the temporary copies of `dst` that a killed run left (their process is gone): they were never
    listed, but each took a video's size of disk for good."""
    for leftover in glob.glob(f"{glob.escape(dst)}.*-*.partial"):
        pid = leftover[len(dst) + 1 :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.remove(leftover)
        except PermissionError:  # alive, another user's
            pass


def reencode_one(
    src: str,
    dst: str,
    check_backend: str = "decord",
    timeout_s: float = 600,
    stale_before: float | None = None,
    **options,
) -> EncodeResult:
    """Re-encode `src` to `dst` (see reencode_command for `options`); skipped when `dst` already exists, unless it
    was written before `stale_before` (a pending overwrite's start, `claim_out_root`; an --overwrite run's own)."""
    if os.path.exists(dst) and not (stale_before is not None and _older(dst, stale_before)):
        return EncodeResult(src, dst, "skipped")
    if not os.path.isfile(src):
        return EncodeResult(src, dst, "failed", "source file not found")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    # unique per process and thread; not a video extension, so a copy left by a killed run is never listed
    tmp = f"{dst}.{os.getpid()}-{threading.get_ident()}.partial"
    _remove_dead_partials(dst)
    try:
        try:  # the stream decoding reads (FFmpeg's best), not the first video stream: a cover image may come first
            index = video_stream_index(src)
        except VideoReadError as err:
            return EncodeResult(src, dst, "failed", err.reason)
        command = reencode_command(src, tmp, **options, stream_index=index)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return EncodeResult(src, dst, "failed", f"ffmpeg exit {proc.returncode}: {lines[-1] if lines else ''}")
        problem = check_decodes(tmp, check_backend)
        if problem:
            return EncodeResult(src, dst, "failed", f"output does not decode: {problem}")
        os.replace(tmp, dst)
        return EncodeResult(src, dst, "done")
    except subprocess.TimeoutExpired:
        return EncodeResult(src, dst, "failed", f"ffmpeg ran over {timeout_s:.0f} s")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


SETTINGS_FILE = "aim_video_reencode.json"


def encoder_settings(**options) -> dict:
    """What shapes a re-encoded video: `reencode_command`'s options, its defaults filled in, the tune resolved."""
    params = inspect.signature(reencode_command).parameters
    settings = {k: p.default for k, p in params.items() if k not in ("src", "dst", "threads", "stream_index")}
    unknown = set(options) - set(settings)
    if unknown:
        raise ValueError(f"unknown re-encoding option(s) {sorted(unknown)}; known: {sorted(settings)}")
    settings.update(options)
    settings["tune"] = x264_tune(settings["tune"])
    return settings


def claim_out_root(out_root: str, settings: dict, overwrite: bool = False, existing: int = 0) -> float | None:
    """Record `settings` in `out_root`/aim_video_reencode.json; refuse a folder whose videos used other settings.

    A rerun skips outputs that exist, so without this a changed `--keyint` (say) would leave the folder holding two
    encodings with nothing to tell them apart. An `overwrite` run replaces the record and notes when it started (the
    record's own mtime: the folder's clock, as the outputs' mtimes): every output older than that is stale and is
    re-encoded, by this run and by any later run with the same settings, of this list or of another list that shares
    the folder, until `finish_out_root` finds none left. `existing` (how many of this run's outputs exist already)
    with no record means outputs of unknown settings (an older aim-video, another tool): refused unless `overwrite`.
    Returns that start time while an overwrite is pending (outputs older than it are re-encoded), else None.
    """
    path = os.path.join(out_root, SETTINGS_FILE)
    if os.path.exists(path) and not overwrite and not _holds_videos(out_root):
        os.remove(path)  # a first run stopped before any output: nothing was encoded with the recorded settings
    if existing and not overwrite and not os.path.exists(path):
        raise ValueError(
            f"{out_root} already holds {existing} of this run's outputs but no {SETTINGS_FILE}, so their encoder "
            "settings are unknown (an older aim-video or another tool made them, or it is the sources' own folder) "
            "and a rerun would skip them: choose another --out-root, or pass --overwrite to re-encode outputs "
            "(never sources)"
        )
    before = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
    same = before is not None and before.get("encoder", {}) == settings
    if before is not None and not overwrite:
        old = before.get("encoder", {})
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if changed:
            what = ", ".join(f"{k}={a!r} (this run: {b!r})" for k, (a, b) in sorted(changed.items()))
            raise ValueError(
                f"{out_root} holds videos re-encoded with other settings: {what}. A rerun skips existing outputs, "
                "so the folder would mix two encodings: choose another --out-root, or pass --overwrite to re-encode "
                "every video with this run's settings"
            )
        if before.get("overwriting") and "overwrite_started" not in before:  # written by an older aim-video
            raise ValueError(
                f"an --overwrite run into {out_root} did not re-encode every video, so some outputs may still have "
                "the previous settings: run it again with --overwrite"
            )
        return float(before["overwrite_started"]) if before.get("overwriting") else None
    if same and before.get("overwriting") and "overwrite_started" in before:
        return float(before["overwrite_started"])  # an unfinished overwrite with these settings: go on with it
    version = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    record = {"encoder": settings, "ffmpeg": version, "overwriting": overwrite}
    _write_record(path, record)
    if not overwrite:
        return None
    started = os.path.getmtime(path)
    _write_record(path, record | {"overwrite_started": started})
    return started


def _holds_videos(folder: str) -> bool:
    return any(f.lower().endswith(VIDEO_EXTENSIONS) for _, _, files in os.walk(folder) for f in files)


def finish_out_root(out_root: str) -> int:
    """After a run: how many videos in `out_root` still predate a pending overwrite (they have the old settings).

    None left clears the record's overwrite mark; some left (another list's outputs, or failures here) keep it, and
    the next run into the folder re-encodes the ones it lists.
    """
    path = os.path.join(out_root, SETTINGS_FILE)
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if not record.get("overwriting") or "overwrite_started" not in record:
        return 0
    stale = sum(
        _older(os.path.join(folder, name), record["overwrite_started"])
        for folder, _, files in os.walk(out_root)
        for name in files
        if name.lower().endswith(VIDEO_EXTENSIONS)
    )
    if stale == 0:
        _write_record(path, {k: v for k, v in record.items() if k != "overwrite_started"} | {"overwriting": False})
    return stale


def _older(path: str, started: float) -> bool:
    """Whether `path` was written before `started` (a tie counts as new: an output finished in the record's second,
    on a file system with coarse times, is this run's; an older one predates the command that wrote the record)."""
    try:
        return os.path.getmtime(path) < started
    except FileNotFoundError:  # removed meanwhile
        return False


def _write_record(path: str, record: dict) -> None:
    write_lines(path, [json.dumps(record, indent=2, sort_keys=True)])


def output_path(src: str, src_root: str, out_root: str) -> str:
    """`out_root` + the path of `src` relative to `src_root`, with an .mp4 extension."""
    rel = os.path.relpath(src, src_root) if src_root else os.path.basename(src)
    if rel.startswith(".."):
        raise ValueError(f"{src} is not inside the source root {src_root}; pass the folder that holds every video")
    return os.path.join(out_root, os.path.splitext(rel)[0] + ".mp4")


def reencode_all(
    pairs: Iterable[tuple[str, str]], jobs: int = 4, progress: bool = True, **options
) -> list[EncodeResult]:
    """Re-encode (src, dst) pairs with `jobs` ffmpeg processes at once; results in input order.

    A pair listed twice is encoded once. Two sources with one output (`a/x.mp4` and `a/x.webm`) cannot both be
    kept: the first is encoded, the others fail, naming it.
    """
    from tqdm import tqdm

    pairs = list(pairs)
    owner: dict[str, str] = {}
    for src, dst in pairs:
        owner.setdefault(dst, src)
    todo = list(dict.fromkeys((src, dst) for src, dst in pairs if owner[dst] == src))
    done: dict[tuple[str, str], EncodeResult] = {}
    failed = 0
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = {pool.submit(reencode_one, *pair, **options): pair for pair in todo}
        bar = tqdm(total=len(futures), desc="re-encode", unit="video", disable=not progress)
        for fut in as_completed(futures):  # the bar moves as videos finish, not in the order they were queued
            done[futures[fut]] = result = fut.result()
            failed += result.status == "failed"  # counted as they come: a sum over all results per video was
            bar.update(1)  # quadratic (15 minutes of skipping on a rerun over Kinetics-400)
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
        bar.close()
    except BaseException:  # Ctrl-C: the videos being encoded end, the queued ones are dropped (it ran them all)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    clash = "{} has the same output {}: rename one of the two sources"
    return [
        done[(src, dst)] if owner[dst] == src else EncodeResult(src, dst, "failed", clash.format(owner[dst], dst))
        for src, dst in pairs
    ]


def write_outputs_list(path: str, ann: Annotations, results: list[EncodeResult], out_root: str) -> int:
    """A list file of the re-encoded videos that exist (failed ones left out); returns how many were listed."""
    dst_of = {r.src: r.dst for r in results if r.status in ("done", "skipped")}
    records = [type(rec)(dst_of[rec.path], rec.label, rec.labels) for rec in ann.records if rec.path in dst_of]
    write_list_file(path, records, root=out_root)
    return len(records)


def _warn_duplicates(split: str, records: list, loaded: dict) -> None:
    """Say when a split lists a video twice (evaluation would count it twice) or shares videos with train (the
    score would be measured on training data). Real Kinetics CSVs hold both; the lists are written as given."""
    paths = [os.path.abspath(r.path) for r in records]
    twice = sorted(p for p, n in Counter(paths).items() if n > 1)
    if twice:
        print(f"warning: {split}: {len(twice)} videos are listed more than once, e.g. {twice[0]}: evaluation counts "
              "each listing; remove the repeats", file=sys.stderr)  # fmt: skip
    if split != "train" and "train" in loaded:
        shared = set(paths) & {os.path.abspath(r.path) for r in loaded["train"].records}
        if shared:
            print(f"warning: {split}: {len(shared)} videos are also in train, e.g. {sorted(shared)[0]}: the {split} "
                  "score would be measured on training videos", file=sys.stderr)  # fmt: skip


def build_lists(
    sources: dict[str, str], root: str, out_dir: str, class_map: str = "", missing: str = "drop", relative: bool = True
) -> dict[str, tuple[str, int, int]]:
    """Write `<split>.txt` list files and `classes.txt` from {split: list file | Kinetics CSV | class folder}.

    Classes come from `class_map` if given, else from the train source (sorted labels for a CSV, sorted folders
    for a class tree); every split is labelled with them, except a val or test folder of videos without class
    folders, which is listed unlabelled (and needs no classes). Paths are written relative to `root` when `relative`.
    Returns {split or "classes": (written path, entries written, entries dropped as missing)}.
    """
    classes: list[str] | None = read_class_map(class_map) if class_map else None
    unlabelled = {split for split, src in sources.items() if os.path.isdir(src) and not class_folder_names(src)}
    if "train" not in sources and classes is None and set(sources) - unlabelled:  # a folder of videos needs none
        raise ValueError("without a train source the classes are unknown: give --train, or --class-map classes.txt")
    order = sorted(sources, key=lambda s: s != "train")  # train first: it defines the classes
    loaded = {}
    for split in order:  # every split read and checked before anything is written: no half-updated out_dir
        loaded[split] = load_annotations(sources[split], root, classes, missing, f"{split} annotations", split)
        if classes is None and loaded[split].classes:
            classes = loaded[split].classes
    written = {}
    for split, ann in loaded.items():
        path = os.path.join(out_dir, f"{split}.txt")
        base = root if relative and root else ""
        records = list(ann.records)
        if not relative:  # paths under a relative --root are relative too: make them what --absolute says
            records = [type(r)(os.path.abspath(r.path), r.label, r.labels) for r in records]
        _warn_duplicates(split, records, loaded)
        write_list_file(path, records, root=base)
        written[split] = (path, len(ann.records), len(ann.missing))
    if classes:
        path = os.path.join(out_dir, "classes.txt")
        write_lines(path, classes)
        written["classes"] = (path, len(classes), 0)
    return written

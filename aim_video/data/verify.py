"""Frame-accuracy check of videos for random-access decoding (`repair.py` re-encodes the ones that fail it).

Random access trusts the container: its seek points (keyframe flags) and its frame count. Real files lie about both
(keyframe flags on frames that still reference earlier ones, timestamps with gaps, a count one higher than what
decodes), and decord / torchcodec then return garbage or the wrong frame without raising. `check_video` compares the
backend's random-access reads with ONE sequential PyAV decode of the same file and classifies the video:

- `exact`: every checked frame equals the sequential decode (mean absolute difference < `tol` on uint8), or,
  where the backend converts colours differently from PyAV (high-bit-depth video: 10-bit HDR from phones and
  YouTube, dithered down to 8 bits another way), is nearest to the frame asked for and differs from it no more
  than the first frame of a fresh reader does (`conversion_error`, a read that involves no seek);
- `shifted`: some reads return another frame of the video; `offset` = requested index - index returned;
- `corrupt_after_seek`: some reads match no frame of the video (decoding started at a false seek point);
- `short`: the backend claims more frames than decode (`claimed_frames` > `decoded_frames`); where the backend fails
  on the last of the frames that decode (torchcodec needs the packet after a frame to return it, and a cut-off file's
  last packet does not decode), `decoded_frames` is lowered to the count it reads;
- `hangs`: the check did not finish within the per-video time limit (its child was killed);
- `unreadable`: the file cannot be opened or decoded, or some reads fail and the others return the frames asked for
  (`reason`). Wrong frames decide: a file where some reads fail and others return wrong frames is `shifted` or
  `corrupt_after_seek`, its failing read named in the reason (the statuses data.inexact_videos acts on).

Checked indices (`check_groups`): each seek point and the frame after it, the middle of each group of pictures, and
the last two frames, read group by group from the end backwards so that every read starts with a seek, as in
training. A long video with more than `max_groups` (24) groups has that many checked, spread evenly, plus every
group that starts at a seek point the sequential decode found not to be a real keyframe (up to another 24): those
are where reads go wrong. The sequential decode converts frames to RGB only at those indices, so the cost of an
exact file is one sequential decode plus the reads (which decode half of each group of pictures, and all of the
last one). Only when a read is wrong does a second sequential decode build thumbnails of every frame, to find which
frame it returned.

A read that fails is tried again by fresh readers (`READ_TRIES` in all): decord fails now and then at random on a
file with an undecodable packet (its demuxing runs ahead of its decoding thread into the bad packet, more often on a
busy machine), so only a failure that repeats says something of the file.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from aim_video.data import decode, watchdog

STATUSES = ("exact", "shifted", "corrupt_after_seek", "short", "hangs", "unreadable")


@dataclass
class VideoCheck:
    path: str
    status: str
    backend: str = ""
    claimed_frames: int = -1  # what the backend reports (what sampling would use without a report)
    decoded_frames: int = -1  # the count sampling must use: what a sequential decode yields, or fewer where the
    # backend fails on the last of those frames (`short` only)
    offset: int = 0  # shifted: requested index - index of the frame returned (3: index i returns frame i-3)
    max_error: float = 0.0  # worst mean absolute difference (uint8) of a checked read against the true frame
    conversion_error: float = 0.0  # the same for frame 0 read first by a fresh reader (measured after a wrong read)
    checked: int = 0  # frames compared
    bad_indices: list[int] = field(default_factory=list)  # first wrong reads
    reason: str = ""
    seconds: float = 0.0
    size: int = -1  # the file's size and modification time when checked: a report is stale for a file that
    mtime_ns: int = -1  # changed since (-1: not recorded, reports of an older aim-video; -2: the file was absent)
    plays: bool | None = None  # `unreadable` only: whether PyAV decodes a first frame (False: a broken download)


ABSENT = -2  # the stamp of a file that was not there when checked (-1: a report written without stamps)


def file_stamp(path: str) -> tuple[int, int]:
    """(size, mtime_ns) of `path`, (ABSENT, ABSENT) when it is not there: what a check holds to tell a changed file."""
    try:
        st = os.stat(path)
    except OSError:
        return ABSENT, ABSENT
    return st.st_size, st.st_mtime_ns


def is_stale(check: VideoCheck) -> bool:
    """Whether the file changed, went or came (a video downloaded after the check found it missing) since `check`
    was made; checks without a stamp (older reports) are taken as current."""
    return check.size != -1 and file_stamp(check.path) != (check.size, check.mtime_ns)


def check_groups(
    seek_points: list[int], num_frames: int, max_groups: int = 24, include: Iterable[int] = ()
) -> list[list[int]]:
    """Index groups to read, one random-access read per group, last group first (pure index math).

    For at most `max_groups` groups of pictures (spread evenly over the video, the last one always included): one
    read of [seek point, seek point + 1, middle of the group], for which the decoder seeks to the seek point and
    decodes forward, as for a clip that starts anywhere in the group; the last group's read also takes the last two
    frames. Groups are read from the end backwards, so every read starts with a seek. Indices stay inside
    0..num_frames-1. Groups that start at a seek point in `include` are kept whatever `max_groups` says.
    """
    if num_frames <= 0:
        return []
    starts = sorted({k for k in seek_points if 0 <= k < num_frames} | {0})
    bounds = list(zip(starts, starts[1:] + [num_frames], strict=True))
    if len(bounds) > max_groups:
        pick = set(np.linspace(0, len(bounds) - 1, max_groups).round().astype(int).tolist())
        must = set(include)
        bounds = [b for i, b in enumerate(bounds) if i in pick or b[0] in must]
    groups = []
    for start, end in bounds:
        group = {start, min(start + 1, end - 1)}
        if end - start > 3:
            group.add((start + end) // 2)
        if end == num_frames:
            group |= {max(num_frames - 2, start), num_frames - 1}
        groups.append(sorted(group))
    return groups[::-1]


def _thumb(frame: np.ndarray, step: int) -> np.ndarray:
    """Every `step`-th pixel (float32): cheap enough for every frame of a 720p video, and equal for equal frames."""
    return frame[step // 2 :: step, step // 2 :: step].astype(np.float32)


def _reference_decode(path: str, wanted: set[int], num_threads: int) -> tuple[dict[int, np.ndarray], set[int], int]:
    """One sequential PyAV decode: upright RGB frames at `wanted`, the indices of real keyframes, how many decode.

    Only the wanted frames are converted to RGB: converting every frame costs about as much as decoding it, or
    more (PyAV, 2 cores: 1-3x the decoding time on the benchmark videos)."""
    container = decode.open_av(path, num_threads)
    full: dict[int, np.ndarray] = {}
    keyframes: set[int] = set()  # frames that really are keyframes (decodable without earlier frames)
    count = 0
    try:
        for i, av_frame in enumerate(decode.iter_decoded(container, rgb=False)):
            count = i + 1
            if av_frame.key_frame:
                keyframes.add(i)
            if i in wanted:
                full[i] = decode.to_rgb(av_frame)
    finally:
        container.close()
    return full, keyframes, count


class _Thumbnails:
    """Subsampled RGB thumbnails of every frame (a second sequential decode), to name the frame a wrong read
    returned: another frame of the video (`shifted`) or none of them (`corrupt_after_seek`)."""

    def __init__(self, path: str, num_threads: int):
        container = decode.open_av(path, num_threads)
        thumbs: list[np.ndarray] = []
        self.step = 1
        try:
            for i, frame in enumerate(decode.iter_decoded(container)):
                if i == 0:
                    self.step = max(1, min(frame.shape[:2]) // 32)
                thumbs.append(_thumb(frame, self.step))
        finally:
            container.close()
        self.all = np.stack(thumbs)  # [N, h, w, 3]

    def nearest(self, frame: np.ndarray, asked: int, tol: float) -> tuple[int, float]:
        """(index, mean absolute difference) of the frame of the video whose thumbnail is closest to `frame`'s;
        `asked` when it is within `tol` of the closest (a still scene repeats frames, equal but for encoding noise:
        the closest of them is not the answer)."""
        diffs = np.abs(self.all - _thumb(frame, self.step)).mean(axis=(1, 2, 3))
        best = int(diffs.argmin())
        if 0 <= asked < len(diffs) and diffs[asked] < diffs[best] + tol:
            best = asked
        return best, float(diffs[best])


def plays(path: str) -> bool:
    """Whether PyAV decodes a first frame: an `unreadable` file that plays is the backend's problem (`repair`
    re-encodes it, or data.fallback_backend reads it), one that does not is a broken download."""
    if not os.path.isfile(path):
        return False
    try:
        container = decode.open_av(path)
    except decode.VideoReadError:
        return False
    try:
        return next(decode.iter_decoded(container, rgb=False), None) is not None
    except Exception:  # noqa: BLE001 - whatever the decoder raises, it does not play
        return False
    finally:
        container.close()


def check_video(
    path: str,
    backend: str = "decord",
    seek_mode: str = "exact",
    num_threads: int = 1,
    tol: float = 1.0,
    max_groups: int = 24,
) -> VideoCheck:
    """Classify one video (see the module docstring); never raises for a bad file."""
    start = time.monotonic()
    size, mtime_ns = file_stamp(path)  # before reading: a file replaced during the check then looks changed
    result = VideoCheck(path, "unreadable", backend, size=size, mtime_ns=mtime_ns)
    try:
        _check(result, backend, seek_mode, num_threads, tol, max_groups)
    except decode.VideoReadError as err:
        result.status, result.reason = "unreadable", err.reason
    except Exception as err:  # a decoder error type we do not know: still a verdict, not a crash
        result.status, result.reason = "unreadable", f"{type(err).__name__}: {decode._first_line(err)}"
    if result.status == "unreadable":  # the backend's problem (repair, the fallback) or nothing decodes at all
        result.plays = plays(path)
    result.seconds = round(time.monotonic() - start, 3)
    return result


READ_TRIES = 4  # reads of the same frames, each by a fresh reader after a failure, before the failure counts
TAIL_DEPTH = 16  # how many frames before a failing one a short file's readable end is looked for (h264's reorder depth)
CONVERSION_SPREAD = 1.25  # a frame's conversion difference varies with its content (measured: within 10% of frame 0's)


def _conversion_error(path: str, backend: str, num_threads: int, opts: dict, first: np.ndarray) -> float:
    """Mean absolute difference of frame 0, read first by a fresh reader (no seek can go wrong), from `first`."""
    try:
        reader = decode.open_reader(path, backend, num_threads, **opts)
        try:
            frame = reader.get([0])[0]
        finally:
            reader.close()
    except Exception:  # noqa: BLE001 - no allowance when even this read fails; the reads decide the status
        return 0.0
    if frame.shape != first.shape:
        return 0.0
    return float(np.abs(frame.astype(np.int16) - first).mean())


def _check(result: VideoCheck, backend: str, seek_mode: str, num_threads: int, tol: float, max_groups: int) -> None:
    path = result.path
    opts = {"seek_mode": seek_mode} if backend == "torchcodec" else {}
    reader = decode.open_reader(path, backend, num_threads, **opts)
    try:
        result.claimed_frames = int(reader.num_frames)
        flagged, num_packets = decode.packet_seek_points(path)
        seek_points = sorted(set(flagged) | set(decode.index_seek_points(path)))
        span = min(result.claimed_frames, num_packets) or num_packets
        groups = check_groups(seek_points, span, max_groups)
        wanted = {0} | {i for g in groups for i in g}
        # the reference: one sequential decode, converted to RGB only at the checked indices
        full, keyframes, decoded = _reference_decode(path, wanted, num_threads)
        result.decoded_frames = decoded
        if not decoded:
            raise decode.VideoReadError(path, "no frame decodes")
        # a read that starts at a seek point whose frame is not a real keyframe decodes from missing references
        false_seeks = [k for k in seek_points if k < result.decoded_frames and k not in keyframes]
        checked_starts = {g[0] for g in groups}
        unchecked = [k for k in false_seeks if k not in checked_starts][:max_groups]
        if unchecked or decoded < span:  # groups that missed false keyframes, or a short file's last real frames
            span = min(span, decoded)  # (past a seek point beyond them): read those too (a second decode)
            groups = check_groups(seek_points, span, max_groups, include=unchecked)
            extra = {i for g in groups for i in g} - set(full)
            if extra:
                full.update(_reference_decode(path, extra, num_threads)[0])
        thumbs: _Thumbnails | None = None  # built on the first wrong read only: exact files never pay for it
        conversion: float | None = None  # likewise
        offsets: Counter[int] = Counter()
        failed_inside: list[tuple[list[int], str]] = []  # reads that failed, READ_TRIES times, inside the count
        corrupt: list[int] = []

        def read(indices: list[int]) -> tuple[np.ndarray | None, str]:
            """The frames at `indices`, or (None, why) when READ_TRIES reads, each after the first by a fresh reader,
            all fail."""
            nonlocal reader
            why = ""
            for _ in range(READ_TRIES):
                try:
                    return reader.get(indices), ""
                except Exception as err:
                    why = decode._first_line(err)
                    reader.close()  # a failed read can leave decord's decoder broken for the next ones: start afresh
                    reader = None  # (if the reopen fails, its own error says why, not a second close)
                    reader = decode.open_reader(path, backend, num_threads, **opts)
            return None, why

        readable = result.decoded_frames  # lowered where the backend fails on a short file's last frames
        lowered = ""  # why it was
        flaky: list[int] = []  # a short file's group that failed READ_TRIES times though its last frame reads
        for group in groups:
            group = [i for i in group if i < readable]
            if not group:
                continue
            got, why = read(group)
            at_random = False  # the failure did not repeat where it would if it were the file's
            while got is None and result.claimed_frames > decoded and group[-1] >= decoded - TAIL_DEPTH:
                # a short file: find the last frame the backend reads, at most TAIL_DEPTH frames back (0: none)
                top = group[-1] + 1
                end = next((n for n in range(top, max(0, top - TAIL_DEPTH), -1) if read([n - 1])[0] is not None), 0)
                if end == top:  # its last frame reads alone: not the end of what reads (decord fails at random)
                    at_random, flaky = True, flaky or group
                    break
                if end == 0:  # nothing near it reads either: the failure stands
                    break
                # frames end.. fail however they are read: sampling must stay below them
                readable, lowered = end, f"; {backend} fails at frame {end} and after: {why}"
                group = sorted({i for i in group if i < readable} | {readable - 1})  # the new last frame too
                if readable - 1 not in full:
                    full.update(_reference_decode(path, {readable - 1}, num_threads)[0])
                got, why = read(group)
            if got is None:
                if not at_random:  # go on: the other groups may read wrong frames, which matters more
                    failed_inside.append((group, why))
                continue
            for i, frame in zip(group, got, strict=True):
                result.checked += 1
                err = float(np.abs(frame.astype(np.int16) - full[i]).mean())
                result.max_error = max(result.max_error, round(err, 3))
                if err < tol:
                    continue
                if thumbs is None:
                    thumbs = _Thumbnails(path, num_threads)
                best, best_err = thumbs.nearest(frame, i, tol)
                if conversion is None:
                    conversion = _conversion_error(path, backend, num_threads, opts, full[0])
                    result.conversion_error = round(conversion, 3)
                allowed = tol + CONVERSION_SPREAD * conversion  # what the backend's colours alone explain
                if best == i and err < allowed:
                    continue  # the frame asked for, in the backend's colours
                gop_start = max([k for k in seek_points if k <= i], default=0)
                if best != i and best_err < allowed and gop_start not in false_seeks:
                    offsets[i - best] += 1  # another true frame, after a seek from a true keyframe: timestamps
                else:
                    corrupt.append(i)  # garbage, or whatever the decoder made of a seek to a false keyframe
                if len(result.bad_indices) < 10:
                    result.bad_indices.append(i)
    finally:
        if reader is not None:
            reader.close()
    result.decoded_frames = readable  # the count sampling must use
    failing = (
        f"; {backend} fails at frames {failed_inside[0][0]} (inside the {result.decoded_frames} that decode): "
        f"{failed_inside[0][1]}"
        if failed_inside
        else ""
    )
    if corrupt:
        result.status = "corrupt_after_seek"
        result.reason = (
            f"{len(corrupt)} of {result.checked} checked reads are wrong after a seek (first at {corrupt[0]}); "
            f"seek points that are not keyframes: {false_seeks[:5]}" + failing
        )
    elif offsets:
        result.status, result.offset = "shifted", offsets.most_common(1)[0][0]
        result.reason = f"{sum(offsets.values())} of {result.checked} checked reads return another frame" + failing
    elif failed_inside:
        result.status, result.reason = "unreadable", failing.removeprefix("; ")
    elif result.claimed_frames > decoded:
        result.status = "short"
        result.reason = f"{backend} claims {result.claimed_frames} frames, {decoded} decode" + (
            f", {readable} read" + lowered if lowered else ""
        )
        if flaky:
            result.reason += f"; reading frames {flaky} failed {READ_TRIES} times, not every time"
    else:
        result.status = "exact"


def _check_one(job: tuple[str, str, str, int, float]) -> VideoCheck:
    path, backend, seek_mode, num_threads, tol = job
    return check_video(path, backend, seek_mode, num_threads, tol)


def verify_videos(
    paths: Iterable[str],
    backend: str = "decord",
    seek_mode: str = "exact",
    jobs: int = 1,
    timeout_s: float = 300.0,
    num_threads: int = 1,
    tol: float = 1.0,
    journal: str = "",
    progress: bool = True,
) -> list[VideoCheck]:
    """Check many videos in parallel (forked children), each under `timeout_s` (a timeout is `hangs`).

    `journal`: a JSON-lines file that every finished check is appended to; videos already in it (same backend and
    seek mode) are not checked again, so an interrupted run resumes where it stopped.
    """
    paths = list(dict.fromkeys(os.path.abspath(p) for p in paths))  # a report matches whatever the cwd of its reader
    done: dict[str, VideoCheck] = {}
    tag = f"{backend}/{seek_mode}"
    if journal and os.path.isfile(journal):
        with open(journal) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interruption
                    continue
                if row.pop("tag", None) == tag:
                    check = VideoCheck(**row)
                    if not is_stale(check):  # a file replaced since is checked again
                        done[check.path] = check
    todo = [(p, backend, seek_mode, num_threads, tol) for p in paths if p not in done]
    if journal:
        os.makedirs(os.path.dirname(os.path.abspath(journal)), exist_ok=True)
    out = open(journal, "a") if journal else None  # noqa: SIM115 - closed in finally
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc=f"verify {tag}", disable=not progress)
        for job, check, err in watchdog.run_pool(_check_one, todo, jobs, timeout_s):
            if err is not None:
                status = "hangs" if isinstance(err, watchdog.CallTimeout) else "unreadable"
                size, mtime_ns = file_stamp(job[0])
                check = VideoCheck(job[0], status, backend, reason=f"{type(err).__name__}: {err}", seconds=timeout_s)
                check.size, check.mtime_ns = size, mtime_ns
            done[job[0]] = check
            if out is not None:
                out.write(json.dumps({**asdict(check), "tag": tag}) + "\n")
                out.flush()
            bar.update(1)
        bar.close()
    finally:
        if out is not None:
            out.close()
    return [done[p] for p in paths]


def summarize(checks: list[VideoCheck]) -> dict[str, int]:
    counts = Counter(c.status for c in checks)
    return {status: counts.get(status, 0) for status in STATUSES}


def explain(checks: list[VideoCheck], examples: int = 2) -> list[str]:
    """Lines naming, per status that is not `exact`, how many videos and an example or two ("path: reason")."""
    lines = []
    for status in STATUSES[1:]:
        hits = [c for c in checks if c.status == status]
        if hits:
            shown = "; ".join(f"{c.path}: {c.reason}" for c in hits[:examples])
            lines.append(
                f"  {status} {len(hits)}: {shown}"
                + (f" (+{len(hits) - examples} more)" if len(hits) > examples else "")
            )
    return lines


def _atomic_write(path: str, write: Callable) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        write(f)
    os.replace(tmp, path)


def write_report(checks: list[VideoCheck], json_path: str, backend: str = "", seek_mode: str = "") -> str:
    """Write `json_path` (counts per class + one record per video) and a CSV beside it; returns the CSV path."""
    report = {
        "backend": backend,
        "seek_mode": seek_mode,
        "counts": summarize(checks),
        "videos": [asdict(c) for c in checks],
    }
    _atomic_write(json_path, lambda f: json.dump(report, f, indent=1))
    csv_path = os.path.splitext(json_path)[0] + ".csv"
    names = [f.name for f in fields(VideoCheck)]

    def _csv(f) -> None:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for c in checks:
            writer.writerow({**asdict(c), "bad_indices": " ".join(map(str, c.bad_indices))})

    _atomic_write(csv_path, _csv)
    return csv_path


WRONG_FRAMES = ("shifted", "corrupt_after_seek")  # statuses whose reads silently return other frames


def read_report(json_path: str) -> tuple[dict, list[VideoCheck]]:
    """({"backend", "seek_mode"} the report was made with, its per-video checks)."""
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"verify report not found: {json_path} (run `tools/prepare_kinetics.py verify`)")
    with open(json_path) as f:
        report = json.load(f)
    header = {"backend": report.get("backend", ""), "seek_mode": report.get("seek_mode", "")}
    return header, [VideoCheck(**row) for row in report["videos"]]


def load_report(json_path: str) -> list[VideoCheck]:
    return read_report(json_path)[1]

"""Loader benchmark: aim-video's clip loader against the authors'-style pipeline and the decode floor.

Side by side in one run, on generated 10 s H.264 videos (340x256 and 1280x720, 25 fps, the encoder's default
keyframe interval; one scene at both sizes, `aim_video.profiling.videos.scene_video`), for dense 8x16 and
TSN-style 8-segment sampling, for each decoding backend:
  (a) authors' style: open the video, decode frame by frame (one read per index, as `vr[i]`), then per frame in
      cv2/numpy: resize short side 256, random-resized crop, resize to 224, flip, normalise to float32 NCTHW;
  (b) aim-video's training dataset (`TrainClipDataset`: one batched read, v2 RandomResizedCrop + flip, uint8);
  (c) the decode floor: open the video and one batched read of the same sorted unique indices, nothing else;
  (d) (b) on the same videos after `tools/prepare_kinetics.py reencode` (short side 256, keyframe every 16, x264
      `--tune`, fastdecode by default, `--bframes`, 0 by default), beside (b) on short side 256 with the encoder's
      default keyframe interval (the prepare tool with keyint 0, same encoding).
Each runs in this process (median seconds per clip -> clips/s) and in a 2-worker DataLoader (clips / wall time).
Every method decodes the same clips (same videos, same frame indices). Also: decode-once-sample-2 (repeated_aug
2) against one clip per decode. `--keyint-sweep` adds (b) on prepared copies at several keyframe intervals, x264
tunes (`--sweep-tunes`) and B-frame counts (`--sweep-bframes`), of the generated videos or of given files
(`--sweep-sources`, e.g. real footage).

    python tools/bench_loader.py --clips 6 --out /tmp/aim_video_bench
    python tools/bench_loader.py --sweep-only --keyint-sweep 8,16,32,0 --sweep-tunes fastdecode,none \\
        --sweep-bframes 0,-1 --sweep-sources bikes.mp4 --clips 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

# run from a checkout: the repo root on the path, tools/ off it (tools/profile.py would shadow the stdlib profile)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aim_video.config import CLIP_MEAN, CLIP_STD  # noqa: E402
from aim_video.data import decode, sampling  # noqa: E402
from aim_video.data.annotations import VideoRecord  # noqa: E402
from aim_video.data.dataset import TrainClipDataset, collate_train  # noqa: E402
from aim_video.data.prepare import reencode_one  # noqa: E402
from aim_video.data.transforms import build_train_transform  # noqa: E402
from aim_video.profiling.videos import scene_video  # noqa: E402


def plan_clips(paths: list[str], mode: str, n_clips: int, seed: int = 0) -> list[tuple[str, list[int]]]:
    """(video, frame indices) for `n_clips` training clips, cycling over the videos."""
    rng = np.random.default_rng(seed)
    counts = {p: decode.probe(p).num_frames for p in paths}
    return [(p, sampling.train_indices(counts[p], mode, 8, 16, rng)) for p in (paths * n_clips)[:n_clips]]


class AuthorsStyle:
    """Frame-by-frame reads + cv2/numpy float32 augmentation to NCTHW (mmaction's pipeline for AIM on K400)."""

    def __init__(self, backend: str):
        self.backend = backend
        self.mean = np.array(CLIP_MEAN, np.float32) * 255
        self.std = np.array(CLIP_STD, np.float32) * 255

    def __call__(self, path: str, indices: list[int]) -> np.ndarray:
        import cv2

        reader = decode.open_reader(path, self.backend)
        frames = [reader.get([i])[0] for i in indices]  # one read per index, like vr[i]
        reader.close()
        h, w = frames[0].shape[:2]
        scale = 256 / min(h, w)
        size = (round(w * scale), round(h * scale))
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames]
        rng = np.random.default_rng()
        area = size[0] * size[1] * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(size[0], int(round(np.sqrt(area * ratio)))), min(size[1], int(round(np.sqrt(area / ratio))))
        x0, y0 = rng.integers(0, size[0] - cw + 1), rng.integers(0, size[1] - ch + 1)
        flip = rng.random() < 0.5
        out = []
        for f in frames:
            f = cv2.resize(f[y0 : y0 + ch, x0 : x0 + cw], (224, 224), interpolation=cv2.INTER_LINEAR)
            f = np.flip(f, axis=1) if flip else f
            out.append((f.astype(np.float32) - self.mean) / self.std)
        return np.ascontiguousarray(np.stack(out).transpose(3, 0, 1, 2)[None])  # [1, C, T, H, W] float32


class Floor:
    """Open + one batched read of the sorted unique indices: what any loader must pay."""

    def __init__(self, backend: str):
        self.backend = backend

    def __call__(self, path: str, indices: list[int]) -> np.ndarray:
        reader = decode.open_reader(path, self.backend)
        frames = reader.get(sorted(set(indices)))
        reader.close()
        return frames


class Ours(TrainClipDataset):
    """TrainClipDataset reading planned clips: `load(k)` decodes clip k of the plan."""

    def __init__(self, plan: list[tuple[str, list[int]]], backend: str, repeated_aug: int = 1, timeout_s: float = 0):
        records = [VideoRecord(p, 0, (0,)) for p, _ in plan]
        transform = build_train_transform(224)
        super().__init__(records, transform, backend=backend, repeated_aug=repeated_aug, timeout_s=timeout_s)
        self.plan = plan

    def load(self, index: int) -> torch.Tensor:
        self._planned = self.plan[index][1]
        return super().load(index)

    def sample_indices(self, num_frames: int) -> list[int]:
        return self._planned


class PlanDataset(torch.utils.data.Dataset):
    def __init__(self, plan, fn):
        self.plan, self.fn = plan, fn

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, k):
        out = self.fn(*self.plan[k])  # a tensor, as (b) returns: the DataLoader moves both through shared memory
        return torch.from_numpy(np.ascontiguousarray(out)) if isinstance(out, np.ndarray) else out


def cpu_seconds() -> float:
    """CPU time of this process, all its threads (`time.process_time`: CLOCK_PROCESS_CPUTIME_ID, nanoseconds).

    Children are not counted: the guarded loader (w), which decodes in a forked child, is timed in wall time. (A scan
    of the process table for the children's time, as an earlier version did, cost ~1 ms of CPU inside every timed
    interval, 5-7% of a prepared copy's clip, pulling every ratio toward 1; the kernel's count of reaped children
    did not see the watchdog's.)"""
    return time.process_time()


def measure_inline(methods: dict, n: int, rounds: int, clock=cpu_seconds) -> dict:
    """Per method: clips/s from the median time per clip, and paired per-clip time ratios against method 'c'.

    `clock` is the process's CPU time by default (all its threads): on a shared, loaded machine it measures the
    work done, where wall time measures the neighbours. The methods run interleaved clip by clip (in a rotating
    order) and the ratios pair the same clip in the same round.
    """
    for fn in methods.values():
        fn(0)  # warm-up: libraries loaded, caches filled
    names = list(methods)
    wall = {m: [] for m in names}
    for r in range(rounds):
        for k in range(n):
            order = names[(k + r) % len(names) :] + names[: (k + r) % len(names)]
            for m in order:
                t0 = clock()
                methods[m](k)
                wall[m].append(max(clock() - t0, 1e-6))
    out = {m: 1.0 / statistics.median(wall[m]) for m in names}
    for m in names:
        out[f"{m}/c"] = statistics.median(tc / tm for tc, tm in zip(wall["c"], wall[m], strict=True))
    if "a" in wall and "b" in wall:  # paired too, not a ratio of two medians
        out["b/a"] = statistics.median(ta / tb for ta, tb in zip(wall["a"], wall["b"], strict=True))
    return out


def clips_per_s_loader(dataset, workers: int, per_item: int = 1, collate=None) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate or _first)
    it = iter(loader)
    # workers started, and the items they prefetched while starting (2 each) taken: else those count as free
    for _ in range(max(1, min(2 * workers, len(dataset) - 2))):
        next(it)
    t0 = time.perf_counter()
    count = sum(1 for _ in it)
    return count * per_item / (time.perf_counter() - t0)


def _first(batch):
    return batch[0]


def available_backends(names: list[str], probe_path: str) -> list[str]:
    ok = []
    for name in names:
        try:
            decode.probe(probe_path, name)
            ok.append(name)
        except decode.BackendUnavailable as err:
            print(f"skipping backend {name}: {err.reason}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/aim_video_bench", help="folder for the generated and prepared videos")
    ap.add_argument("--clips", type=int, default=6, help="clips per measurement (medians in one process)")
    ap.add_argument("--videos", type=int, default=2, help="videos per resolution")
    ap.add_argument("--backends", default="decord,torchcodec")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sizes", default="340x256,1280x720")
    ap.add_argument("--noise", type=float, default=3.0, help="sensor noise (std, uint8 levels) of the generated "
                    "scene: 3 is mild; 12 and 16 cost more to decode (docs/benchmarks.md: levels chosen after runs, "
                    "not matched to the issue's videos)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=2, help="passes over the clips in one process")
    ap.add_argument("--tune", default="fastdecode", help="x264 tune of the prepared copies (as prepare_kinetics)")
    ap.add_argument("--bframes", type=int, default=0, help="B-frames of the prepared copies (as prepare_kinetics; "
                    "-1: x264's default)")  # fmt: skip
    ap.add_argument("--keyint-sweep", default="", help="e.g. 8,16,32,64,0: the loader on prepared copies of the "
                    "last size's videos at each keyframe interval (0: the encoder's default)")  # fmt: skip
    ap.add_argument(
        "--sweep-tunes", default="", help="x264 tunes for the sweep, e.g. fastdecode,none (default: --tune)"
    )
    ap.add_argument("--sweep-bframes", default="", help="B-frame counts for the sweep, e.g. 0,-1 (default: "
                    "--bframes)")  # fmt: skip
    ap.add_argument("--sweep-sources", default="", help="comma-separated video files to sweep instead of the "
                    "generated ones (real footage)")  # fmt: skip
    ap.add_argument("--sweep-only", action="store_true", help="skip the main table")
    args = ap.parse_args(argv)
    if args.clips < 2:  # the worker rows skip the clips prefetched at start: at least one must be left to time
        ap.error(f"--clips must be at least 2, got {args.clips}")
    torch.manual_seed(0)
    torch.set_num_threads(1)  # like a DataLoader worker
    os.makedirs(args.out, exist_ok=True)
    if args.sweep_only:
        sources = args.sweep_sources.split(",") if args.sweep_sources else generated(args, args.sizes.split(",")[-1])
        keyint_sweep(sources, args, available_backends(args.backends.split(","), sources[0]))
        return 0
    sets: dict[str, list[str]] = {}
    for size in args.sizes.split(","):
        sets[size] = generated(args, size)
        for tag, keyint in (("256k16", 16), ("256kdef", 0)):
            outs = []
            for p in sets[size]:
                dst = p.replace("scene_", f"{tag}_{encoding_label(args.tune, args.bframes)}_")
                res = reencode_one(p, dst, short_side=256, keyint=keyint, **encoding(args.tune, args.bframes))
                assert res.status != "failed", res.reason
                outs.append(res.dst)
            sets[f"{size}@{tag}"] = outs
    backends = available_backends(args.backends.split(","), sets[next(iter(sets))][0])
    for name, paths in sets.items():
        mb = sum(os.path.getsize(p) for p in paths) / len(paths) / 2**20
        info = decode.probe(paths[0])
        print(f"videos {name}: {info.width}x{info.height}, {info.num_frames} frames, {mb:.2f} MiB each")
    rows = []
    load = os.getloadavg()[0]
    print(
        f"\nclips/s per CPU-second in one process (1 proc), per wall second through a {args.workers}-worker "
        f"DataLoader ({args.workers} wrk); load average {load:.1f} on {os.cpu_count()} cores. b/c, b/a: medians "
        f"of paired per-clip time ratios ({args.rounds} rounds x {args.clips} clips); wall b/c, w/c (guarded "
        "loader): wall time"
    )
    print(f"{'backend':10} {'videos':20} {'sampling':8} {'mode':6} {'(a)':>7} {'(b)':>7} {'(c)':>7} {'b/c':>5} "
          f"{'b/a':>5} {'wall b/c':>8} {'w/c':>5}")  # fmt: skip
    for backend in backends:
        for name, paths in sets.items():
            for mode in ("dense", "uniform"):
                plan = plan_clips(paths, mode, args.clips)
                ours, authors, floor = Ours(plan, backend), AuthorsStyle(backend), Floor(backend)
                guarded = Ours(plan, backend, timeout_s=60.0)
                methods = {
                    "a": lambda k, f=authors, p=plan: f(*p[k]),
                    "b": ours.load,
                    "c": lambda k, f=floor, p=plan: f(*p[k]),
                }
                r = measure_inline(methods, len(plan), args.rounds)
                # the watchdog decodes in a forked child: wall time (its CPU time is not this process's)
                r_wall = measure_inline({**methods, "w": guarded.load}, len(plan), 1, time.perf_counter)
                r["wall b/c"], r["w/c"] = r_wall["b/c"], r_wall["w/c"]
                loaders = {
                    "a": clips_per_s_loader(PlanDataset(plan, authors), args.workers),
                    "b": clips_per_s_loader(ours, args.workers, collate=collate_train),
                    "c": clips_per_s_loader(PlanDataset(plan, floor), args.workers),
                }
                loaders["b/c"], loaders["b/a"] = loaders["b"] / loaders["c"], loaders["b"] / loaders["a"]
                for how, res in (("1 proc", r), (f"{args.workers} wrk", loaders)):
                    rows.append((backend, name, mode, how, res))
                    wall = f"{res['wall b/c']:8.2f} {res['w/c']:5.2f}" if "wall b/c" in res else ""
                    print(f"{backend:10} {name:20} {mode:8} {how:6} {res['a']:7.2f} {res['b']:7.2f} {res['c']:7.2f} "
                          f"{res['b/c']:5.2f} {res['b/a']:5.2f} {wall}", flush=True)  # fmt: skip
    print("\nratios (one process, CPU time, aim-video's loader (b))")
    for backend in backends:
        got = {(n, m): r["b"] for b, n, m, how, r in rows if b == backend and how == "1 proc"}
        for size in args.sizes.split(","):
            for mode in ("dense", "uniform"):
                d_raw = got[(f"{size}@256k16", mode)] / got[(size, mode)]
                d_key = got[(f"{size}@256k16", mode)] / got[(f"{size}@256kdef", mode)]
                print(f"{backend:10} {size:9} {mode:8} prepared(256,k16)/raw {d_raw:5.2f}x   "
                      f"k16/default-keyint at 256 {d_key:5.2f}x")  # fmt: skip
        paths = sets[next(iter(sets))]
        plan = plan_clips(paths, "dense", args.clips)
        r = measure_inline(
            {"c": Ours(plan, backend, 1).load, "two": Ours(plan, backend, 2).load}, len(plan), args.rounds
        )
        print(f"{backend:10} decode-once-sample-2 / one clip per decode ({next(iter(sets))}, dense): "
              f"{2 * r['two/c']:.2f}x clips/s")  # fmt: skip
    if len(backends) > 1:
        compare_backends(sets, backends, args)
    if args.keyint_sweep:
        keyint_sweep(args.sweep_sources.split(",") if args.sweep_sources else sets[size], args, backends)
    return 0


def compare_backends(sets: dict[str, list[str]], backends: list[str], args: argparse.Namespace) -> None:
    """(b) through each backend against (b) through the first, interleaved clip by clip on the same clips (the
    tables above measure one backend after the other, so their cross-backend ratios carry the machine's drift)."""
    print(f"\n(b) per backend against {backends[0]}'s, interleaved ({args.rounds} rounds x {args.clips} clips):")
    for name, paths in sets.items():
        for mode in ("dense", "uniform"):
            plan = plan_clips(paths, mode, args.clips)
            loads = {("c" if b == backends[0] else b): Ours(plan, b).load for b in backends}
            r = measure_inline(loads, len(plan), args.rounds)
            ratios = "  ".join(f"{b}/{backends[0]} {r[f'{b}/c']:.2f}x" for b in backends[1:])
            print(f"{name:20} {mode:8} {ratios}", flush=True)


def generated(args: argparse.Namespace, size: str) -> list[str]:
    """The scene videos of one size ("WxH") in args.out (made once)."""
    w, h = map(int, size.split("x"))
    tag = "" if args.noise == 3 else f"n{args.noise:g}_"
    return [
        scene_video(os.path.join(args.out, f"scene_{tag}{size}_{k}.mp4"), w, h, seed=k, noise=args.noise)
        for k in range(args.videos)
    ]


def encoding(tune: str, bframes: int) -> dict:
    """reencode_one's encoder options for an x264 tune and a B-frame count (negative: x264's default)."""
    return {"tune": tune, "bframes": None if bframes < 0 else bframes}


def encoding_label(tune: str, bframes: int) -> str:
    return f"{tune}-bf{'def' if bframes < 0 else bframes}"


def keyint_sweep(sources: list[str], args: argparse.Namespace, backends: list[str]) -> None:
    """aim-video's loader (b) on prepared copies (short side 256) for each encoding (x264 tune x B-frames) and
    keyframe interval (0: the encoder's default), all interleaved clip by clip in one process: what each interval
    buys, and costs in bytes."""
    keyints = sorted({int(k) for k in (args.keyint_sweep or "16,0").split(",")} - {0}) + [0]
    tunes = (args.sweep_tunes or args.tune).split(",")
    bframes = [int(b) for b in (args.sweep_bframes or str(args.bframes)).split(",")]
    encodings = [(t, b) for t in tunes for b in bframes]
    copies: dict[tuple[tuple[str, int], int], list[str]] = {}
    for enc in encodings:
        for k in keyints:
            tag = f"256k{k if k else 'def'}_{encoding_label(*enc)}_"
            dsts = [os.path.join(args.out, tag + os.path.basename(p).removeprefix("scene_")) for p in sources]
            pairs = zip(sources, dsts, strict=True)
            results = [reencode_one(p, d, short_side=256, keyint=k, **encoding(*enc)) for p, d in pairs]
            assert all(r.status != "failed" for r in results), [r.reason for r in results]
            copies[(enc, k)] = dsts
    # measure_inline pairs ratios against "c": the first encoding at the default interval
    name = {key: "c" if key == (encodings[0], 0) else f"{encoding_label(*key[0])}:{key[1]}" for key in copies}
    print(f"\nkeyframe interval sweep on {', '.join(os.path.basename(p) for p in sources)} shrunk to short side "
          f"256: (b) clips per CPU-second in one process ({args.rounds} rounds x {args.clips} clips), ratio to the "
          "same encoding's default interval, MiB and keyframes per video (x264's default interval keeps its scene-cut "
          "keyframes); then the first encoding against each other")  # fmt: skip
    for backend in backends:
        for mode in ("dense", "uniform"):
            loads = {
                name[key]: Ours(plan_clips(paths, mode, args.clips), backend).load for key, paths in copies.items()
            }
            r = measure_inline(loads, args.clips, args.rounds)
            for enc in encodings:
                cells = []
                for k in keyints:
                    mib = sum(os.path.getsize(p) for p in copies[(enc, k)]) / len(sources) / 2**20
                    rate = r[name[(enc, k)]]
                    groups = statistics.mean(len(decode.packet_seek_points(p)[0]) for p in copies[(enc, k)])
                    cells.append(f"{k or 'default'}: {rate:.1f} ({rate / r[name[(enc, 0)]]:.2f}x, {mib:.2f} MiB, "
                                 f"{groups:.0f} keyframes)")  # fmt: skip
                print(f"{backend:10} {mode:8} {encoding_label(*enc):16} " + "  ".join(cells), flush=True)
            first = encodings[0]
            for other in encodings[1:]:
                ratios = "  ".join(
                    f"{k or 'default'}: {r[name[(first, k)]] / r[name[(other, k)]]:.2f}x" for k in keyints
                )
                print(f"{backend:10} {mode:8} {encoding_label(*first)}/{encoding_label(*other)}: {ratios}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

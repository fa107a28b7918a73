"""Evaluate a checkpoint with multi-view testing on a split; one process or N ranks (torchrun / deepspeed launcher).

    python tools/test.py --checkpoint runs/k400/model_trainable.safetensors [--config configs/k400_vit_b16_8f.yaml] \\
        [--split val] [--out DIR] [--strict] [--save-scores] [eval.protocol=k400 eval.view_chunk=6 ...]
    torchrun --nproc_per_node 8 tools/test.py --checkpoint runs/k400/checkpoints/step_00012000
    deepspeed --num_gpus 8 tools/test.py --checkpoint runs/k400

Writes results.json (metrics, protocol, videos evaluated, missing list, checkpoint sha256, resolved config),
per_class.csv and confusion.png (when some video has a label) and, with --save-scores, scores.safetensors
(per-video averaged scores).
Exit status 2: bad config, arguments or list (an unwritable --out included, and listed videos that do not exist
unless data.missing_files=drop); 3: videos left out (drop) or unreadable under --strict, or none of the videos
found readable; 1: anything else. Every rank exits with the same status when one rank fails while loading the
model or the list (e.g. a video missing on one node only under --strict); rank 0 prints which rank and why.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import traceback

# run from a checkout: the repo root on the path, tools/ off it (tools/profile.py would shadow the stdlib profile)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch.distributed as dist  # noqa: E402

from aim_video.config import ConfigError, to_dict  # noqa: E402
from aim_video.data.loader import build_eval_loader  # noqa: E402
from aim_video.engine.distributed import first_failure  # noqa: E402
from aim_video.engine.fit import missing_folders, remove_empty, same_data_on_every_rank  # noqa: E402
from aim_video.eval.loading import (  # noqa: E402
    checkpoint_config,
    class_names,
    init_process,
    load_model,
    resolve_checkpoint,
    resolve_eval_config,
    use_stored_classes,
)
from aim_video.eval.multiview import MissingVideosError, apply_protocol, evaluate  # noqa: E402
from aim_video.eval.report import (  # noqa: E402
    plot_confusion,
    results_record,
    sha256_file,
    write_per_class_csv,
    write_results_json,
    write_scores,
)
from aim_video.models.pretrained import PretrainedLoadError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="engine checkpoint folder, checkpoints/ root, run folder or "
                   "model_trainable.safetensors")  # fmt: skip
    p.add_argument("--config", default=None, help="YAML (default: the config stored in the checkpoint)")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval/<checkpoint>-<split>, <run> the "
                   "run folder the weights are in)")
    p.add_argument("--strict", action="store_true", help="missing or unreadable videos are fatal")
    p.add_argument("--save-scores", action="store_true", help="also write per-video scores (for ensembling)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    return p.parse_intermixed_args(argv)  # overrides may come before or after options


def _default_out(checkpoint_file: str, split: str) -> str:
    """``<run>/eval/<step_XXXXXXXX or export>-<split>`` where the weights are: not the output_dir their config names,
    which a moved or copied run would recreate, or which names another run's folder. ``<run>`` is the run folder of
    ``<run>/checkpoints/<step>/trainable.safetensors``, the folder beside a step folder found elsewhere (a step folder
    copied alone, checkpoints/ given by the real path of its link), else the folder of the weights file."""
    folder = os.path.dirname(os.path.abspath(checkpoint_file))
    holder = os.path.dirname(folder)
    in_checkpoints = os.path.basename(holder) == "checkpoints"
    if os.path.basename(checkpoint_file) == "trainable.safetensors" and (
        in_checkpoints or re.fullmatch(r"step_\d+", os.path.basename(folder))
    ):  # an engine checkpoint's folder: never inside it, keep_last deletes it with what is in it
        run = os.path.dirname(holder) if in_checkpoints else holder
        return os.path.join(run, "eval", f"{os.path.basename(folder)}-{split}")
    return os.path.join(folder, "eval", f"export-{split}")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


_AS_SCRIPT = False  # set when run as a program: only then may an error end the process at once


def main(argv: list[str] | None = None) -> int:
    made: list[str] = []  # the results folder and the parents this run created, deepest first
    written: list[str] = []  # files this run wrote there before the evaluation (the stored class names)
    status = _main(argv, made, written)
    if status != 0:  # a failed start leaves nothing behind: the files this run made for results it did not write,
        # then the folders it made, if nothing else is in them (another evaluation may be writing there)
        for path in written:
            with contextlib.suppress(OSError):
                os.remove(path)
        remove_empty(made)
    return status


def _other_model_hint(config: str | None, checkpoint_file: str, num_classes: int) -> str:
    """Why the numbers disagree when --config is a config of another model than the one the weights were trained as."""
    try:
        saved = checkpoint_config(checkpoint_file) if config else None
    except ValueError:  # a stored config this version cannot read: the message stands without the hint
        return ""
    if saved is None or saved.model.num_classes == num_classes:
        return ""
    return (
        f" (from --config {config}; the weights were trained with model.num_classes={saved.model.num_classes}: "
        "leave out --config to evaluate with the config stored in them)"
    )


def _main(argv: list[str] | None, made: list[str], written: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        checkpoint_file = resolve_checkpoint(args.checkpoint)
        cfg = resolve_eval_config(checkpoint_file, args.config, args.overrides)
        protocol = apply_protocol(cfg)
        out = args.out or _default_out(checkpoint_file, args.split)
        made.extend(missing_folders(os.path.abspath(out)))
        try:  # before the evaluation, not after hours of it
            os.makedirs(out, exist_ok=True)
        except OSError as err:
            raise OSError(f"cannot create the results folder {out} ({err.strerror}): choose another --out") from err
        if not os.access(out, os.W_OK):
            raise PermissionError(f"cannot write results into {out}: choose another --out")
        given_map, earlier = cfg.data.class_map, os.path.exists(os.path.join(out, "classes.txt"))
        use_stored_classes(cfg, checkpoint_file, out)  # weights evaluated away from the training run's class files
        if cfg.data.class_map != given_map and not earlier:  # an earlier evaluation's stays with its results
            written.append(cfg.data.class_map)
        names = class_names(cfg, checkpoint_file) or [str(i) for i in range(cfg.model.num_classes)]
        if len(names) != cfg.model.num_classes:
            raise ValueError(
                f"the class map lists {len(names)} classes, model.num_classes is {cfg.model.num_classes}"
                + _other_model_hint(args.config, checkpoint_file, cfg.model.num_classes)
            )
    except (ConfigError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        proc = init_process(cfg.train.dist_timeout_min)
    except ConfigError as err:  # e.g. the launcher's port held by another job
        print(f"error: {err}", file=sys.stderr)
        return 2
    strict = args.strict or cfg.eval.strict
    failure = None  # (exit status, message): agreed by every rank, else one failing rank left the others waiting
    try:
        # hashed as it is loaded, not after the evaluation: a training run's keep_last may prune or replace the file
        sha256 = sha256_file(checkpoint_file) if proc.rank == 0 else ""  # meanwhile (results named other weights)
        model = load_model(cfg, checkpoint_file, proc.device)
        loader = build_eval_loader(cfg, args.split, proc.rank, proc.world_size)
        dropped = loader.dataset.dropped  # missing files, videos a verify report found wrong: left out, listed
        if strict and dropped:
            raise MissingVideosError(
                f"{len(dropped)} listed videos were left out before evaluation (strict evaluation), e.g. "
                + "; ".join(f"{p}: {why}" for p, why in dropped[:3])
            )
    except (ValueError, FileNotFoundError, PretrainedLoadError, MissingVideosError) as err:  # bad list, labels,
        failure = (3 if isinstance(err, MissingVideosError) else 2, str(err))  # weights; a file one node lacks
    except Exception as err:  # CUDA out of memory, a bug: its traceback here, the agreed exit below
        if not _AS_SCRIPT and proc.world_size == 1:  # called in-process (tests, other tools): the caller handles it
            raise
        traceback.print_exc()
        failure = (1, f"{type(err).__name__}: {err} (traceback above)")
    try:
        if agreed := first_failure(failure):
            if proc.rank == 0:
                print(f"error: {agreed[1]}", file=sys.stderr)
            return agreed[0]
        # rows are joined by index: ranks that read other lists gave other videos' labels and paths, exit status 0
        listed = getattr(cfg.data, f"{args.split}_list")
        same_data_on_every_rank(len(loader.dataset), listed, loader.dataset.records.fingerprint())
        result = evaluate(
            model, loader, cfg, proc.device, progress=not args.no_progress, strict=strict, return_scores=True
        )
    except (ValueError, FileNotFoundError, PretrainedLoadError, MissingVideosError) as err:  # on every rank alike
        print(f"error: {err}", file=sys.stderr)
        return 3 if isinstance(err, MissingVideosError) else 2
    except (Exception, KeyboardInterrupt):  # anything else (CUDA out of memory, a bug): say it, then leave at once:
        if not _AS_SCRIPT:  # called in-process (tests, other tools): the caller handles it
            raise
        traceback.print_exc()  # a normal exit would wait forever for the loader workers, which ignore the stop
        sys.stderr.flush()  # signals (train.stop_signals)
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if proc.rank != 0:
        return 0

    paths = [r.path for r in loader.dataset.records]
    record = results_record(result, to_dict(cfg), checkpoint_file, sha256, args.split, dropped, paths, names)
    if not args.out and os.path.exists(os.path.join(out, "results.json")):  # other lists or settings: same folder
        print(f"note: replacing the results of an earlier evaluation in {out} (--out keeps both)", file=sys.stderr)
    write_results_json(record, os.path.join(out, "results.json"))
    written.clear()  # the stored class names now belong to these results
    per_class, confusion = os.path.join(out, "per_class.csv"), os.path.join(out, "confusion.png")
    if record["num_evaluated"]:
        write_per_class_csv(result, names, per_class)
        plot_confusion(result["confusion_matrix"], names, confusion)
    else:  # no labelled video (predictions only): no class statistics, and an earlier evaluation's would mislead
        for path in (per_class, confusion):
            if os.path.exists(path):
                os.remove(path)
    scores_path = os.path.join(out, "scores.safetensors")
    if args.save_scores or cfg.eval.save_scores:
        write_scores(result, scores_path, {"checkpoint_sha256": record["checkpoint_sha256"]}, paths)
    elif os.path.exists(scores_path):  # an earlier run's, beside results it does not match
        os.remove(scores_path)
    scores = " ".join(f"{key} {_pct(record['metrics'][key])}" for key in ("top1", "top5", "mean_class_acc"))
    counts = f"{record['num_evaluated']} of {record['num_listed']} videos ({record['num_missing']} missing)"
    if record["num_unlabelled"]:  # "0 of 2 videos" read as if nothing had run
        counts += f"; {record['num_unlabelled']} unlabelled: predicted, not scored (per_video in results.json)"
    if record["num_fallback_reads"]:  # exact, but decoded from the start: say why evaluation was slow
        counts += f"; {record['num_fallback_reads']} read with data.fallback_backend (see fallback_reads)"
    print(f"{args.split} [{protocol.name} {record['protocol']['label']}, {cfg.eval.average}]: {scores} over {counts}")
    print(f"results: {out}")
    if record["num_evaluated"] + record["num_unlabelled"] == 0:  # every video missing or unreadable: nothing read
        print(f"error: none of the {record['num_listed']} listed videos could be read (results.json lists why)",
              file=sys.stderr)  # fmt: skip
        return 3
    return 0


if __name__ == "__main__":
    _AS_SCRIPT = True
    sys.exit(main())

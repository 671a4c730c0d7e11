"""``guaita train``: fine-tune a ResNet18/34 with fastai on a ``guaita dataset index`` output.

Same code on CPU (tests, small runs) and CUDA (real runs). What the run used — architecture,
whether it started from ImageNet, from an earlier model or from scratch, balancing, learning
rate, per-epoch history, data summary — goes to ``train.json`` next to the weights, and from
there into the model bundle's manifest.

Choices, and why:
  * augmentation suits all-sky images: any rotation (max 180°) and flips both ways (the sky has
    no "up"; for m1's tile mosaic the 8 flips and quarter turns instead), no warp and no zoom
    (they would change streak width and length), reflection padding (zero padding cut the 2021
    meteor recall from 0.98 to 0.79), no lighting jitter (the difference channels are in
    calibrated noise units).
  * balance "undersample" draws a fresh random subset of non-meteors every epoch (the 2021
    recipe used one fixed subset; a new draw each epoch shows the net more hard negatives at the
    same cost); "weighted" keeps every frame and weights the loss by inverse class frequency.
  * one-channel variants (v4) are opened as RGB by fastai (grey replicated to 3 channels) so
    ImageNet stems work unchanged; the exported graph does the same replication.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.preprocess import PreprocessSpec
from training._common import (
    LEARNER_NAME,
    METEOR,
    NOT_METEOR,
    TRAIN_META,
    WEIGHTS_NAME,
    TrainingError,
    load_index,
    set_threads,
    write_json,
)

log = logging.getLogger(__name__)

CLASSES = (METEOR, NOT_METEOR)  # fastai's vocab order (sorted); the meteor column is 0


ROTATE_AUGMENTATION = "rotate<=180, flip h+v, no warp, no zoom, reflection pad, no lighting"
# A mosaic of candidate tiles (m1) rotated by an arbitrary angle would smear tiles into each
# other; the 8 flips/quarter turns keep every tile whole and still show streaks at any
# orientation class.
DIHEDRAL_AUGMENTATION = "dihedral (flips and quarter turns), no warp, no zoom, no lighting"


def augmentations(preprocess_id: str) -> tuple[list, str]:
    """Batch transforms for this preprocessing variant, and how to describe them."""
    from fastai.vision.all import aug_transforms

    dihedral = preprocess_id == "m1"
    # max_rotate 0 leaves fastai's Dihedral alone (flip_vert=True): applied to every image.
    tfms = aug_transforms(max_rotate=0.0 if dihedral else 180.0, min_zoom=1.0, max_zoom=1.0,
                          max_warp=0.0, max_lighting=0.0, do_flip=True, flip_vert=True,
                          pad_mode="reflection", p_affine=1.0 if dihedral else 0.75)
    return tfms, augmentation_description(preprocess_id)


def augmentation_description(preprocess_id: str) -> str:
    return DIHEDRAL_AUGMENTATION if preprocess_id == "m1" else ROTATE_AUGMENTATION


def resolve_pretrained(arch: str, pretrained: bool) -> dict[str, Any]:
    """Check ImageNet weights are in the local torch hub cache; never download."""
    from training._model import imagenet_weights_file

    if not pretrained:
        return {"pretrained": False, "started_from": "random init (no pretrained weights)"}
    path = imagenet_weights_file(arch)
    if not path.is_file():
        raise TrainingError(
            f"--pretrained: ImageNet weights for {arch} are not in the local torch hub cache "
            f"({path}). Copy them there from a machine with internet (torchvision's "
            f"{path.name}), or train with --no-pretrained.")
    return {"pretrained": True, "started_from": f"torchvision ImageNet weights ({path.name})"}


def make_dataloaders(df, bs: int, balance: str, neg_ratio: float, seed: int, device,
                     num_workers: int, preprocess_id: str, hard_share: float = 0.0):
    from fastai.vision.all import (
        CategoryBlock,
        ColReader,
        ColSplitter,
        DataBlock,
        ImageBlock,
        Normalize,
        TfmdDL,
        imagenet_stats,
    )

    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=list(CLASSES))),
        get_x=ColReader("path"), get_y=ColReader("label"), splitter=ColSplitter("is_valid"),
        batch_tfms=[*augmentations(preprocess_id)[0], Normalize.from_stats(*imagenet_stats)],
    )
    from training._balanced import BalancedDL

    dl_type = BalancedDL if balance == "undersample" else TfmdDL
    dl_kwargs = ([{"neg_ratio": neg_ratio, "hard_share": hard_share}, {}]
                 if balance == "undersample" else None)
    return block.dataloaders(df, bs=bs, seed=seed, device=device, num_workers=num_workers,
                             dl_type=dl_type, dl_kwargs=dl_kwargs)


def class_weights(labels) -> list[float]:
    """Inverse-frequency weights in CLASSES order, mean 1 over the training frames."""
    labels = np.asarray(labels)
    counts = np.array([(labels == c).sum() for c in CLASSES], dtype=float)
    if (counts == 0).any():
        have = dict(zip(CLASSES, counts.astype(int).tolist(), strict=True))
        raise TrainingError(f"training split lacks a class: {have}")
    return (counts.sum() / (len(CLASSES) * counts)).tolist()


def load_init_weights(model, source: Path) -> str:
    """Start from an earlier model: a `guaita train` folder, a .pth state dict or a bundle."""
    import torch

    if source.is_dir() and (source / WEIGHTS_NAME).is_file():
        source = source / WEIGHTS_NAME
    if source.suffix == ".pth" and source.is_file():
        state = torch.load(source, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise TrainingError(f"{source} does not fit this architecture: {exc}") from None
        return f"weights {source}"
    from training._onnx_weights import load_from_bundle

    return load_from_bundle(model, source)


def parent_summary(source: Path) -> dict[str, Any] | None:
    """How the bundle a fine-tune starts from was itself trained (None if not a bundle), so a
    model card can tell a model's whole lineage."""
    from edge.bundle import MANIFEST_NAME, load_bundle

    folder = source if source.is_dir() else source.parent
    if not (folder / MANIFEST_NAME).is_file():
        return None
    manifest = load_bundle(folder, verify=False).manifest  # the weights were just read from it
    keep = ("started_from", "schedule", "batch_size", "balance", "neg_ratio", "hard_negatives",
            "augmentation", "train_seconds", "device", "parent")
    return {"name": manifest.name, "version": manifest.version,
            **{k: manifest.training[k] for k in keep if k in manifest.training}}


def _shrink_valid(df, limit: int, seed: int):
    """Per-epoch validation on all meteors + a random subset of the rest, `limit` in all.

    Only the epoch table uses it; export chooses the threshold on every validation frame.
    """
    valid = df[df["is_valid"]]
    meteors = valid[valid["label"] == METEOR]
    rest = valid[valid["label"] != METEOR]
    keep = rest.sample(max(0, min(len(rest), limit - len(meteors))), random_state=seed)
    import pandas as pd

    return pd.concat([df[~df["is_valid"]], meteors, keep])


def _recalibrate(learn, dls, n_batches: int = 8) -> None:
    """After loading a bundle: BatchNorm statistics from this data (see _onnx_weights)."""
    import itertools

    from training._onnx_weights import recalibrate_bn

    learn.model.to(dls.device)
    done = recalibrate_bn(learn.model, (b[0] for b in itertools.islice(dls.train, n_batches)))
    if done:
        log.info("re-estimated %d BatchNorm layers on %d training batches", done, n_batches)


def data_summary(df, meta: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"source": meta.get("source", {}), "splits": {}}
    for split, part in df.groupby("split"):
        summary["splits"][split] = {
            "nights": sorted(part["night"].unique().tolist()),
            "frames": len(part),
            METEOR: int((part["label"] == METEOR).sum()),
            NOT_METEOR: int((part["label"] != METEOR).sum()),
        }
    return summary


def train(args: argparse.Namespace) -> dict[str, Any]:
    import fastai
    import torch
    from fastai.vision.all import (
        CrossEntropyLossFlat,
        CSVLogger,
        Precision,
        Recall,
        accuracy,
        vision_learner,
    )

    from training._model import arch_fn

    set_threads(args.threads)
    df, dmeta = load_index(args.data)
    summary = data_summary(df, dmeta)  # all splits: the bundle names its test nights too
    df = df[df["split"].isin(["train", "valid"])].copy()
    df["is_valid"] = df["split"] == "valid"
    if args.valid_max and df["is_valid"].sum() > args.valid_max:
        df = _shrink_valid(df, args.valid_max, args.seed)
    n_train = int((~df["is_valid"]).sum())
    if n_train == 0 or not df["is_valid"].any():
        raise TrainingError(f"{args.data}: need both train and valid nights")
    pre = resolve_pretrained(args.arch, args.pretrained)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise TrainingError("--device cuda but torch sees no CUDA device")
        device = torch.device(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    train_labels = df.loc[~df["is_valid"], "label"]
    loss_func, weights = None, None
    if args.balance == "weighted":
        weights = class_weights(train_labels)
        loss_func = CrossEntropyLossFlat(weight=torch.tensor(weights, device=device))
    elif args.balance == "undersample":
        class_weights(train_labels)  # same "both classes present" check
    spec = dmeta["preprocessing"]
    mining = None
    if args.mine_from:
        from training._balanced import HARDNESS
        from training._mining import mine

        df[HARDNESS], mining = mine(df, args.mine_from, spec, threads=args.threads or 1)
        mining["hard_share"] = args.hard_share
    dls = make_dataloaders(df, args.batch_size, args.balance, args.neg_ratio, args.seed, device,
                           args.num_workers, spec["id"],
                           hard_share=args.hard_share if mining else 0.0)
    if list(dls.vocab) != list(CLASSES):
        raise TrainingError(f"unexpected class vocabulary {list(dls.vocab)}")
    metrics = [accuracy, Recall(pos_label=0), Precision(pos_label=0)]
    args.out.mkdir(parents=True, exist_ok=True)
    learn = vision_learner(dls, arch_fn(args.arch), pretrained=pre["pretrained"], normalize=False,
                           loss_func=loss_func, metrics=metrics, n_out=len(CLASSES),
                           path=args.out, model_dir=".",
                           # one line per epoch as it ends: progress you can tail, even --quiet
                           cbs=[CSVLogger(fname="history.csv")])  # relative to path=args.out
    parent = None
    if args.init_from:
        pre["started_from"] = load_init_weights(learn.model, args.init_from)
        parent = parent_summary(args.init_from)
        _recalibrate(learn, dls)
    if args.fp16 and device.type == "cuda":
        learn = learn.to_fp16()
    if args.quiet:
        from fastai.callback.progress import ProgressCallback
        from fastcore.basics import noop

        learn.remove_cb(ProgressCallback)
        learn.logger = noop

    lr, suggestion = args.lr, None
    if args.lr_find:
        found = learn.lr_find(show_plot=False)
        suggestion = float(found.valley)
        lr = lr or suggestion
        _save_lr_plot(learn, args.out / "lr_find.png")
        log.info("lr_find suggests %.2e; using %.2e", suggestion, lr)
    lr = lr or 3e-3
    start = time.monotonic()
    warm = pre["pretrained"] or bool(args.init_from)
    if warm:
        # Pretrained body: train the head first, then everything (fastai's fine_tune).
        if args.freeze_epochs > 0:
            learn.fine_tune(args.epochs, base_lr=lr, freeze_epochs=args.freeze_epochs)
        else:  # fine_tune's second stage alone: all layers, discriminative rates
            learn.unfreeze()
            learn.fit_one_cycle(args.epochs, slice(lr / 100, lr), pct_start=0.3, div=5.0)
        schedule = f"fine_tune({args.epochs}, base_lr={lr:.2e}, freeze_epochs={args.freeze_epochs})"
    else:
        # A random body gains nothing from a frozen-body epoch.
        learn.fit_one_cycle(args.epochs, lr)
        schedule = f"fit_one_cycle({args.epochs}, lr_max={lr:.2e})"
    seconds = time.monotonic() - start

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(learn.model.state_dict(), args.out / WEIGHTS_NAME)
    learn.remove_cb(CSVLogger)  # its open file handle would travel into the pickle
    learn.export(LEARNER_NAME)  # fastai writes to path/fname: relative to args.out
    names = list(learn.recorder.metric_names[1:-1])
    history = [dict(zip(names, (float(v) for v in row), strict=False))
               for row in learn.recorder.values]
    epochs_run = args.epochs + (args.freeze_epochs if warm else 0)
    images_seen = len(dls.train) * args.batch_size * epochs_run
    meta = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "arch": args.arch,
        **pre,
        "init_from": str(args.init_from) if args.init_from else None,
        "parent": parent,
        "epochs": args.epochs,
        "schedule": schedule,
        "lr": lr,
        "lr_find_suggestion": suggestion,
        "batch_size": args.batch_size,
        "valid_frames_per_epoch": int(df["is_valid"].sum()),
        "balance": args.balance,
        "neg_ratio": args.neg_ratio if args.balance == "undersample" else None,
        "hard_negatives": mining,
        "class_weights": weights,
        "augmentation": augmentation_description(spec["id"]),
        "classes": list(CLASSES),
        "channels": PreprocessSpec.from_dict(spec).channels,
        "input_adapter": "grey replicated to 3 channels" if spec["id"] == "v4" else "none",
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                          "note": "x/255 then ImageNet mean/std"},
        "preprocessing": spec,
        "dataset": str(Path(args.data).resolve()),
        "data": summary,
        "history": history,
        "train_seconds": round(seconds, 1),
        "images_per_second": round(images_seen / seconds, 1) if seconds else None,
        "device": str(device),
        "seed": args.seed,
        "versions": {"torch": torch.__version__, "fastai": fastai.__version__,
                     "python": platform.python_version()},
    }
    write_json(args.out / TRAIN_META, meta)
    last = history[-1] if history else {}
    log.info("trained %s in %.0f s; last epoch: %s", args.arch, seconds,
             ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
    return meta


def _save_lr_plot(learn, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learn.recorder.plot_lr_find()
    plt.savefig(path, dpi=80)
    plt.close("all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", type=Path, required=True, help="`guaita dataset index` folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the model")
    parser.add_argument("--arch", choices=["resnet18", "resnet34"], default="resnet18")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False,
                        help="start from ImageNet weights (must be in the local torch hub cache)")
    parser.add_argument("--init-from", type=Path,
                        help="start from an earlier model: a `guaita train` folder, a .pth, or a "
                             "model bundle (folder or model.onnx; int8 weights are dequantized)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--freeze-epochs", type=int, default=1,
                        help="head-only epochs before unfreezing (when starting from weights)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, help="learning rate (default: lr_find's, or 3e-3)")
    parser.add_argument("--lr-find", action=argparse.BooleanOptionalAction, default=True,
                        help="run fastai's learning-rate finder first (default on)")
    parser.add_argument("--balance", choices=["undersample", "weighted", "none"],
                        default="undersample",
                        help="class balancing: per-epoch undersampling of non-meteors, or an "
                             "inverse-frequency weighted loss")
    parser.add_argument("--neg-ratio", type=float, default=1.0,
                        help="undersample: non-meteors drawn per meteor each epoch (default 1)")
    parser.add_argument("--mine-from", type=Path,
                        help="undersample: score the training non-meteors with this model "
                             "bundle first and draw --hard-share of each epoch's negatives by "
                             "that score (hard-negative mining; typically the bundle you "
                             "fine-tune with --init-from)")
    parser.add_argument("--hard-share", type=float, default=0.5,
                        help="with --mine-from: share of each epoch's non-meteors drawn by "
                             "hardness, the rest uniformly (default 0.5)")
    parser.add_argument("--valid-max", type=int, default=0,
                        help="validate each epoch on at most this many frames (all meteors "
                             "first; 0 = all): saves time on CPU")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--fp16", action="store_true", help="mixed precision (CUDA only)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars / epoch table")


def run(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        log.error("--epochs must be >= 1")
        return 2
    if args.mine_from and (args.balance != "undersample" or not 0.0 <= args.hard_share <= 1.0):
        log.error("--mine-from needs --balance undersample and --hard-share between 0 and 1")
        return 2
    try:
        train(args)
    except TrainingError as exc:
        log.error("%s", exc)
        return 2
    print(args.out / WEIGHTS_NAME)
    return 0

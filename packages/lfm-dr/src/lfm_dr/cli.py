"""The ``lfm-dr`` command: ``lfm-dr find-issues --train DIR --meta DIR --out issues.csv``."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

import click

from lfm_core.data import IMAGE_EXTENSIONS, FileImageDataset
from lfm_core.errors import LFMError, UsageError


def class_folder(root: str | os.PathLike, what: str) -> tuple[list[str], list[Path], list[str]]:
    """(class names, image paths, class name per image) of ``root/<class>/<image>``.

    Every file must be an image (hidden files such as .DS_Store are skipped), every class
    folder must hold at least one, and files may not sit outside a class folder.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UsageError(f"{what} folder {base} does not exist; give a folder of class folders (DIR/<class>/*.png)")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in base.iterdir() if p.is_file() and not p.name.startswith("."))
    if loose:
        raise UsageError(f"file {loose[0]} in {what} folder {base} is not inside a class folder; expected DIR/<class>/*.png")
    if len(classes) < 2:
        raise UsageError(f"{what} folder {base} has {len(classes)} class folder(s); at least 2 are needed (DIR/<class>/*.png)")
    paths: list[Path] = []
    names: list[str] = []
    for c in classes:
        files = sorted(p for p in (base / c).rglob("*") if p.is_file() and not p.name.startswith("."))
        bad = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        if bad:
            raise UsageError(f"{bad[0]} is not an image file; valid extensions: {', '.join(IMAGE_EXTENSIONS)}")
        if not files:
            raise UsageError(f"class folder {base / c} is empty; every class needs at least one image")
        paths += files
        names += [c] * len(files)
    return classes, paths, names


def load_train_and_meta(train_dir, meta_dir, image_size: int):
    """The two folders as ``FileImageDataset``s with one class index per class name."""
    classes, tr_paths, tr_names = class_folder(train_dir, "--train")
    meta_classes, me_paths, me_names = class_folder(meta_dir, "--meta")
    missing = [c for c in classes if c not in meta_classes]
    if missing:
        raise UsageError(f"class {missing[0]!r} of --train {train_dir} has no folder in --meta {meta_dir}; "
                         f"the meta set needs a few clean images of every class ({', '.join(classes)})")
    extra = [c for c in meta_classes if c not in classes]
    if extra:
        raise UsageError(f"class {extra[0]!r} of --meta {meta_dir} is not a class of --train {train_dir}; "
                         f"valid classes: {', '.join(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    train = FileImageDataset(tr_paths, [index[c] for c in tr_names], k, image_size=image_size)
    meta = FileImageDataset(me_paths, [index[c] for c in me_names], k, image_size=image_size)
    return classes, train, meta


def check_device(device: str | None) -> None:
    import torch

    try:
        dev = torch.device(device) if device else None
    except RuntimeError:
        raise UsageError(f"unknown --device {device!r}; valid choices: cpu, cuda, cuda:N, mps") from None
    if dev is not None and dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but torch sees no CUDA GPU here; use --device cpu")


def issues_csv(classes: list[str], paths: list[str], issues) -> str:
    """CSV text, one row per training image, most suspicious first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "given_label", "suggested_label", "score", "rank"])
    for rank, i in enumerate(issues.ranked.tolist(), start=1):
        w.writerow([paths[i], classes[int(issues.given_labels[i])], classes[int(issues.suggested_labels[i])],
                    f"{float(issues.scores[i]):.6f}", rank])
    return buf.getvalue()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """LFM data reweighting tools for your own image folders."""


@cli.command("find-issues")
@click.option("--train", "train_dir", required=True, type=click.Path(),
              help="folder of class folders: DIR/<class>/*.png (noisy labels)")
@click.option("--meta", "meta_dir", required=True, type=click.Path(), help="a few clean images per class, same layout")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="CSV to write (path, given/suggested label, score, rank)")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
@click.option("--image-size", default=32, show_default=True, type=click.IntRange(min=4),
              help="images are resized to this square size")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--width", default=16, show_default=True, type=click.IntRange(min=1), help="width of the ResNet (16: ResNet-32's)")
@click.option("--blocks", default=5, show_default=True, type=click.IntRange(min=1), help="ResNet blocks per stage (5: ResNet-32)")
def find_issues(train_dir, meta_dir, out, epochs, seed, device, image_size, batch_size, width, blocks) -> None:
    """Rank the training images by how likely their label is wrong (one LFM training run)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from lfm_core.io import atomic_write_text
    from lfm_dr.label_issues import find_label_issues

    check_device(device)
    classes, train, meta = load_train_and_meta(train_dir, meta_dir, image_size)
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} steps"), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(f"LFM on {len(train)} images", total=None)
        issues = find_label_issues(train, meta, len(classes), epochs=epochs, seed=seed, device=device,
                                   batch_size=batch_size, model_kwargs={"width": width, "blocks_per_stage": blocks},
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
    atomic_write_text(out, issues_csv(classes, train.paths, issues))
    n_flagged = int(issues.flagged.sum())
    click.echo(f"wrote {out}: {len(train)} images ranked, {n_flagged} flagged as likely mislabelled")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(argv, prog_name="lfm-dr", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except LFMError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()

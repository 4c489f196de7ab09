"""``fedcoord export``: build a trainable TFLite model and its manifest."""

from __future__ import annotations

from pathlib import Path

import click

from edge_client.errors import ConfigError
from model_export.registry import ARCHITECTURE_NAMES, ARCHITECTURES, OPTIMIZERS, architecture_help


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError as exc:
        raise ConfigError(
            f"invalid --input-shape {text!r}: use comma-separated integers like 28,28,1"
        ) from exc
    if not shape or min(shape) < 1:
        raise ConfigError(f"invalid --input-shape {text!r}: use positive integers like 28,28,1")
    return shape


def parse_floats(text: str, option: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",")]
    except ValueError as exc:
        raise ConfigError(f"invalid {option} {text!r}: use comma-separated numbers") from exc


@click.command()
@click.option(
    "--model",
    "architecture",
    default="cnn",
    show_default=True,
    type=click.Choice(ARCHITECTURE_NAMES),
    help=f"Architecture: {architecture_help()}.",
)
@click.option(
    "--input-shape",
    default=None,
    metavar="H,W,C",
    help="Input shape of one sample. Default: the architecture's ("
    + ", ".join(f"{','.join(map(str, a.input_shape))} for {a.name}" for a in ARCHITECTURES.values())
    + "; a transfer base model's own shape wins).",
)
@click.option("--classes", default=10, show_default=True, type=int, help="Number of classes.")
@click.option(
    "--label-names",
    default=None,
    metavar="A,B,...",
    help="Comma-separated class names for reports and predictions. Default: 0..classes-1.",
)
@click.option(
    "--batch-size",
    default=32,
    show_default=True,
    type=int,
    help="Static batch size of the train signature (boards pad the last batch).",
)
@click.option(
    "--optimizer",
    default="sgd",
    show_default=True,
    type=click.Choice(OPTIMIZERS),
    help="On-device optimizer.",
)
@click.option(
    "--lr",
    default=None,
    type=float,
    help="Default learning rate, recorded in the manifest (the coordinator may override it "
    "per round). Default: 0.05 for sgd, 0.001 for adam.",
)
@click.option(
    "--momentum", default=0.0, show_default=True, type=float, help="SGD momentum (0 disables)."
)
@click.option(
    "--prox-mu",
    default=0.0,
    show_default=True,
    type=float,
    help="FedProx proximal term mu: adds mu/2*||w - w_round_start||^2 to the local loss.",
)
@click.option(
    "--mean",
    default="0",
    show_default=True,
    metavar="M[,M,M]",
    help="Normalisation: per-channel mean subtracted after scaling pixels to [0, 1].",
)
@click.option(
    "--std",
    default="1",
    show_default=True,
    metavar="S[,S,S]",
    help="Normalisation: per-channel standard deviation divided after the mean.",
)
@click.option(
    "--base-model",
    default=None,
    metavar="PATH|mobilenet_v2",
    help="transfer only: a saved Keras model (.keras/.h5) used as a frozen feature extractor, "
    "or mobilenet_v2 (alpha 0.35, pooled features).",
)
@click.option(
    "--base-weights",
    default=None,
    type=click.Path(dir_okay=False),
    help="transfer with mobilenet_v2: a weights file (.weights.h5) you supply; nothing is "
    "downloaded. Without it the base has random weights.",
)
@click.option(
    "--head-units",
    default=0,
    show_default=True,
    type=int,
    help="transfer only: hidden units of the trainable head (0 = a single dense layer).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the initial weights.")
@click.option(
    "--grad-tolerance",
    default=1e-4,
    show_default=True,
    type=float,
    help="Largest relative difference allowed between the exported gradients and "
    "TensorFlow autodiff.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output directory for model.tflite and manifest.json (created if missing).",
)
def export(
    architecture: str,
    input_shape: str | None,
    classes: int,
    label_names: str | None,
    batch_size: int,
    optimizer: str,
    lr: float | None,
    momentum: float,
    prox_mu: float,
    mean: str,
    std: str,
    base_model: str | None,
    base_weights: str | None,
    head_units: int,
    seed: int,
    grad_tolerance: float,
    out_dir: str,
) -> None:
    """Export a trainable TFLite model that boards train without TensorFlow or Flex.

    Writes OUT/model.tflite (signatures train, infer, evaluate, get_weights, set_weights;
    TFLite builtin ops only) and OUT/manifest.json, after checking that only builtin ops are
    used, that the gradients match TensorFlow autodiff, and that a few training steps in the
    interpreter lower the loss.

    \b
    Example:
      fedcoord export --model cnn --input-shape 28,28,1 --classes 10 \\
          --batch-size 32 --optimizer sgd --lr 0.05 --out models/cnn
    """
    from model_export.export import ExportConfig, export_model
    from model_export.optimizers import OptimizerConfig

    names = tuple(n.strip() for n in label_names.split(",")) if label_names else None
    means, stds = parse_floats(mean, "--mean"), parse_floats(std, "--std")
    if any(s <= 0 for s in stds):
        raise ConfigError("--std values must be positive")
    cfg = ExportConfig(
        architecture=architecture,
        input_shape=parse_shape(input_shape) if input_shape else None,
        classes=classes,
        batch_size=batch_size,
        optimizer=OptimizerConfig(
            optimizer,
            lr if lr is not None else (0.001 if optimizer == "adam" else 0.05),
            momentum=momentum,
            prox_mu=prox_mu,
        ),
        label_names=names,
        normalization={"scale": 1 / 255, "mean": means, "std": stds}
        if (mean, std) != ("0", "1")
        else None,
        seed=seed,
        base_model=base_model,
        base_weights=base_weights,
        head_units=head_units,
        grad_tolerance=grad_tolerance,
    )
    result = export_model(cfg, Path(out_dir))
    click.echo(result.summary())
    click.echo(f"wrote      {result.model_path} and {result.manifest_path}")

"""``butler bliss-register`` and ``butler bliss-ingest-model``."""

from __future__ import annotations

__all__ = ["bliss_ingest_model", "bliss_register", "get_cli_subcommands"]

import click

from ..io import ModelFormatError
from ..pipeline import (
    DEFAULT_MODEL_DATASET_TYPE,
    DEFAULT_MODEL_RUN,
    ingest_model,
    register_bliss_storage_class,
)


@click.command("bliss-register", short_help="Register the BlissModel storage class in a repo.")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
def bliss_register(repo: str) -> None:
    """Add the BlissModel storage class and its formatter to REPO's butler.yaml.

    Works on a new or an existing local repo and may be repeated.  The file
    keeps its permissions; if it is a symbolic link, the file it points to is
    edited and the link is kept.
    """
    changed = register_bliss_storage_class(repo)
    click.echo(f"{repo}: BlissModel storage class {'registered' if changed else 'was already registered'}.")


@click.command("bliss-ingest-model", short_help="Put a BLISS model into a RUN collection.")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Model file (.safetensors) written by bliss-train; default: the packaged default model.",
)
@click.option("--run", default=DEFAULT_MODEL_RUN, show_default=True, help="RUN collection to write to.")
@click.option(
    "--dataset-type", default=DEFAULT_MODEL_DATASET_TYPE, show_default=True, help="Dataset type name."
)
def bliss_ingest_model(repo: str, model_path: str | None, run: str, dataset_type: str) -> None:
    """Register the storage class if needed and store a model in REPO.

    Pass the RUN collection to 'pipetask run -i' to use the model.
    """
    try:
        ref = ingest_model(repo, model_path, run=run, dataset_type_name=dataset_type)
    except (FileNotFoundError, ModelFormatError) as err:
        # The message names the file and what is wrong with it; a traceback would only bury it.
        raise click.ClickException(str(err)) from err
    click.echo(f"stored {ref.datasetType.name} in RUN collection {ref.run} ({ref.id}).")


def get_cli_subcommands() -> list[click.Command]:
    """The commands this package adds to ``butler`` (the ``butler.cli`` entry point)."""
    return [bliss_register, bliss_ingest_model]

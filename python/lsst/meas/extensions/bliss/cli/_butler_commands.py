"""``butler bliss-register`` and ``butler bliss-ingest-model``."""

from __future__ import annotations

__all__ = ["bliss_ingest_model", "bliss_register", "get_cli_subcommands"]

import os

import click

from ..io import BUTLER_CONFIG_PATH_VARIABLE, ModelFormatError, butler_config_dir
from ..pipeline import (
    DEFAULT_MODEL_DATASET_TYPE,
    DEFAULT_MODEL_RUN,
    ingest_model,
    register_bliss_storage_class,
)


def _config_path_note() -> str | None:
    """What to export when this process's environment lacks the package's Butler configuration."""
    entries = os.environ.get(BUTLER_CONFIG_PATH_VARIABLE, "").split(os.pathsep)
    directory = os.path.realpath(butler_config_dir())
    if any(entry and os.path.realpath(entry) == directory for entry in entries):
        return None
    return (
        f"note: every process that reads BLISS models (pipetask, bps, butler) needs "
        f"{BUTLER_CONFIG_PATH_VARIABLE} to include {butler_config_dir()} (the EUPS table sets it; with pip: "
        f'export {BUTLER_CONFIG_PATH_VARIABLE}="$(bliss-paths butler_config)'
        f'${{{BUTLER_CONFIG_PATH_VARIABLE}:+:${BUTLER_CONFIG_PATH_VARIABLE}}}").'
    )


@click.command("bliss-register", short_help="Make a repo ready for BlissModel datasets.")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--write-config",
    is_flag=True,
    help="Also write the storage class into REPO's butler.yaml (a private repo used without "
    "DAF_BUTLER_CONFIG_PATH); never for a shared repo.",
)
def bliss_register(repo: str, write_config: bool) -> None:
    """Register the bliss_model dataset type in REPO, leaving its butler.yaml untouched.

    The BlissModel storage class and its formatter come from the package's
    Butler configuration directory on DAF_BUTLER_CONFIG_PATH (set by the EUPS
    table; 'bliss-paths butler_config' prints it).  Works on a new or an
    existing repo, local or shared, and may be repeated.  With --write-config
    the definitions also go into butler.yaml, which keeps its permissions
    (a symbolic link is followed and kept).
    """
    note = _config_path_note()
    changed = register_bliss_storage_class(repo, write_config=write_config)
    click.echo(f"{repo}: BlissModel datasets {'registered' if changed else 'were already registered'}.")
    if note and not write_config:
        click.echo(note, err=True)


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

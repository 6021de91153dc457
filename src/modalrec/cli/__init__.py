"""The ``modalrec`` command line. Thin: every command calls a library function.

The commands live in modules by job — ``run_cmds`` (one model or one run: models, check-model, train,
evaluate, index, recommend, serve, demo), ``data_cmds`` (``data …``) and ``experiment_cmds`` (benchmark, ablate,
sweep, tune, ``analyze …``) — with the options they share in ``options`` and the consoles and one-line
errors in ``output``. They are registered here, in the order ``modalrec --help`` lists them. Every module
imports only Typer and Rich at the top, so that ``modalrec --help`` starts fast; a command imports the
library it calls when it runs.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from modalrec.cli import data_cmds, experiment_cmds, run_cmds
from modalrec.cli.output import set_verbose

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Multimodal recommendation: data, training, evaluation."
)
data_app = typer.Typer(no_args_is_help=True, help="Dataset tools: validate, split, synth, prepare.")
analyze_app = typer.Typer(no_args_is_help=True, help="The papers' analyses: preservation, modalities, t-SNE.")
app.add_typer(data_app, name="data")
app.add_typer(analyze_app, name="analyze")

app.command("models")(run_cmds.models_cmd)
app.command("check-model")(run_cmds.check_model_cmd)
app.command("train")(run_cmds.train_cmd)
app.command("evaluate")(run_cmds.evaluate_cmd)
app.command("index")(run_cmds.index_cmd)
app.command("recommend")(run_cmds.recommend_cmd)
app.command("serve")(run_cmds.serve_cmd)
app.command("demo")(run_cmds.demo_cmd)
app.command("benchmark")(experiment_cmds.benchmark_cmd)
app.command("ablate")(experiment_cmds.ablate_cmd)
app.command("sweep")(experiment_cmds.sweep_cmd)
app.command("tune")(experiment_cmds.tune_cmd)
data_app.command("validate")(data_cmds.data_validate)
data_app.command("split")(data_cmds.data_split)
data_app.command("synth")(data_cmds.data_synth)
data_app.command("prepare")(data_cmds.data_prepare)
analyze_app.command("preservation")(experiment_cmds.analyze_preservation_cmd)
analyze_app.command("modalities")(experiment_cmds.analyze_modalities_cmd)
analyze_app.command("tsne")(experiment_cmds.analyze_tsne_cmd)


@app.callback()
def _setup(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging; with an error, the traceback of its cause.")
    ] = False,
) -> None:
    set_verbose(verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="warning: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def main() -> None:
    """The ``modalrec`` console script (also ``python -m modalrec`` and ``python -m modalrec.cli``)."""
    app()

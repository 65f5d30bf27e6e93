"""The fednas ServerApp (Flower Message API): runs the scenario's federated phases.

``make_server_app(pipeline)`` binds an already-validated :class:`FederatedPipeline`
(``fednas run``); the module-level ``app`` reads the scenario from the Flower run config
(``flwr run .``).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from simulations.federated import FederatedPipeline


def make_server_app(pipeline: FederatedPipeline | None = None) -> ServerApp:
    """A ServerApp that runs ``pipeline`` (or one built from the run config) on the grid."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nonlocal pipeline
        if pipeline is None:
            from simulations.runconfig import config_from_run_config

            pipeline = FederatedPipeline(config_from_run_config(context.run_config))
            pipeline.prepare()
        try:
            pipeline.run_on_grid(grid)
        except BaseException as exc:  # handed back to the caller of run_simulation
            pipeline.error = exc
            raise

    return app


app = make_server_app()

"""Links into the MLflow UI (no mlflow import: `autotune ui` prints them while the server starts)."""

# The URL query MLflow's UI reads for its GenAI / Model training switch (the sidebar's, stored per browser).
MODEL_TRAINING = "workflowType=machine_learning"


def runs_link(experiment_id: str, view: str | None = None) -> str:
    """The experiment's runs table as an in-UI link (`#/experiments/...`), with the model-training switch on (MLflow
    3.17 opens experiments by that switch, not by the kind tag), in saved view `view` if given."""
    query = MODEL_TRAINING + (f"&viewStateShareKey={view}" if view else "")
    return f"#/experiments/{experiment_id}/runs?{query}"


def runs_url(ui: str, experiment_id: str, view: str | None = None) -> str:
    """`runs_link` on the MLflow UI at `ui`, e.g. http://127.0.0.1:5000 (what `autotune ui` can print)."""
    return f"{ui.rstrip('/')}/{runs_link(experiment_id, view)}"

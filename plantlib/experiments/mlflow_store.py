"""The MLflow store: which one runs are tracked in, and `MlflowStore`, the one owner of its client.

The default store is embedded in the project (a SQLite file, `artifacts/mlflow.db`, with artifacts in
`artifacts/mlruns`): no server, works offline. `tracking_uri` or `$MLFLOW_TRACKING_URI` points at any MLflow
server instead. Every MLflow call plantlib makes goes through `MlflowStore`: creating a run (nested or not),
logging parameters, metrics and files, ending it, finding runs, registering models, looking up their versions
and aliases, and downloading their files.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from plantlib.config import RunConfig
from plantlib.errors import PlantlibError
from plantlib.paths import artifacts_dir

PARENT_TAG = "mlflow.parentRunId"  # the tag that nests a run under another in MLflow's UI
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a parameter value
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 500  # at most what MLflow takes in one call
# MLflow's HTTP client retries for minutes by default; a training run must not wait that long for a lost server.
# Its per-file progress bars would print several lines for each model a command downloads.
_QUIET_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class TrackingError(PlantlibError):
    """The tracking store cannot be reached or refuses a request; the message says where and how to fix it."""


def embedded_store() -> tuple[str, Path]:
    """The project's own store: the SQLite URI of `artifacts/mlflow.db` and the artifact folder beside it."""
    folder = artifacts_dir()
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}", (folder / "mlruns").resolve()


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """`explicit`, else `$MLFLOW_TRACKING_URI`, else the embedded SQLite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or embedded_store()[0]


def artifact_root_for(uri: str) -> Path | None:
    """Where runs of a SQLite store keep their files: `mlruns/` beside the database (None: the store decides)."""
    if uri == embedded_store()[0]:
        return embedded_store()[1]
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns"
    return None  # a server or file store has its own artifact location


def _quiet_mlflow() -> None:
    """No usage reports, short HTTP retries and no download bars, unless the user chose otherwise; before MLflow is
    imported."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name, value in _QUIET_DEFAULTS.items():
        os.environ.setdefault(name, value)


def check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast with a TrackingError when an http(s) tracking server does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as error:
        raise TrackingError(
            f"tracking server {uri} is not reachable ({error.__class__.__name__}); start it, or point "
            "--tracking-uri (or $MLFLOW_TRACKING_URI) at a running one"
        ) from error


class MlflowStore:
    """One tracking store (`uri`) and one experiment in it: the MLflow client, and every call plantlib makes.

    Runs are created (optionally nested under a parent run), given parameters, metrics and files, and ended
    here; the training callback, group runs (`ParentRun`), `plantlib track`, `runs` and `register` all use it.
    Opening one fails fast with a TrackingError when a tracking server does not answer.
    """

    def __init__(self, uri: str, experiment: str | None = None) -> None:
        check_reachable(uri)
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        root = artifact_root_for(uri)
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        self.uri, self.experiment = uri, experiment
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    @classmethod
    def for_config(cls, config: RunConfig, tracking_uri: str | None = None) -> MlflowStore:
        """The store and experiment runs of `config` are tracked in (`tracking_uri` overrides the config's)."""
        return cls(resolve_tracking_uri(tracking_uri or config.tracking_uri), config.experiment)

    @cached_property
    def experiment_id(self) -> str:
        """The experiment's id, created when missing (artifacts inside the project for the embedded store).

        The experiment is marked as model training, so the MLflow UI opens on its runs table.
        """
        from mlflow.exceptions import MlflowException

        if not self.experiment:
            raise TrackingError(f"no MLflow experiment named for {self.uri}; pass one, e.g. 'plantlib'")
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            root = artifact_root_for(self.uri)
            location = root.as_uri() if root is not None else None
            with contextlib.suppress(MlflowException):  # another process may have created it meanwhile
                self.client.create_experiment(self.experiment, artifact_location=location)
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise TrackingError(f"cannot create MLflow experiment {self.experiment!r} in {self.uri}")
        if EXPERIMENT_KIND_TAG not in found.tags:
            self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return str(found.experiment_id)

    # -- runs ------------------------------------------------------------------------------------------
    def create_run(
        self,
        name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """A new run in the experiment, nested under `parent_run_id` when given; its run id."""
        nesting = {PARENT_TAG: parent_run_id} if parent_run_id else {}
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, **nesting})
        run_id = str(run.info.run_id)
        if params:
            self.log_params(run_id, params)
        return run_id

    def existing_run(self, run_id: str | None) -> str | None:
        """`run_id` when the store holds that run, else None."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            return str(self.client.get_run(run_id).info.run_id)
        except MlflowException:
            return None

    def resume_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def end_run(self, run_id: str, status: str) -> None:
        """Mark a run ended: "FINISHED", "FAILED" or "KILLED"."""
        self.client.set_terminated(run_id, status)

    # -- what a run holds --------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Parameters as strings (cut to MLflow's limit), in batches of the most MLflow takes in one call."""
        from mlflow.entities import Param

        items = [Param(key, str(value)[:PARAM_VALUE_LIMIT]) for key, value in params.items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start : start + _PARAMS_PER_BATCH], synchronous=True)

    def log_metrics(
        self, run_id: str, metrics: Mapping[str, float], step: int = 0, timestamp_ms: int | None = None
    ) -> None:
        """A batch of metrics at `step`, stamped `timestamp_ms` (default: now)."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        entries = [Metric(key, float(value), stamp, step) for key, value in metrics.items()]
        for start in range(0, len(entries), _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=entries[start : start + _METRICS_PER_BATCH], synchronous=True)

    def log_files(self, run_id: str, files: Iterable[Path], folder: str | None = None) -> None:
        """Attach the files that exist to the run, under `folder` of its artifacts (None: at the top)."""
        for file in files:
            if Path(file).is_file():
                self.client.log_artifact(run_id, str(file), folder)

    def logged_params(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.params)

    def logged_steps(self, run_id: str, keys: Iterable[str]) -> set[tuple[str, int]]:
        """(metric, step) of every point logged for the metrics `keys`."""
        return {(key, point.step) for key in set(keys) for point in self.client.get_metric_history(run_id, key)}

    # -- finding and registering runs ---------------------------------------------------------------------
    def search_runs(self, query: str = "") -> tuple[dict[str, str], list[Any]]:
        """({experiment id: name}, runs matching `query`, newest first) in the experiment, or in every
        experiment when the store was opened without one."""
        if self.experiment:
            found = self.client.get_experiment_by_name(self.experiment)
            experiments = [found] if found is not None else []
        else:
            experiments = self.client.search_experiments()
        names = {e.experiment_id: e.name for e in experiments}
        if not names:
            return names, []
        runs = self.client.search_runs(list(names), query, order_by=["attributes.start_time DESC"], max_results=5000)
        return names, list(runs)

    def register_version(self, name: str, run_id: str, artifact: str, description: str) -> int:
        """A new version of registered model `name` (created when missing) from a run's artifact; its number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
                raise TrackingError(f"cannot create registered model {name!r}: {error}") from error
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact}"
        version = self.client.create_model_version(name, source, run_id=run_id, description=description)
        return int(version.version)

    def set_aliases(self, name: str, version: int | str, aliases: Iterable[str]) -> None:
        """Point each alias of registered model `name` at `version` (an alias moves from the version it named)."""
        for alias in aliases:
            self.client.set_registered_model_alias(name, alias, str(version))

    def model_version(self, name: str, version: str | None = None, alias: str | None = None) -> Any:
        """Version `version` (or the one `alias` names) of registered model `name`; a TrackingError listing what
        the registry holds when there is no such model, version or alias."""
        from mlflow.exceptions import MlflowException

        try:
            if alias is not None:
                return self.client.get_model_version_by_alias(name, alias)
            return self.client.get_model_version(name, str(version))
        except MlflowException as error:
            raise TrackingError(self._missing_version_message(name, version, alias)) from error

    def _missing_version_message(self, name: str, version: str | None, alias: str | None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            return f"no registered model {name!r} in {self.uri}; plantlib models lists them"
        if alias is not None:
            known = ", ".join(sorted(model.aliases)) or "none"
            return (
                f"model {name!r} has no alias {alias!r} (aliases: {known}); "
                f"set it with plantlib register RUN --name {name} --alias {alias}"
            )
        versions = sorted(int(v.version) for v in self.model_versions(name))
        return f"model {name!r} has no version {version} (versions: {', '.join(map(str, versions)) or 'none'})"

    def registered_models(self) -> list[Any]:
        """Every registered model (prompts excluded), all pages."""
        models, token = [], None
        while True:
            page = self.client.search_registered_models(max_results=1000, page_token=token)
            models += [model for model in page if model.tags.get("mlflow.prompt.is_prompt") != "true"]
            token = page.token
            if not token:
                return models

    def model_versions(self, name: str | None = None) -> list[Any]:
        """Every version of registered model `name` (None: of every model), all pages. MLflow's search leaves
        their aliases out; the registered models carry them."""
        versions, token = [], None
        while True:
            page = self.client.search_model_versions(max_results=10000, page_token=token)
            versions += [version for version in page if name is None or version.name == name]
            token = page.token
            if not token:
                return versions

    def artifact_location(self, source: str) -> str:
        """The storage URI a version's `source` names: `runs:/ID/PATH` and logged-model `models:/m-ID/PATH` are
        followed to their run's or model's artifact location; any other URI is returned as it is."""
        scheme, _, rest = source.partition(":/")
        if scheme == "runs":
            run_id, _, path = rest.lstrip("/").partition("/")
            return f"{self.client.get_run(run_id).info.artifact_uri}/{path}".rstrip("/")
        if scheme == "models" and rest.lstrip("/").startswith("m-"):
            model_id, _, path = rest.lstrip("/").partition("/")
            return f"{self.client.get_logged_model(model_id).artifact_location}/{path}".rstrip("/")
        return source

    def top_level_files(self, run_id: str) -> list[str]:
        """The artifact paths of the files at the top of a run's artifacts (its record files when plantlib
        tracked it)."""
        return [item.path for item in self.client.list_artifacts(run_id) if not item.is_dir]

    def download(self, uri: str, destination: Path) -> Path:
        """Copy the file or folder at artifact `uri` (any scheme MLflow reads: s3://, mlflow-artifacts:/, runs:/,
        file://) into the folder `destination`; the local path of the copy."""
        import mlflow.artifacts

        destination.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(destination), tracking_uri=self.uri, registry_uri=self.uri
        )
        return Path(local)

    def download_run_file(self, run_id: str, path: str, destination: Path) -> Path:
        """Copy one artifact file of a run into the folder `destination`; the local path of the copy."""
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(destination), tracking_uri=self.uri
        )
        return Path(local)

"""Registered models as local files, and the table of what the registry holds and where its files are stored.

`models:/NAME/VERSION`, `models:/NAME@ALIAS` (and `models:/NAME/latest`) are resolved through the MLflow registry
to one version, whose files are downloaded once into `artifacts/registry/<name>/v<version>/`: the checkpoint, the
run's record files (config, metrics, run.json) and a tracking file naming its MLflow run, so the folder reads
as a run directory. A version never changes, so the copy is reused; a copy made from another store, or for a
version that was deleted and made again, is replaced. Local paths pass through unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from plantlib.errors import PlantlibError
from plantlib.experiments.mlflow_store import MlflowStore, TrackingError, resolve_tracking_uri
from plantlib.io import read_json, write_json
from plantlib.paths import artifacts_dir
from plantlib.runs import RUN_FILES, RunDir

MODELS_SCHEME = "models:/"
PROXIED_SCHEME = "mlflow-artifacts:"  # files the tracking server stores for its clients (--artifacts-destination)
RECORD_FILE = "registry.json"  # in a downloaded version's folder: which store, model, version and source it holds
URI_FORMS = "models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME/latest"


@dataclass(frozen=True)
class ResolvedModel:
    """A model on this machine, from a local path or a registry URI."""

    path: Path  # a checkpoint file, run directory or exported folder
    name: str  # the registered model's name, or the run directory's name
    version: str | None  # the registry version; None for a local path
    uri: str  # what was asked for: the models:/ URI or the path as given
    tracking_uri: str | None = None  # the store the version came from
    run_id: str | None = None  # the MLflow run the version was registered from

    @property
    def run_dir(self) -> Path:
        """The run directory (or downloaded version folder) that holds the model's files."""
        return self.path.parent if self.path.is_file() else self.path


def is_registry_uri(source: str | Path) -> bool:
    return str(source).startswith(MODELS_SCHEME)


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of a `models:/` URI: exactly one of version ("3" or "latest") and alias is set."""
    rest = uri.removeprefix(MODELS_SCHEME)
    name, slash, version = rest.partition("/")
    if slash and name and (version.isdigit() or version == "latest"):
        return name, version, None
    if not slash:
        name, at, alias = rest.rpartition("@")
        if at and name and alias:
            return name, None, alias
    raise PlantlibError(f"{uri!r} is not a registry URI; write {URI_FORMS}")


def resolve_model_source(source: str | Path, tracking_uri: str | None = None) -> ResolvedModel:
    """A local path as it is; a `models:/` URI resolved in the registry of `tracking_uri` (default:
    $MLFLOW_TRACKING_URI, else the project's store) and downloaded, or reused when already here.

    An unknown model, version or alias, or a store that does not answer, is a one-line error saying what to do.
    """
    text = str(source)
    if not is_registry_uri(text):
        path = Path(text)
        return ResolvedModel(
            path=path, name=(path if path.is_dir() else path.parent).resolve().name, version=None, uri=text
        )
    name, version, alias = parse_models_uri(text)
    store = MlflowStore(resolve_tracking_uri(tracking_uri))
    found = _latest_version(store, name) if version == "latest" else store.model_version(name, version, alias)
    path = _local_copy(store, found)
    return ResolvedModel(path, str(found.name), str(found.version), text, store.uri, found.run_id or None)


def _latest_version(store: MlflowStore, name: str) -> Any:
    versions = store.model_versions(name)
    if not versions:
        store.model_version(name, "1")  # raises naming what the registry holds
    newest = max(versions, key=lambda found: int(found.version))
    return store.model_version(name, str(newest.version))  # the single-version lookup carries its aliases


def registry_cache_dir() -> Path:
    """Where downloaded versions are kept: `artifacts/registry/<name>/v<version>/`."""
    return artifacts_dir() / "registry"


def _local_copy(store: MlflowStore, version: Any) -> Path:
    """The local path of a version's model file or folder, downloaded unless a matching copy is here."""
    record = {
        "tracking_uri": store.uri,
        "name": str(version.name),
        "version": str(version.version),
        "run_id": version.run_id or None,
        "source": str(version.source),
    }
    target = registry_cache_dir() / record["name"] / f"v{record['version']}"
    cached = _cached_file(target, record)
    if cached is not None:
        return cached
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".v{record['version']}-", dir=target.parent))
    try:
        local = _download(store, record, staging)
        write_json(staging / RECORD_FILE, {**record, "file": local.relative_to(staging).as_posix()})
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    cached = _cached_file(target, record)
    if cached is None:
        raise TrackingError(f"{target} changed while {record['name']} v{record['version']} was downloaded; run again")
    return cached


def _cached_file(target: Path, record: dict[str, Any]) -> Path | None:
    saved = read_json(target / RECORD_FILE)
    if not saved.get("file") or any(saved.get(key) != value for key, value in record.items()):
        return None
    local = target / saved["file"]
    return local if local.exists() else None


def _download(store: MlflowStore, record: dict[str, Any], staging: Path) -> Path:
    """The version's source, and its run's record files and tracking file beside it; the source's local path."""
    try:
        local = store.download(record["source"], staging)
        run_id = record["run_id"]
        if run_id:
            wanted = set(RUN_FILES) & set(store.top_level_files(run_id))
            for name in sorted(wanted):
                store.download_run_file(run_id, name, staging)
            RunDir(staging).write_tracking({"uri": store.uri, "run_id": run_id})
    except PlantlibError:
        raise
    except Exception as error:  # boto3, requests and MLflow each raise their own kinds
        raise TrackingError(_download_failure(record, error)) from error
    return local


def _download_failure(record: dict[str, Any], error: Exception) -> str:
    reason = " ".join(f"{error.__class__.__name__}: {error}".split())[:300]
    hint = "check that the tracking server and its artifact storage are up"
    if record["source"].startswith("s3://"):
        hint = "set MLFLOW_S3_ENDPOINT_URL (MinIO, Ceph) and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for the bucket"
    return f"cannot download {record['name']} version {record['version']} from {record['source']} ({reason}); {hint}"


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished download to `target`, replacing a stale copy; a copy another process put there
    meanwhile is kept (it holds the same version)."""
    if target.exists() and _cached_file(target, read_json(staging / RECORD_FILE)) is None:
        trash = Path(tempfile.mkdtemp(prefix=".stale-", dir=target.parent))
        os.replace(target, trash / target.name)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():
            raise


def require_run_data(model: ResolvedModel) -> None:
    """For a registry model: its run's data folder and split file must be on this machine to evaluate a split;
    an error pointing at --data-dir otherwise."""
    if model.version is None:
        return
    info = RunDir(model.run_dir).read_info()
    data_dir, split_file = info.get("data_dir"), info.get("split_file")
    if data_dir and split_file and Path(data_dir).is_dir() and Path(split_file).is_file():
        return
    raise PlantlibError(
        f"{model.uri} was trained on {data_dir or 'data'} (split file {split_file or 'unknown'}), which is not on "
        "this machine; evaluate it on a folder-per-class directory with --data-dir FOLDER"
    )


def storage_location(location: str, artifacts_destination: str | None = None) -> str:
    """Where a file lies: an `mlflow-artifacts:/PATH` file, kept by the tracking server, is
    `<artifacts_destination>/PATH` (the server's --artifacts-destination); any other location is itself."""
    if not location.startswith(PROXIED_SCHEME) or not artifacts_destination:
        return location
    path = location.removeprefix(PROXIED_SCHEME)
    if path.startswith("//"):  # mlflow-artifacts://host:port/PATH names the server too
        path = path[2:].partition("/")[2]
    return f"{artifacts_destination.rstrip('/')}/{path.lstrip('/')}"


REGISTRY_COLUMNS = ["name", "version", "aliases", "run_id", "created", "source", "storage"]


def registered_models_table(tracking_uri: str | None = None, artifacts_destination: str | None = None) -> pd.DataFrame:
    """Every version of every registered model, by name and newest version first: its aliases, run, creation
    time, the source the registry records and where the files are stored (see `storage_location`)."""
    store = MlflowStore(resolve_tracking_uri(tracking_uri))
    models = store.registered_models()
    aliases: dict[tuple[str, str], list[str]] = {}
    for model in models:
        for alias, version in sorted(model.aliases.items()):
            aliases.setdefault((model.name, str(version)), []).append(alias)
    names = {model.name for model in models}
    rows = [
        {
            "name": found.name,
            "version": int(found.version),
            "aliases": ",".join(aliases.get((found.name, str(found.version)), [])),
            "run_id": found.run_id or "",
            "created": pd.to_datetime(found.creation_timestamp, unit="ms").strftime("%Y-%m-%d %H:%M"),
            "source": found.source,
            "storage": storage_location(store.artifact_location(found.source), artifacts_destination),
        }
        for found in store.model_versions()
        if found.name in names
    ]
    frame = pd.DataFrame(rows, columns=REGISTRY_COLUMNS)
    return frame.sort_values(["name", "version"], ascending=[True, False], ignore_index=True)

"""POST /train: a training job running `training.train.train` in its own process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response

from service.api.deps import AdminDep, EngineDep, JobsDep, SettingsDep
from service.api.schemas import ErrorResponse, JobPublic, TrainCreate
from service.errors import InvalidParameterError
from service.paths import resolve_under_roots

router = APIRouter(tags=["training"])

# Paths inside a training config, as (section, key) -> must the path exist before training starts.
_CONFIG_PATHS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("run_dir",), False),
    (("data", "root"), True),
    (("data", "unseen"), True),
    (("model", "init_checkpoint"), True),
    (("model", "overrides", "pretrained_file"), True),
)


@router.post(
    "/train",
    status_code=202,
    response_model=JobPublic,
    dependencies=[AdminDep],
    responses={code: {"model": ErrorResponse} for code in (400, 401, 403, 422)},
)
def start_training(body: TrainCreate, response: Response, jobs: JobsDep, settings: SettingsDep,
                   engine: EngineDep) -> JobPublic:
    """Validate the config (unknown keys and wrong types are refused, naming the key), confine its
    paths to the data roots (the served checkpoint is accepted as `model.init_checkpoint` wherever it
    lies), and queue the run; the job's result is the training report."""
    from training.config import ConfigError, config_from_dict

    served = engine.model.path if engine.model is not None else settings.checkpoint
    config = confine_config_paths(body.config, settings.data_roots, served_checkpoint=served)
    try:
        checked = config_from_dict({**config, "resume": body.resume}, source="config")
    except ConfigError as error:
        raise InvalidParameterError("invalid_config", str(error), field="config") from None
    params = {"config": checked.to_dict(), "device": settings.device}
    job = jobs.submit("train", params)
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobPublic.from_job(job)


def confine_config_paths(config: dict[str, Any], roots: Any, *, served_checkpoint: Path | None = None) -> dict[str, Any]:
    """A copy of `config` with every path resolved under the data roots (a path error names the key);
    `model.init_checkpoint` may also be the server's own checkpoint, wherever it lies."""
    confined: dict[str, Any] = {key: (dict(value) if isinstance(value, dict) else value)
                                for key, value in config.items()}
    for keys, must_exist in _CONFIG_PATHS:
        container = _container(confined, keys[:-1])
        if container is None or container.get(keys[-1]) is None:
            continue
        value = container[keys[-1]]
        if not isinstance(value, str):
            continue  # the config validation names the wrong type
        field = "config." + ".".join(keys)
        also = served_checkpoint if keys == ("model", "init_checkpoint") else None
        container[keys[-1]] = str(resolve_under_roots(value, roots, field, must_exist=must_exist, also=also))
    return confined


def _container(config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The (copied, writable) dict at `keys` inside `config`, or None when absent."""
    node: Any = config
    for key in keys:
        child = node.get(key) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            return None
        child = dict(child)
        node[key] = child
        node = child
    return node if isinstance(node, dict) else None

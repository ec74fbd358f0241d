"""A prefect.yaml step that runs another step unless a variable says to skip it.

Prefect 3.9 runs every build and push step a prefect.yaml lists; a step has no condition.
The training image's steps need a Docker daemon and prefect-docker, which CI machines and
some laptops lack, so prefect.yaml wraps each of them:

    build:
      - deployments.steps.run_step_unless_skipped:
          id: build-image
          skip: "{{ $AUTOLABEL_SKIP_IMAGE_BUILD }}"
          step:
            prefect_docker.deployments.steps.build_docker_image:
              image_name: ...

    AUTOLABEL_SKIP_IMAGE_BUILD=1 prefect deploy --all   # registers the deployment; no Docker needed
    prefect deploy --all                                # also builds and pushes the image

Prefect fills ``{{ $VAR }}`` from the environment before calling the step (an unset
variable becomes ""), and imports ``deployments.steps`` from the directory ``prefect deploy``
runs in, the repository root. The wrapped step's module is imported only when it runs, so a
skipped prefect-docker step needs neither prefect-docker nor Docker.
"""

from __future__ import annotations

import inspect
from typing import Any

TRUE = {"1", "true", "yes", "on"}
FALSE = {"", "0", "false", "no", "off"}


def is_skipped(skip: str | bool | int | None) -> bool:
    """Read the skip flag as Prefect hands it over (a string from the environment, or a YAML bool)."""
    text = str(skip if skip is not None else "").strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"skip: expected 1/true/yes or 0/false/no/empty (AUTOLABEL_SKIP_IMAGE_BUILD), got {skip!r}")


def import_step(name: str) -> Any:
    """The step function for a dotted name, or an error saying how to get its package."""
    from prefect.utilities.importtools import import_object

    try:
        return import_object(name)
    except ImportError as e:
        package = name.split(".", 1)[0].replace("_", "-")
        raise RuntimeError(
            f"{name}: cannot import it ({e}); install {package} (pip install {package}), "
            "or set AUTOLABEL_SKIP_IMAGE_BUILD=1 to deploy without building the image"
        ) from None


async def run_step_unless_skipped(
    step: dict[str, dict[str, Any]], skip: str | bool | None = "", when_skipped: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run ``step`` (one ``{function: inputs}`` mapping, as in prefect.yaml) unless ``skip`` is true.

    Returns the step's own outputs, so ``{{ <id>.image }}`` works downstream as for the bare
    step, or ``when_skipped`` (default: nothing) when skipped. Async because Prefect's own
    steps may be coroutines; prefect-docker's are plain functions and simply block here.
    """
    if not isinstance(step, dict) or len(step) != 1:
        raise ValueError(f"step: expected one {{function: inputs}} mapping, got {step!r}")
    ((name, inputs),) = step.items()
    if is_skipped(skip):
        print(f" > Skipped {name.rsplit('.', 1)[-1]} (AUTOLABEL_SKIP_IMAGE_BUILD is set)")
        return dict(when_skipped or {})
    inputs = dict(inputs or {})
    inputs.pop("requires", None)  # prefect's install-on-demand hint; import_step says what to install
    result = import_step(name)(**inputs)
    if inspect.isawaitable(result):
        result = await result
    return result or {}


def check_ecs_settings(ecs: dict[str, Any], variables: dict[str, str]) -> dict[str, Any]:
    """Refuse to deploy ECS settings the flow would refuse: the same check (flows.ecs.settings).

    ``ecs`` is the deployment's ``ecs`` parameter as Prefect rendered it (an unset Prefect
    variable gives ""), ``variables`` names the Prefect variable each setting is read from, so
    the error says which ones to set. A ValueError stops ``prefect deploy`` before it registers
    anything. Returns the settings as the flow will receive them.
    """
    from flows.ecs.settings import EcsSettings

    try:
        return {"ecs": EcsSettings.parse(ecs).model_dump(mode="json")}
    except ValueError as e:
        lines = []
        for line in str(e).splitlines():
            field = line.removeprefix("ecs.").split(":", 1)[0]
            if field in variables and not str(ecs.get(field) or ""):
                line = (f"ecs.{field}: the Prefect variable {variables[field]} is unset; set it with "
                        f"`prefect variable set {variables[field]} VALUE` (deployments/README.md)")
            lines.append(line)
        unset = [variables[f] for f in variables if not str(ecs.get(f) or "")]
        head = f"the deployment's ECS settings are incomplete ({', '.join(unset)} unset)" if unset \
            else "the deployment's ECS settings are invalid"
        raise ValueError(head + ":\n" + "\n".join(lines) + "\nthen run `prefect deploy` again") from None


class _FailedRunOneLine:
    """A logging filter: the engine's FailedRun traceback becomes one line (its message)."""

    def filter(self, record) -> bool:
        from prefect.exceptions import FailedRun

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FailedRun):
            record.msg, record.args, record.exc_info, record.exc_text = f"Flow run failed: {exc}", (), None, None
        return True


def quiet_failed_runs() -> dict[str, Any]:
    """A pull step: a flow run that ends Failed logs its message, not Prefect's traceback.

    prefect 3.9.1's engine (`python -m prefect.engine`, what a process worker starts) asks a run
    that returned a Failed state for its result, which raises FailedRun, and logs "Engine
    execution exited with unexpected exception" with a traceback through Prefect's internals
    to the run's log, after the flow already said why it failed. Pull steps run in that same
    process before the flow, so this filter on the flow-run logger keeps the log readable;
    other exceptions keep their tracebacks.
    """
    import logging

    logger = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, _FailedRunOneLine) for f in logger.filters):
        logger.addFilter(_FailedRunOneLine())
    return {}

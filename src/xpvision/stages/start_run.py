"""Stage ``start_run``: open the parent MLflow run of a task's pipeline execution.

The stage depends on the task's parameter blocks only, so DVC re-runs it exactly when the task's
configuration changes: one parent run per configuration that is executed. The task's first stage declares
``reports/<task>/pipeline_run.json`` as a dependency, so it runs after this one; the later stages follow
through their data dependencies and log under whichever parent the file names. A fine-tuned task's first
stage is its training, which must not re-run for a new parent run alone: it declares
``reports/<task>/pipeline_order.json`` instead, written here with the same content every time (the task and
its data task). A stage re-run for a code change alone logs under the current parent. Returning to an earlier
configuration is restored from DVC's run cache together with the results that were logged under that parent.
"""

from __future__ import annotations

from xpvision import atomic, tracking
from xpvision.config import SECTIONS, Params, block_dict, data_task
from xpvision.stages import TaskPaths


def task_params(params: Params, task: str) -> dict:
    """Every parameter block the task's stages read, keyed like params.yaml (``train.detection``, ...)."""
    blocks = {}
    for section in SECTIONS:
        for owner in (task, data_task(task)):
            if owner in getattr(params, section):
                blocks[f"{section}.{owner}"] = block_dict(getattr(params, section)[owner])
                break
    return blocks


def run(params: Params, task: str) -> None:
    paths = TaskPaths(task)
    parent = tracking.start_pipeline_run(task, params.tracking, task_params(params, task))
    parent.write(paths.pipeline_run)
    atomic.write_json(paths.pipeline_order, {"task": task, "data": data_task(task)})
    print(f"{task}: MLflow parent run {parent.run_id} in experiment {parent.experiment_name} "
          f"({parent.tracking_uri})")
    url = tracking.ui_url(parent.tracking_uri, parent.experiment_id)
    if url:
        print(f"{task}: runs in the MLflow UI: {url}")

"""The ``webvse`` flow on a Dask cluster, for deployments (entrypoint ``flows/dask_pipeline.py:webvse``).

A deployment names a flow object and cannot hand it a task runner, so this module is that
flow with prefect-dask's DaskTaskRunner: the scheduler at ``$WEBVSE_DASK_ADDRESS`` (set it in
the deployment's ``job_variables.env``), or a local cluster when it is unset. On the command
line, ``webvse run --task-runner dask --dask-address tcp://scheduler:8786`` does the same.
"""

from __future__ import annotations

import os

from flows.pipeline import task_runner
from flows.pipeline import webvse as webvse_on_threads

DASK_ADDRESS_ENV = "WEBVSE_DASK_ADDRESS"

webvse = webvse_on_threads.with_options(task_runner=task_runner("dask", os.environ.get(DASK_ADDRESS_ENV)))

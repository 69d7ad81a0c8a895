"""`hydra/launcher=slurm`: the submitit Slurm launcher, waiting for every job and reporting the jobs Slurm ended
without a result instead of stopping the sweep at the first.

A job cancelled with `scancel` before it could record itself, killed (`kill -9`, the OOM killer) or lost with its
node leaves no result. submitit then raises UncompletedJobError for it; the plugin's launcher lets that end the
sweep at once, while other jobs may still run, and no sweep summary is written. This one waits for all jobs, hands
each lost job to engine.sweep (its row in the summary: status `lost`, the Slurm job id, state and error) and lets
the sweep end as usual: the summary is written and the command exits 1. The run rows such a job left `running` are
marked `abandoned` by the next run that reconciles (engine/db/liveness.py).

Hydra takes launchers only from the hydra_plugins package, hence this module's place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus

from engine import sweep

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # hydra-submitit-launcher is not installed: no Slurm launcher to extend (and no warning)
    SlurmLauncher = None

log = logging.getLogger("engine")


def _wait_for_all(submitted: list, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                  sweep_dir: Path) -> list[JobReturn]:
    import submitit

    returns = []
    for number, (job, overrides) in enumerate(zip(submitted, job_overrides, strict=True), start=initial_job_idx):
        try:
            returns.append(job.results()[0])
        except submitit.core.utils.UncompletedJobError as exc:
            reason = f"Slurm job {job.job_id} ended {job.state} without a result: {str(exc).splitlines()[0]}"
            log.error("job %s (%s): %s", number, " ".join(overrides), reason)
            sweep.lost_job(sweep_dir / str(number), list(overrides), reason)
            # recorded as lost, not raised: the sweep goes on to its summary
            returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED))
    return returns


if SlurmLauncher is not None:

    class EngineSlurmLauncher(SlurmLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            import submitit

            # The plugin's launch builds the executor from the config, submits the array, then waits for each job
            # in turn and raises at the first lost one. Keep its submission; do the waiting here instead.
            submitted: list[submitit.Job] = []
            map_array = submitit.AutoExecutor.map_array

            def submit_only(executor, fn, *iterables):
                submitted.extend(map_array(executor, fn, *iterables))
                return []  # nothing left for the plugin to wait for

            submitit.AutoExecutor.map_array = submit_only
            try:
                super().launch(job_overrides, initial_job_idx)
            finally:
                submitit.AutoExecutor.map_array = map_array
            return _wait_for_all(submitted, job_overrides, initial_job_idx, Path(str(self.config.hydra.sweep.dir)))

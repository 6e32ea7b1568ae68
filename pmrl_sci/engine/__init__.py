"""The one training engine under every task (ABIDE, Houston 2013, retrieval).

A task implements :class:`Task` (build modules, training data, batch loss, validate, test, selections);
:func:`train_unit` runs it with :class:`TrainSettings` (optimiser, schedule, clipping, epochs, early stopping,
DDP, per-epoch resume checkpoints, metrics records, progress, sweep reports, TensorBoard). :func:`open_run`
and :func:`run_units` handle a run folder's units: finished units are reused only when the recorded
result-defining options equal the current ones. :class:`SourceRun` and :func:`load_initial_states` start a unit
from a finished run's selected model (``--init-from``); ``UnitModules(frozen=...)`` freezes parts of it.
See ``docs/engine.md``.
"""

from pmrl_sci.engine.loop import require_tensorboard, resume_checkpoint_name, train_unit
from pmrl_sci.engine.optim import TrainSettings, build_lr_schedule, build_optimizer, lr_factor
from pmrl_sci.engine.task import (
    SelectedModel,
    Selection,
    Step,
    Task,
    TrainData,
    UnitModules,
    UnitOutcome,
    shuffled_batches,
)
from pmrl_sci.engine.transfer import SourceRun, load_initial_states
from pmrl_sci.engine.units import (
    RESULT_NEUTRAL_OPTIONS,
    differing_options,
    finish_unit,
    finished_result,
    open_run,
    run_units,
)

__all__ = [
    "RESULT_NEUTRAL_OPTIONS", "SelectedModel", "Selection", "SourceRun", "Step", "Task", "TrainData",
    "TrainSettings", "UnitModules", "UnitOutcome", "build_lr_schedule", "build_optimizer", "differing_options",
    "finish_unit", "finished_result", "load_initial_states", "lr_factor", "open_run", "require_tensorboard",
    "resume_checkpoint_name", "run_units", "shuffled_batches", "train_unit",
]

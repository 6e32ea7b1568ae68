"""Units of a run (seeds, folds): reuse of finished units, and refusal to mix results of other options."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pmrl_sci.engine.loop import resume_checkpoint_name
from pmrl_sci.errors import InputError
from pmrl_sci.runs import RunFolder, to_plain
from pmrl_sci.training import progress

logger = logging.getLogger(__name__)

#: resolved options that never change a unit's result: a rerun may change them and still reuse finished units
#: (the seeds are part of the unit names, so they need no check either)
RESULT_NEUTRAL_OPTIONS = frozenset({
    "out", "config", "progress", "device", "device_resolved", "cache_dir", "download", "tensorboard", "seeds",
    "seed", "threads",
})

#: engine options that runs recorded before the option existed had implicitly, at these values: such a run is
#: compared as if it had recorded them (so it resumes under the default and is refused under another value)
IMPLIED_BY_OLDER_RUNS: Mapping[str, Any] = {"init_offset": 0, "ema_decay": 0.0}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _option_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def differing_options(recorded: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()
                      ) -> list[str]:
    """``--name recorded -> current`` for every result-defining option that differs.

    Options absent from ``recorded`` (written by an older version of the kit) are not compared: give them an implied
    value (:data:`IMPLIED_BY_OLDER_RUNS`, a task's ``upgrade``), or :func:`open_run` warns about them
    (:func:`unrecorded_options`).
    """
    skip = RESULT_NEUTRAL_OPTIONS | set(ignore)
    now = json.loads(json.dumps(to_plain(dict(current)), default=str))
    return [f"{_option_flag(key)} {recorded[key]!r} (recorded) vs {now[key]!r} (now)"
            for key in now if key not in skip and key in recorded and not _same(recorded[key], now[key])]


def unrecorded_options(recorded: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()
                       ) -> list[str]:
    """The result-defining options of ``current`` that ``recorded`` (an older version's config) does not hold,
    as flags (``--name``); :func:`differing_options` cannot compare them."""
    skip = RESULT_NEUTRAL_OPTIONS | set(ignore)
    return [_option_flag(key) for key in current if key not in skip and key not in recorded]


def has_results(run: RunFolder) -> bool:
    """Whether the folder holds anything a rerun would reuse: finished units, resume checkpoints or records."""
    done = run.path / "done"
    checkpoints = run.path / "checkpoints"
    return ((done.is_dir() and any(done.glob("*.json")))
            or (checkpoints.is_dir() and any(checkpoints.glob("*.resume.pt")))
            or bool(run.read_metrics()))


def open_run(run: RunFolder, resolved: Mapping[str, Any], ignore: Iterable[str] = (),
             upgrade: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> None:
    """Start (or resume) a run in ``run``: check the recorded options, clear leftovers of a kill, write the config.

    Parameters
    ----------
    run : RunFolder
        The ``--out`` folder.
    resolved : mapping
        The resolved options of this run (written as ``config.yaml``/``config.json``).
    ignore : iterable of str
        Further keys of ``resolved`` that do not change results (besides :data:`RESULT_NEUTRAL_OPTIONS`).
    upgrade : callable, optional
        Maps a ``config.json`` recorded by an older version of the kit to today's options before the comparison
        (e.g. a renamed default whose runs are the same), so such a run still resumes.

    Raises
    ------
    InputError
        When the folder already holds results made with other result-defining options: reusing them would
        report them under this run's options.
    """
    from pmrl_sci.distributed import gather_objects

    recorded = run.read_json("config.json")
    if recorded is not None and upgrade is not None:
        recorded = dict(upgrade(recorded))
    if recorded is not None:
        recorded = {**{k: v for k, v in IMPLIED_BY_OLDER_RUNS.items() if k in resolved}, **recorded}
    resuming = recorded is not None and has_results(run)
    diff = differing_options(recorded, resolved, ignore) if resuming else []
    diff = gather_objects(diff)[0]  # rank 0's verdict on every rank; every rank has read before rank 0 writes
    if diff:
        raise InputError(f"--out {run.path} holds results of a run with other options: {'; '.join(diff)}. "
                         "Use another --out, or rerun with the recorded options to resume it")
    unrecorded = unrecorded_options(recorded, resolved, ignore) if resuming else []
    if unrecorded:
        logger.warning("--out %s was written by an older version of the kit that did not record %s: resuming it "
                       "assumes its finished units ran with this run's values of those options",
                       run.path, ", ".join(unrecorded))
    run.remove_orphan_temporaries()
    run.write_config(resolved)


def finished_result(run: RunFolder, unit: str, required: Sequence[str] = ("best_epoch",)) -> dict[str, Any] | None:
    """The recorded result of ``unit``, or None when it is absent or unusable (e.g. no epoch was trained)."""
    if not run.is_done(unit):
        return None
    try:
        result = run.read_done(unit)
    except (OSError, ValueError):
        result = None
    if not isinstance(result, dict) or any(result.get(key) is None for key in required):
        logger.warning("%s: the recorded result in %s is incomplete; running the unit again", unit, run.path)
        return None
    return result


def finish_unit(run: RunFolder, unit: str, result: Mapping[str, Any]) -> None:
    """Record ``unit`` as finished with ``result`` and remove its resume checkpoint."""
    run.mark_done(unit, result)
    run.remove_checkpoint(resume_checkpoint_name(unit))


def run_units(run: RunFolder, units: Sequence[tuple[str, Callable[[], dict[str, Any]]]], *, show_progress: bool = True,
              desc: str = "units") -> list[dict[str, Any]]:
    """Run every ``(name, run_one)`` unit whose result is not already recorded; return the results in order.

    ``run_one()`` returns the unit's result (a JSON-friendly dict with ``best_epoch``); it is recorded under
    ``done/<name>.json`` only once it exists, so an interrupted unit is never reported as finished.
    """
    results = []
    for name, run_one in progress(units, desc=desc, disable=not show_progress):
        result = finished_result(run, name)
        if result is not None:
            logger.info("%s already finished in %s: reusing it", name, run.path)
            run.remove_checkpoint(resume_checkpoint_name(name))  # left if a kill came right after mark_done
        else:
            result = run_one()
            if result is None or result.get("best_epoch") is None:
                raise RuntimeError(f"unit {name} produced no result")
            finish_unit(run, name, result)
        results.append(result)
    return results

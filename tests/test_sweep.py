"""Optuna sweeps (``python -m pmrl_sci.sweep``): spaces, in-process studies, pruning, failures, parallel workers."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch

from pmrl_sci.sweep import (
    MAX_CONNECTIONS,
    SweepConfig,
    SweepError,
    describe_storage,
    fail_dead_local_trials,
    fixed_options,
    main,
    make_storage,
    open_storage,
    prepare,
    validation_value,
)
from pmrl_sci.sweep_spaces import SpaceError, load_space, options_to_argv

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _abide_args(cache: Path, epochs: int = 2) -> list[str]:
    return ["--default-subjects", "36", "--default-sites", "2", "--atlas", "tt", "--epochs", str(epochs),
            "--patience", "100", "--batch-size", "8", "--modalities", "smri", "text", "--split", "bnt",
            "--cache-dir", str(cache)]


@pytest.fixture(scope="module")
def abide_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the tiny generated cohort, built once (parallel workers must not race to build it)."""
    from pmrl_sci.abide import main as abide_main

    cache = tmp_path_factory.mktemp("abide-cache")
    abide_main([*_abide_args(cache, epochs=1), "--embed-dim", "16", "--no-progress",
                "--out", str(tmp_path_factory.mktemp("warm"))])
    return cache


@contextlib.contextmanager
def _study(out: Path, storage: str | None = None, name: str = "abide") -> Iterator[optuna.Study]:
    """The sweep's study; its storage's connections are closed afterwards."""
    cfg = SweepConfig(front_end="abide", out=out, storage=storage, study_name=name)
    with open_storage(cfg) as opened:
        yield optuna.load_study(study_name=name, storage=opened)


def _trials(out: Path, storage: str | None = None, name: str = "abide") -> list[optuna.trial.FrozenTrial]:
    with _study(out, storage, name) as study:
        return study.get_trials()


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _worker(args: list[str], log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "pmrl_sci.sweep", *args], cwd=REPO, env=_env(),
                            stdout=handle, stderr=subprocess.STDOUT)


# -- search spaces -------------------------------------------------------------------------------------------------
def test_space_file_merges_onto_defaults_and_conditions(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("fixed:\n  epochs: 3\n  lr: 0.001\n"
                    "params:\n  dropout: null\n  embed-dim: {type: categorical, choices: [16, 32]}\n"
                    "  weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}\n")
    space = load_space(path, "abide")
    assert "dropout" not in space.params and "lr" not in space.params  # removed; fixed
    assert space.params["embed_dim"].choices == (16, 32) and space.params["weight_decay"].log
    assert space.fixed == {"epochs": 3, "lr": 0.001}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    pmrl = space.sample(study.ask(), {"objective": "pmrl"})
    gram = space.sample(study.ask(), {"objective": "gram"})
    assert {"tau1", "tau2", "lambda1"} <= set(pmrl) and "temperature" not in pmrl
    assert "temperature" in gram and "tau1" not in gram
    assert 0.01 <= gram["temperature"] <= 0.5 and pmrl["embed_dim"] in (16, 32)
    empty = tmp_path / "only.yaml"
    empty.write_text("inherit: false\nparams:\n  lr: {low: 1.0e-4, high: 1.0e-3, log: true}\n")
    assert list(load_space(empty, "houston13").params) == ["lr"]


@pytest.mark.parametrize(("text", "match"), [
    ("params:\n  lr: {type: float, low: 0.1, high: 0.01}\n", r"params\.lr: 'low' must be <= 'high'"),
    ("params:\n  lr: {type: float, low: 0, high: 1, log: true}\n", r"params\.lr: a log-scale parameter needs"),
    ("params:\n  lr: {type: floaty, low: 0, high: 1}\n", r"params\.lr: 'type' must be one of"),
    ("params:\n  lr: {low: 0.1, high: 1, lg: true}\n", r"params\.lr: unknown key\(s\) \['lg'\]"),
    ("params:\n  size: {type: categorical}\n", r"params\.size: a categorical parameter needs"),
    ("parameters: {}\n", r"unknown top-level key\(s\) \['parameters'\]"),
    ("- a\n- b\n", r"expected a mapping"),
    ("params: [\n", r"not valid YAML"),
])
def test_bad_space_files_name_the_file_and_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=match) as info:
        load_space(path, "abide")
    assert str(path) in str(info.value)


def test_options_to_argv_flags_lists_and_unknown_options() -> None:
    from pmrl_sci.abide import build_parser

    parser = build_parser()
    argv = options_to_argv({"progress": False, "quality_checked": True, "modalities": ["smri", "text"],
                            "lr": 0.001, "data-dir": None}, parser, "here")
    assert argv == ["--no-progress", "--modalities", "smri", "text", "--lr", "0.001"]
    with pytest.raises(SpaceError, match=r"here: 'embed_dims' is not an option .*did you mean embed_dim"):
        options_to_argv({"embed_dims": 16}, parser, "here")
    with pytest.raises(SpaceError, match="is a flag"):
        options_to_argv({"progress": "no"}, parser, "here")


def test_storage_specifications(tmp_path: Path) -> None:
    assert describe_storage(None, tmp_path) == ("rdb", f"sqlite:///{(tmp_path / 'study.db').resolve()}")
    assert describe_storage("journal:///tmp/x/s.log", tmp_path) == ("journal", "/tmp/x/s.log")
    assert describe_storage("runs/s.log", tmp_path) == ("journal", "runs/s.log")
    assert describe_storage("postgresql://u@h:5432/db", tmp_path) == ("rdb", "postgresql://u@h:5432/db")
    with pytest.raises(SweepError, match="expected journal"):
        describe_storage("study.db", tmp_path)


def test_front_end_options_are_checked_before_the_study(tmp_path: Path) -> None:
    space = tmp_path / "h.yaml"
    space.write_text("params:\n  dropout: {type: float, low: 0.0, high: 0.5}\n")
    with pytest.raises(SweepError, match=r"h\.yaml: searched parameter\(s\) \['dropout'\] are not options"):
        prepare(SweepConfig(front_end="houston13", out=tmp_path, space=space))
    with pytest.raises(SweepError, match="rejects the trial options"):
        prepare(SweepConfig(front_end="abide", out=tmp_path, extra=["--epochs", "many"]))
    with pytest.raises(SweepError, match="set by the sweep"):
        prepare(SweepConfig(front_end="abide", out=tmp_path, extra=["--out", "x"]))
    with pytest.raises(SystemExit):
        main(["abide", "--pruner", "threshold", "--out", str(tmp_path)])  # needs --prune-below


@pytest.mark.parametrize("front_end", ["abide", "houston13", "retrieval"])
def test_every_front_end_runs_trials_without_progress_bars_and_with_the_trial_seed(tmp_path: Path,
                                                                                  front_end: str) -> None:
    space, argv, context, _ = prepare(SweepConfig(front_end=front_end, out=tmp_path, extra=["--no-progress"]))
    assert argv[0] == "--no-progress" and context["progress"] is False
    cfg = SweepConfig(front_end=front_end, out=tmp_path, extra=["--no-progress"])
    assert fixed_options(cfg, space, context)["options"] == {}  # the progress switch does not make trials differ
    _, argv, context, _ = prepare(SweepConfig(front_end=front_end, out=tmp_path, trial_progress=True))
    assert "--no-progress" not in argv and context["progress"] is True
    with pytest.raises(SweepError, match=r"\['seed'\] are set by the sweep"):
        prepare(SweepConfig(front_end=front_end, out=tmp_path, extra=["--seed", "1"]))


def test_validation_value_never_falls_back_to_test_metrics() -> None:
    with pytest.raises(KeyError, match="validation"):
        validation_value({"auc": {"mean": 0.9}}, "retrieval")
    assert validation_value({"validation": {"metric": "oa", "mean": 0.5, "std": 0.0, "n": 1, "values": [0.5]}},
                            "houston13") == (0.5, {"metric": "oa", "mean": 0.5, "std": 0.0, "n": 1})


# -- in-process studies --------------------------------------------------------------------------------------------
def test_sweep_in_process_best_json_resume_and_seed(tmp_path: Path, abide_cache: Path) -> None:
    out = tmp_path / "sweep"
    args = ["abide", "--out", str(out), "--seed", "3", "--startup-trials", "2", "--pruner", "none",
            "--", *_abide_args(abide_cache), "--embed-dim", "16"]
    best = main(["--n-trials", "3", *args])
    with _study(out) as study:
        trials, best_number, best_value = study.get_trials(), study.best_trial.number, study.best_value
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == (out / "trials" / "abide" / f"trial-{t.number:04d}").resolve()
        assert t.user_attrs["seed"] == 0 and t.user_attrs["worker"]["pid"] == os.getpid()
        results = json.loads((run_dir / "results.json").read_text())
        assert t.value == pytest.approx(results["validation"]["mean"])  # the validation score, not the test AUC
        assert t.user_attrs["validation"]["metric"] == "auc"
        assert {"tau1", "tau2", "lambda1", "lr", "dropout"} == set(t.params)  # embed_dim fixed after --
        config = (run_dir / "config.yaml").read_text()
        assert f"lr: {t.params['lr']}" in config and "embed_dim: 16" in config
        assert len(t.intermediate_values) == 2  # one report per epoch
    saved = json.loads((out / "best.json").read_text())
    assert saved == json.loads(json.dumps(best))
    assert saved["best_trial"] == best_number and saved["validation"]["value"] == best_value
    best_results = json.loads((Path(saved["run_dir"]) / "results.json").read_text())
    assert saved["test"]["auc"] == best_results["auc"] and saved["counts"] == {"COMPLETE": 3}

    main(["--n-trials", "4", *args])  # resumes the same study up to 4 finished trials
    again = _trials(out)
    assert len(again) == 4 and [t.params for t in again[:3]] == [t.params for t in trials]

    other = tmp_path / "same-seed"
    main(["--n-trials", "3", *args[:2], str(other), *args[3:]])  # same seed, new study: same parameters
    assert [t.params for t in _trials(other)] == [t.params for t in trials]


def test_resuming_with_other_fixed_options_is_refused(tmp_path: Path, abide_cache: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    common = ["abide", "--out", str(out), "--pruner", "none"]
    one_epoch = [*_abide_args(abide_cache, epochs=1), "--embed-dim", "16"]
    main([*common, "--n-trials", "1", "--", *one_epoch])
    summary = (out / "best.json").read_text()
    assert json.loads(summary)["fixed_options"]["options"]["--epochs"] == 1
    three_epochs = [*_abide_args(abide_cache, epochs=3), "--embed-dim", "16"]
    refused = subprocess.run([sys.executable, "-m", "pmrl_sci.sweep", *common, "--n-trials", "2", "--",
                              *three_epochs], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2, refused.stderr
    assert "--epochs: 1 in the study, 3 now" in refused.stderr and "Traceback" not in refused.stderr
    assert "another --study-name or --out" in refused.stderr
    with pytest.raises(SystemExit) as info:
        main([*common, "--n-trials", "2", "--trial-seed", "1", "--", *one_epoch])
    assert info.value.code == 2 and "--trial-seed: 0 in the study, 1 now" in capsys.readouterr().err
    assert len(_trials(out)) == 1 and (out / "best.json").read_text() == summary  # nothing ran, nothing picked
    at = one_epoch.index("--epochs")
    same = [*one_epoch[:at], *one_epoch[at + 2:], "--epochs=1"]  # the same options, written otherwise
    main([*common, "--n-trials", "2", "--", *same])
    assert [t.state for t in _trials(out)] == [optuna.trial.TrialState.COMPLETE] * 2


def test_houston13_trial_reports_epochs_and_validation(tmp_path: Path) -> None:
    out = tmp_path / "h"
    best = main(["houston13", "--out", str(out), "--n-trials", "1", "--pruner", "none", "--", "--synthetic-rows",
                 "24", "--synthetic-cols", "48", "--patch-size", "5", "--batch-size", "32", "--threads", "1",
                 "--epochs", "2", "--head", "retrieval", "--embed-dim", "16"])
    (trial,) = _trials(out, name="houston13")
    results = json.loads((Path(trial.user_attrs["run_dir"]) / "results.json").read_text())
    assert results["validation"]["metric"] == "oa" and trial.value == pytest.approx(results["validation"]["mean"])
    assert len(trial.intermediate_values) == 2 and max(trial.intermediate_values.values()) == pytest.approx(trial.value)
    assert best["test"]["oa"] == results["oa"] and set(trial.params) == {"tau1", "tau2", "lambda1", "lr"}


def test_threshold_pruner_prunes_every_trial(tmp_path: Path, abide_cache: Path) -> None:
    out = tmp_path / "pruned"
    best = main(["abide", "--out", str(out), "--n-trials", "2", "--pruner", "threshold", "--prune-below", "1.5",
                 "--pruner-warmup", "0", "--report-metric", "val_accuracy", "--", *_abide_args(abide_cache),
                 "--embed-dim", "16"])
    trials = _trials(out)
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2  # accuracy never reaches 1.5
    assert all(t.user_attrs["pruned_at"]["step"] == 0 and list(t.intermediate_values) == [0] for t in trials)
    assert all(not (Path(t.user_attrs["run_dir"]) / "results.json").exists() for t in trials)
    assert best["best_trial"] is None and best["counts"] == {"PRUNED": 2}


def test_failing_trials_are_recorded_and_the_worker_goes_on(tmp_path: Path, abide_cache: Path) -> None:
    out = tmp_path / "failing"
    missing = tmp_path / "no-such-abide"
    with pytest.raises(SystemExit) as info:
        main(["abide", "--out", str(out), "--n-trials", "3", "--max-failures", "2", "--",
              *_abide_args(abide_cache), "--data-dir", str(missing)])
    assert info.value.code == 1
    trials = _trials(out)
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2  # went on after the first failure
    assert all(str(missing) in t.user_attrs["error"] and "does not exist" in t.user_attrs["error"] for t in trials)
    assert not (out / "best.json").exists()


def test_dead_local_worker_trials_fail_on_journal_storage(tmp_path: Path) -> None:
    cfg = SweepConfig(front_end="abide", out=tmp_path, storage=str(tmp_path / "j.log"))
    study = optuna.create_study(study_name="j", storage=make_storage(cfg), direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone, alive = study.ask(), study.ask()
    gone.set_user_attr("worker", {"host": os.uname().nodename, "pid": dead.pid})
    alive.set_user_attr("worker", {"host": os.uname().nodename, "pid": os.getpid()})
    assert fail_dead_local_trials(study) == [gone.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {gone.number: optuna.trial.TrialState.FAIL, alive.number: optuna.trial.TrialState.RUNNING}
    assert "stopped mid-trial" in study.get_trials()[gone.number].user_attrs["error"]


# -- several workers -----------------------------------------------------------------------------------------------
def _check_trials(trials: list[optuna.trial.FrozenTrial], n_trials: int) -> list[optuna.trial.FrozenTrial]:
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == n_trials
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == len(trials)  # every trial recorded once, in its own folder
    for t in finished:
        assert {"run_dir", "seed", "worker", "argv"} <= set(t.user_attrs)
        assert t.state != optuna.trial.TrialState.COMPLETE or (Path(t.user_attrs["run_dir"]) / "results.json").is_file()
    return trials


# two worker processes importing torch: about 40 s on 2 busy cores, part of the default suite (the issue asks for it)
def test_two_workers_on_a_journal_file_then_resume(tmp_path: Path, abide_cache: Path) -> None:
    out, journal = tmp_path / "sweep", tmp_path / "study.log"
    args = ["abide", "--out", str(out), "--storage", f"journal://{journal}", "--n-trials", "3", "--pruner", "none",
            "--", *_abide_args(abide_cache, epochs=5), "--embed-dim", "16"]
    workers = [_worker(args, tmp_path / f"worker{i}.log") for i in range(2)]
    codes = [w.wait(timeout=600) for w in workers]  # about 100 s on 2 cores loaded by other processes
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    trials = _check_trials(_trials(out, f"journal://{journal}"), 3)
    assert len(trials) == 3 or all(t.user_attrs.get("surplus") for t in trials[3:])
    assert all("finished" in log for log in logs)
    main([*args[:6], "4", *args[7:]])  # a rerun with a larger --n-trials resumes the same study
    assert [t.number for t in _check_trials(_trials(out, f"journal://{journal}"), 4)][:3] == [t.number for t in trials]
    assert json.loads((out / "best.json").read_text())["counts"]["COMPLETE"] == 4


# -- PostgreSQL storage --------------------------------------------------------------------------------------------
class _Database:
    """A database of its own on the test server: ``url`` connects as its owner ``role``; ``admin`` as superuser."""

    def __init__(self, url: str, role: str, admin: object) -> None:
        self.url, self.role, self.admin = url, role, admin

    def connections(self) -> int:
        """Server connections of the role (the sweep's) now open."""
        with self.admin.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (self.role,))
            return int(cursor.fetchone()[0])


@contextlib.contextmanager
def _scratch_database(server_url: str, connection_limit: int = -1) -> Iterator[_Database]:
    """A new database owned by a new role that the server lets open ``connection_limit`` connections (-1: any)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    name = f"sweep_{uuid.uuid4().hex[:12]}"
    dsn = f"host={server.host} port={server.port} user={server.username}"
    with contextlib.closing(psycopg2.connect(f"{dsn} dbname={server.database}")) as setup:
        setup.autocommit = True
        with setup.cursor() as cursor:
            cursor.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT {int(connection_limit)}")
            cursor.execute(f"CREATE DATABASE {name} OWNER {name}")
        try:
            with contextlib.closing(psycopg2.connect(f"{dsn} dbname={name}")) as admin:
                admin.autocommit = True
                url = server.set(username=name, database=name).render_as_string(hide_password=False)
                yield _Database(url, name, admin)
        finally:
            with setup.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                cursor.execute(f"DROP ROLE IF EXISTS {name}")


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Check ``condition`` every 0.1 s until it holds; fail after ``timeout`` seconds saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


def test_postgres_sweep_holds_a_bounded_number_of_connections(tmp_path: Path, abide_cache: Path,
                                                               postgres_url: str) -> None:
    """A worker needs at most MAX_CONNECTIONS server connections however many trials (and heartbeat threads) it
    runs, and closes them when it stops: the sweep's role may open no more, and with the garbage collector off
    nothing but the sweep itself closes them. Run twice in one process (a resume), as a notebook or test would."""
    out = tmp_path / "sweep"
    with _scratch_database(postgres_url, connection_limit=MAX_CONNECTIONS) as db:
        args = ["abide", "--out", str(out), "--storage", db.url, "--pruner", "none", "--heartbeat", "1",
                "--", *_abide_args(abide_cache), "--embed-dim", "16"]
        gc.disable()
        try:
            for n_trials in (4, 8):
                main(["--n-trials", str(n_trials), *args])
                # the sockets are closed when main() returns; the server's backends end a moment later
                _wait_until(lambda: db.connections() == 0, 60, f"the connections to close after {n_trials} trials")
        finally:
            gc.enable()
        trials = _trials(out, db.url)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 8


_NOTIFY_TRIAL_ATTRIBUTES = """
CREATE FUNCTION notify_trial_attribute() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('trial_attribute', NEW.trial_id || ' ' || NEW.key);
    RETURN NEW;
END $$;
CREATE TRIGGER notify_trial_attribute AFTER INSERT OR UPDATE ON trial_user_attributes
    FOR EACH ROW EXECUTE FUNCTION notify_trial_attribute();
LISTEN trial_attribute;
"""


def _next_notification(connection: object, deadline: float, worker: subprocess.Popen, log: Path) -> str:
    """The next notification's payload on ``connection``, waited for until ``deadline`` while ``worker`` lives."""
    while not connection.notifies:
        assert worker.poll() is None, f"the worker stopped (exit code {worker.returncode}):\n{log.read_text()}"
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no notification from the worker in time:\n{log.read_text()}"
        select.select([connection], [], [], min(remaining, 1.0))
        connection.poll()
    return connection.notifies.pop(0).payload


def test_postgres_workers_and_a_killed_worker(tmp_path: Path, abide_cache: Path, postgres_url: str) -> None:
    """A worker killed mid-trial: the next worker fails its trial through the missing heartbeat and re-runs it.

    No polling and no timing assumptions: a trigger on optuna's trial attributes notifies the test when the
    first worker's trial has started; the test stops that worker, checks that the trial is still running (else
    lets it go on to its next trial), kills it, and only then starts the second worker.
    """
    out = tmp_path / "sweep"
    with _scratch_database(postgres_url) as db:
        plain = db.url.replace("postgresql+psycopg2://", "postgresql://")  # as users type it; the driver is found
        args = ["abide", "--out", str(out), "--storage", plain, "--study-name", "pg", "--n-trials", "3",
                "--pruner", "none", "--heartbeat", "1", "--grace", "3", "--poll", "0.5",
                "--", *_abide_args(abide_cache, epochs=20), "--embed-dim", "16"]
        with open_storage(SweepConfig(front_end="abide", out=out, storage=db.url, study_name="pg")):
            pass  # creates optuna's tables, to put the trigger on
        with db.admin.cursor() as cursor:
            cursor.execute(_NOTIFY_TRIAL_ATTRIBUTES)
        victim_log = tmp_path / "victim.log"
        victim = _worker(args, victim_log)
        killed = None
        try:
            deadline = time.monotonic() + 300
            while killed is None:
                trial_id, key = _next_notification(db.admin, deadline, victim, victim_log).split()
                if key != "argv":  # recorded when the trial's options are known, just before the front end runs
                    continue
                victim.send_signal(signal.SIGSTOP)
                _, status = os.waitpid(victim.pid, os.WUNTRACED)  # returns once it is stopped
                assert os.WIFSTOPPED(status), victim_log.read_text()
                with db.admin.cursor() as cursor:
                    cursor.execute("SELECT number, state FROM trials WHERE trial_id = %s", (int(trial_id),))
                    number, state = cursor.fetchone()
                if state == "RUNNING":
                    victim.send_signal(signal.SIGKILL)
                    killed = number
                else:  # it finished that trial before it stopped: let it start the next one
                    victim.send_signal(signal.SIGCONT)
        finally:
            if victim.poll() is None:
                victim.kill()
            victim.wait(timeout=60)
        survivor_log = tmp_path / "survivor.log"
        survivor = _worker(args, survivor_log)
        try:
            code = survivor.wait(timeout=600)
        finally:
            if survivor.poll() is None:
                survivor.kill()
                survivor.wait(timeout=60)
        assert code == 0, survivor_log.read_text()
        trials = _check_trials(_trials(out, db.url, name="pg"), 3)
    by_number = {t.number: t for t in trials}
    assert by_number[killed].state == optuna.trial.TrialState.FAIL  # failed through the missing heartbeat
    assert "error" not in by_number[killed].user_attrs  # not an exception: the worker died
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed]  # re-queued by the heartbeat
    assert len(retried) == 1 and retried[0].params == by_number[killed].params
    assert retried[0].state == optuna.trial.TrialState.COMPLETE
    best = json.loads((out / "best.json").read_text())
    assert best["counts"]["COMPLETE"] == 3 and "postgres" in best["storage"]


@pytest.mark.parametrize("space", sorted((Path(__file__).parents[1] / "experiments" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_space_files_are_valid_for_their_front_end(tmp_path: Path, space: Path) -> None:
    front_end = space.name.split("_")[0]
    prepare(SweepConfig(front_end=front_end, out=tmp_path, space=space))  # raises on any unknown or bad option


def test_steps_align_units_across_trials_whatever_early_stopping_did() -> None:
    from pmrl_sci.sweep.trials import EpochReporter

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    early, late = EpochReporter(study.ask(), "val_auc"), EpochReporter(study.ask(), "val_auc")
    for epoch in range(3):  # stopped early on the first fold
        early("seed0-fold0", epoch, {"val_auc": 0.6}, 10)
    for epoch in range(10):  # ran its whole budget
        late("seed0-fold0", epoch, {"val_auc": 0.7}, 10)
    early("seed0-fold1", 0, {"val_auc": 0.5}, 10)
    late("seed0-fold1", 0, {"val_auc": 0.55}, 10)
    # both trials report the second fold's first epoch at step 10 (counting epochs run would put it at 3 and 10)
    assert max(study.trials[early.trial.number].intermediate_values) == 10
    assert early.step_of("seed0-fold1", 1, 10) == late.step_of("seed0-fold1", 1, 10) == 11
    assert early.step_of("seed0-fold1", 0, 10) == 20  # a unit that starts over (another phase) gets a new block
    assert early.step_of("seed0-fold2", 0, 10) == 30


def test_median_pruner_compares_the_same_fold_and_epoch() -> None:
    from pmrl_sci.sweep.trials import EpochReporter

    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    done = EpochReporter(study.ask(), "val_auc")  # a finished trial: fold 0 rising to 0.9, fold 1 starting at 0.55
    for epoch, auc in enumerate([0.3, 0.65, 0.9, 0.9, 0.9]):
        done("seed0-fold0", epoch, {"val_auc": auc}, 5)
    done("seed0-fold1", 0, {"val_auc": 0.55}, 5)
    study.tell(done.trial, 0.9)
    fast = EpochReporter(study.ask(), "val_auc")  # level with it on fold 0, stopped after 2 epochs
    for epoch, auc in enumerate([0.4, 0.7]):
        fast("seed0-fold0", epoch, {"val_auc": auc}, 5)
    # compared with fold 1's first epoch (0.55), not with fold 0's third (0.9), which would prune it
    fast("seed0-fold1", 0, {"val_auc": 0.6}, 5)
    assert list(study.trials[fast.trial.number].intermediate_values) == [0, 1, 5]
    slow = EpochReporter(study.ask(), "val_auc")
    slow("seed0-fold0", 0, {"val_auc": 0.4}, 5)
    with pytest.raises(optuna.TrialPruned):
        slow("seed0-fold1", 0, {"val_auc": 0.5}, 5)  # below fold 1's median at the same epoch

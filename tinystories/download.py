"""The TinyStories archive from the Hugging Face Hub, checked: what --source hf reads.

    --url {endpoint}/datasets/{repo}/resolve/{revision}/{file}
          (default https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories_all_data.tar.gz)
      --> <--cache-dir>/{file}, and <that>.sha256 recording its checksum

huggingface_hub does the transfer (`hf_hub_download` into --cache-dir): it resumes a connection
that breaks off with Range requests, copies the file from the shared Hugging Face cache (HF_HOME)
when it is already there, and honours HF_TOKEN, HF_HUB_OFFLINE and, for the default --url,
HF_ENDPOINT (a mirror). We check what it gives us:
  size    --size, or the published size for the default --url: against the server's answer
          before downloading, and against the file after
  sha256  against --sha256 when given, else against <archive>.sha256, which records it after the
          first complete download
  tar     the archive reads through to the end
A cached archive is used without network. A download that fails a check is deleted (a cached one
is kept and named in the error). When the server cannot be contacted at all, `Unreachable` lets
the caller fall back to local data.
"""
import hashlib
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from .config import HF_ARCHIVE_URL
from .errors import BadInput
from .formats import atomic_write
from .sources import Source, archive_source, one_line

CONNECT_TIMEOUT = 15  # seconds to wait for the server's answer


class Unreachable(Exception):
    """The archive server could not be contacted at all."""


@dataclass
class HubFile:
    """A file in a dataset repository of a Hugging Face Hub."""
    url: str  # as given by --url, for messages
    endpoint: str | None  # None: huggingface_hub's own (HF_ENDPOINT, else huggingface.co)
    repo_id: str
    revision: str
    filename: str


def hub_file(url: str) -> HubFile:
    """--url split into the parts hf_hub_download takes."""
    match = re.fullmatch(r"(https?://[^/]+)/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", url)
    if match is None:
        raise BadInput(f"--url {url}: not a Hugging Face dataset file address "
                       "(https://HOST/datasets/OWNER/NAME/resolve/REVISION/FILE)")
    endpoint, repo_id, revision, filename = match.groups()
    return HubFile(url, None if url == HF_ARCHIVE_URL else endpoint, repo_id,
                   urllib.parse.unquote(revision), urllib.parse.unquote(filename))


def fetch_archive(url: str, folder: Path, expected_size: int | None, sha256: str | None) -> tuple[str, Source]:
    """The checked archive of --url, downloaded into `folder` unless already there: (sha256, source)."""
    file = hub_file(url)
    archive = folder / file.filename
    sidecar = archive.with_name(archive.name + ".sha256")
    recorded = (sidecar.read_text().split() or [None])[0] if sidecar.exists() else None
    if archive.exists():
        digest = check_archive(archive, expected_size, sha256)
        if sha256 is None and recorded is not None and digest != recorded:
            raise BadInput(f"{archive}: sha256 {digest} differs from the one recorded at download ({sidecar}): "
                           "the file changed; delete it to download it again")
        source = archive_source(archive)
    else:
        download(file, folder, expected_size)
        try:
            digest = check_archive(archive, expected_size, sha256)
            source = archive_source(archive)
        except BadInput:
            archive.unlink()
            raise
    if recorded != digest:
        with atomic_write(sidecar) as f:
            f.write(f"{digest}  {archive.name}\n".encode())
    return digest, source


def download(file: HubFile, folder: Path, expected_size: int | None) -> None:
    """Fetch `file` into `folder` with huggingface_hub, once the server has confirmed its size."""
    size = remote_size(file)
    if expected_size is not None and size is not None and size != expected_size:
        raise BadInput(f"--url {file.url}: the server's file has {size} bytes, expected {expected_size} (--size)")
    start = time.time()
    print(f"downloading {file.url}\n  to {folder / file.filename}")
    try:
        hf_hub_download(file.repo_id, file.filename, repo_type="dataset", revision=file.revision,
                        endpoint=file.endpoint, local_dir=folder, etag_timeout=CONNECT_TIMEOUT)
    except (OSError, httpx2.HTTPError) as e:
        raise BadInput(f"--url {file.url}: the download broke off ({one_line(e)}); run again to retry") from None
    print(f"downloaded {(folder / file.filename).stat().st_size:,} bytes in {time.time() - start:.0f} s")


def remote_size(file: HubFile) -> int | None:
    """The file's size as the server reports it. Unreachable when no connection is made."""
    url = hf_hub_url(file.repo_id, file.filename, repo_type="dataset", revision=file.revision, endpoint=file.endpoint)
    try:
        return get_hf_file_metadata(url, timeout=CONNECT_TIMEOUT).size
    except HfHubHTTPError as e:
        raise BadInput(f"--url {file.url}: {one_line(e)}") from None
    except (httpx2.TransportError, OfflineModeIsEnabled) as e:
        host = urllib.parse.urlparse(file.endpoint or constants.ENDPOINT).netloc
        where = "Hugging Face" if host == "huggingface.co" else host
        raise Unreachable(f"{where} could not be reached ({one_line(e)})") from None


def check_archive(path: Path, expected_size: int | None, expected_sha256: str | None) -> str:
    """Size and sha256 of an archive against what is expected; returns its sha256."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise BadInput(f"{path}: {size:,} bytes, expected {expected_size:,}: incomplete or not the TinyStories "
                       "archive (delete it to download it again)")
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise BadInput(f"{path}: sha256 {digest} does not match the expected {expected_sha256}")
    return digest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()

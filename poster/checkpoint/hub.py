"""Fetching the official weights on first use: download, verify, record, lock.

``ensure_release(release)`` returns the local file of a release, downloading the authors' file into
``$POSTER_WEIGHTS`` (default ``~/.cache/poster/weights``) when it is not there yet, the way
torchvision and timm fetch their weights:

* the download goes through gdown (Google Drive's large-file confirmation page and folder listing)
  into a staging file beside the target, with a progress bar; gdown retries a cut connection
  with a ranged request, and a download killed outright is resumed by the next call;
* before it is kept, the file is checked: an HTML page (Drive's quota or permission pages), a
  truncated file or weights of another architecture are deleted and the error says which;
* the SHA-256 of what was fetched is written beside it (``<file>.sha256``, ``sha256sum`` format)
  and checked on every later use; the authors publish no hashes, so the first download is
  trusted as served (compare it with a hash you obtained yourself: ``poster weights list``);
* a file lock (``.locks/<file>.lock`` in the cache) makes a second process wait for the first instead of fetching
  the same file twice;
* ``POSTER_OFFLINE=1`` (``poster --offline``) forbids any network access; the error then names the
  release, its URL and the exact path to save a hand download as.

``POSTER_GDRIVE_ORIGIN`` (tests only) sends every Google Drive request to a loopback HTTP server
that plays the part of Google Drive; it refuses any host but the loopback interface.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Iterator, NamedTuple

from ..errors import CheckpointError, WeightsUnavailable, flag_words, option
from ..fileio import atomic_write_text
from ..models import create_model
from ..models.irse import IR50Trunk
from ..models.mobilefacenet import MobileFaceNet
from .checked import load_backbone_state, load_state_dict_checked
from .formats import WeightFile, read_weight_file
from .releases import BUNDLED_RELEASE, RELEASES, Release, bundled_model_path, local_release_file, release_path, weights_dir

log = logging.getLogger(__name__)

_GOOGLE_HOSTS = ("https://drive.google.com", "https://drive.usercontent.google.com", "https://docs.google.com")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _offline_switch() -> str:
    """What turned fetching off: the environment variable, or on the command line also its flag."""
    return f"POSTER_OFFLINE=1 or {option('offline')}" if flag_words() else "POSTER_OFFLINE=1"


def is_offline() -> bool:
    return os.environ.get("POSTER_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------------
# Public entry points


def ensure_release(release: Release, *, fetch: bool = True, progress: bool = True) -> Path:
    """The release's local file, fetched first when missing; its recorded hash is checked."""
    local = local_release_file(release)
    if local is not None:
        check_recorded_hash(local, release)
        return local
    if not fetch or is_offline():
        why = f"offline ({_offline_switch()})" if is_offline() else "fetching is turned off"
        raise WeightsUnavailable(f"{release.name}: not in {weights_dir()} and {why}; download "
                                 f"{_hand_download_hint(release)}")
    return download_release(release, progress=progress)


def download_release(release: Release, *, progress: bool = True) -> Path:
    """Fetch, verify and keep the release's file (once, even with several processes at it)."""
    if is_offline():
        raise WeightsUnavailable(f"{release.name}: downloading is forbidden offline ({_offline_switch()}); "
                                 f"download {_hand_download_hint(release)}")
    target = release_path(release)
    with _writable_cache(release), _exclusive_lock(target):
        if target.is_file():  # another process fetched it while this one waited for the lock
            check_recorded_hash(target, release)
            return target
        staging = target.with_name(target.name + ".incoming")
        _clear_untrusted_leftovers(staging)
        try:
            log.info("fetching %s (the authors' %s) from %s into %s", release.name, release.file_name,
                     release.source.url, target)
            _fetch(release, staging, progress)
            if staging.is_symlink():
                raise CheckpointError(f"{release.name}: {staging} became a symbolic link while downloading; deleted")
            verify_file(staging, release)
            digest = sha256_of(staging)
            os.replace(staging, target)
            record_hash(target, digest)
        except KeyboardInterrupt:
            raise  # gdown's partial file stays, so the next call resumes the transfer
        except BaseException:
            _remove_partials(target)
            raise
    log.info("%s: kept %s (sha256 %s, recorded in %s)", release.name, target, digest, hash_file(target).name)
    return target


def verify_file(path: Path, release: Release, *, fresh: bool = True) -> None:
    """Refuse a file that is not this release's weights: HTML, unreadable/truncated, wrong keys.
    ``fresh``: a download about to be deleted on failure (the message says so)."""
    what, fate = ("the downloaded file", "; deleted") if fresh else (str(path), "")
    _refuse_html(path, release, what, fate)
    try:
        wf = read_weight_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"{release.name}: {what} is not a readable checkpoint, truncated or damaged"
                              f"{fate} ({e})") from None
    try:
        _check_fits(wf, release)
    except CheckpointError as e:
        raise CheckpointError(f"{release.name}: {what} holds other weights{fate} ({e})") from None


# ---------------------------------------------------------------------------------------------
# Hashes


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def record_hash(path: Path, digest: str) -> None:
    atomic_write_text(hash_file(path), f"{digest}  {path.name}\n")  # the format of sha256sum -c


def recorded_hash(path: Path) -> str | None:
    sidecar = hash_file(path)
    if not sidecar.is_file():
        return None
    text = sidecar.read_text(encoding="utf-8", errors="replace").split()
    return text[0].lower() if text and re.fullmatch(r"[0-9a-fA-F]{64}", text[0]) else ""


def check_recorded_hash(path: Path, release: Release) -> str:
    """The file's SHA-256, which must equal the one recorded when it was fetched.  A file put into
    the cache by hand has none yet: its hash is recorded now (trusted as given)."""
    digest = sha256_of(path)
    recorded = recorded_hash(path)
    if recorded is None:
        if path.parent.resolve() == weights_dir().resolve():
            verify_file(path, release, fresh=False)  # placed by hand: an HTML page or other weights is named now
            try:
                record_hash(path, digest)
            except OSError as e:  # a read-only shared cache: usable, checked as given on every use
                log.warning("%s: cannot record the sha256 of %s (%s); it is used as given", release.name, path,
                            e.strerror or e)
                return digest
            log.info("%s: recorded sha256 %s of %s (placed by hand; trusted as given)", release.name, digest, path)
        return digest
    if recorded != digest:
        raise CheckpointError(
            f"{release.name}: {path} has changed since it was fetched (sha256 {digest}, recorded "
            f"{recorded or 'unreadable'} in {hash_file(path)}); delete both files to fetch it again")
    return digest


# ---------------------------------------------------------------------------------------------
# Download


def _hand_download_hint(release: Release) -> str:
    where = release.source.url
    if release.source.kind == "gdrive_folder":
        where += f" (the file {release.file_name} in that folder)"
    return f"{where} by hand and save it as {release_path(release)}"


def _timeout() -> tuple[float, float]:
    """(connect, read) seconds: a stalled server is given up on instead of hanging forever."""
    read = float(os.environ.get("POSTER_DOWNLOAD_TIMEOUT", "60"))
    return (min(15.0, read), read)


def _retries() -> int:
    return int(os.environ.get("POSTER_DOWNLOAD_RETRIES", "3"))


def _fetch(release: Release, staging: Path, progress: bool) -> None:
    import gdown
    import requests

    url = release.source.url
    try:
        with _google_routing():
            file_id = release.source.id
            if release.source.kind == "gdrive_folder":
                file_id = _find_in_folder(release)
            elif release.source.kind != "gdrive_file":
                raise CheckpointError(f"{release.name}: has no download source")
            with _retry_notes_to_debug_log():
                gdown.download(f"https://drive.google.com/uc?id={file_id}", str(staging), quiet=not progress,
                               use_cookies=False, resume=True, timeout=_timeout(), retries=_retries())
    except (gdown.exceptions.FileURLRetrievalError, gdown.exceptions.DownloadError,
            requests.exceptions.RequestException, OSError) as e:
        # one line, the way out first: the cause is often just "no network"
        raise WeightsUnavailable(f"{release.name}: download {_hand_download_hint(release)}; fetching it "
                                 f"failed: {_network_reason(e)}") from None
    if not staging.is_file():
        raise WeightsUnavailable(f"{release.name}: the download from {url} produced no file")


def _find_in_folder(release: Release) -> str:
    """The Drive id of the release's file, from a listing of the authors' Drive folder."""
    import gdown

    listing = gdown.download_folder(id=release.source.id, skip_download=True, quiet=True, use_cookies=False,
                                    timeout=_timeout())
    by_name = {Path(entry.path).name: entry.id for entry in listing or []}
    for name in release.file_names:
        if name in by_name:
            return by_name[name]
    raise WeightsUnavailable(f"{release.name}: none of {list(release.file_names)} is in the folder "
                             f"{release.source.url} (it holds {sorted(by_name)})")


class _RetryNoteFilter:
    """``sys.stderr`` while gdown downloads: its "Retrying (1/3) in 0.3s: <the whole urllib3 error>"
    lines go to the debug log (``-v``); everything else (the progress bar) passes through."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self._after_note = False

    def write(self, text: str) -> int:
        if text.startswith("Retrying ("):
            log.debug("%s", text.strip())
            self._after_note = True  # print() writes its end="\n" separately
            return len(text)
        if self._after_note and text == "\n":
            self._after_note = False
            return len(text)
        self._after_note = False
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def _retry_notes_to_debug_log() -> Iterator[None]:
    before = sys.stderr
    sys.stderr = _RetryNoteFilter(before)
    try:
        yield
    finally:
        sys.stderr = before


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what lies under it: causes, contexts, urllib3's ``reason`` and exception args."""
    seen, queue = set(), [error]
    while queue and len(seen) < 20:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        below = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        queue.extend(e for e in below if isinstance(e, BaseException))


def _network_reason(error: BaseException) -> str:
    """A short cause of a failed download: no name resolution, refused, timed out, or the
    message itself (Google Drive's, say), cut to one short line."""
    import requests

    text = str(error)
    host = re.search(r"host='([^']+)'", text)
    where = host.group(1) if host else "the server"
    for cause in _causes(error):
        name = type(cause).__name__
        if name in ("NameResolutionError", "gaierror"):
            return f"{where} could not be resolved (no network?)"
        if isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(cause):
            return f"{where} refused the connection"
        if isinstance(cause, (requests.exceptions.Timeout, TimeoutError)) or name in ("ReadTimeoutError",
                                                                                        "ConnectTimeoutError"):
            return f"{where} did not answer within {_timeout()[1]:g} s (POSTER_DOWNLOAD_TIMEOUT)"
        if isinstance(cause, requests.exceptions.SSLError):
            return f"the TLS connection to {where} failed (a proxy or firewall?)"
    # gdown's "the partial file is preserved" is not so here: a failed fetch removes it (_remove_partials)
    return _one_line(re.sub(r";?\s*the partial file is preserved\.?", "", str(error)) or type(error).__name__, 160)


@contextlib.contextmanager
def _writable_cache(release: Release) -> Iterator[None]:
    """The weights folder, created; a file there, or a folder this user cannot write, is one line."""
    folder = weights_dir()
    try:
        if folder.exists() and not folder.is_dir():
            problem = "it is a file, not a folder"
        else:
            folder.mkdir(parents=True, exist_ok=True)
            problem = None if os.access(folder, os.W_OK | os.X_OK) else "this user cannot write there"
    except OSError as e:
        problem = e.strerror or str(e)
    if problem:
        raise WeightsUnavailable(f"{release.name}: cannot download into {folder} (POSTER_WEIGHTS): {problem}; "
                                 f"set POSTER_WEIGHTS to a writable folder, or download {_hand_download_hint(release)}")
    yield


def _clear_untrusted_leftovers(staging: Path) -> None:
    """Before a fetch: a complete ``.incoming`` left behind (a run killed between download and check,
    or a file planted under that name) would be taken by gdown as already downloaded, so it goes; a
    symbolic link among gdown's partial files would have the download written through it, so it goes
    (the link, never its target).  A real partial file stays, for gdown to resume."""
    for leftover in [staging, *staging.parent.glob(f"{glob_escape(staging.name)}*.part")]:
        if leftover == staging or leftover.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                log.info("removed %s left in the cache before fetching again", leftover)


def _one_line(error: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _remove_partials(target: Path) -> None:
    """The staging file and gdown's ``.part`` files of this target: nothing half-fetched is left."""
    for leftover in target.parent.glob(f"{glob_escape(target.name)}.incoming*"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _refuse_html(path: Path, release: Release, what: str, fate: str) -> None:
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        raise CheckpointError(f"{release.name}: {what} is empty{fate}")
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<!--")):
        title = re.search(rb"<title[^>]*>(.*?)</title>", head, re.I | re.S)
        shown = f" ('{' '.join(title.group(1).decode('utf-8', 'replace').split())[:120]}')" if title else ""
        raise CheckpointError(
            f"{release.name}: {what} is an HTML page{shown}, not the weights: the server sent an HTML page "
            f"(Google Drive does this when the file's download quota is exceeded or it is not shared){fate}. "
            f"Try later, or download {_hand_download_hint(release)}")


def _check_fits(wf: WeightFile, release: Release) -> None:
    """The strict key/shape check of the model (or backbone) the release is for."""
    if release.kind == "model":
        if wf.kind == "landmark":
            raise CheckpointError(f"{wf.path}: a MobileFaceNet landmark file, not a {release.arch} model")
        model = create_model(release.arch, num_classes=release.num_classes, **dict(release.arch_options))
        load_state_dict_checked(model, wf.state_dict, Path(wf.path).name)
    elif release.kind == "ir50":  # the trunk in the file's own layout: face.evoLVe's body.N or V2's body1-3
        trunk = IR50Trunk(split_stages=not any(k.startswith("body.") for k in wf.state_dict))
        load_backbone_state(trunk, "ir50", wf.state_dict, wf.path)
    elif release.kind == "landmark":
        load_backbone_state(MobileFaceNet(136), "landmark", wf.state_dict, wf.path)


@contextlib.contextmanager
def _exclusive_lock(target: Path) -> Iterator[None]:
    """Hold ``.locks/<target>.lock`` (flock): a second process fetching the same file waits here.
    Lock files are never deleted (that would let two processes lock different files); they live in
    a folder of their own so that the cache holds nothing but weights and their hashes."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent fetches then each write their own staging file
        yield
        return
    locks = target.parent / ".locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{target.name}.lock", "a+b") as handle:
        if not _try_lock(fcntl, handle):
            print(f"poster: waiting for another process fetching {target.name}", file=sys.stderr)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _try_lock(fcntl, handle) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


# ---------------------------------------------------------------------------------------------
# Test routing: Google Drive played by a loopback server


@contextlib.contextmanager
def _google_routing() -> Iterator[None]:
    """With ``POSTER_GDRIVE_ORIGIN`` set, the sessions gdown opens send Google Drive's hosts to it."""
    origin = os.environ.get("POSTER_GDRIVE_ORIGIN", "").strip()
    if not origin:
        yield
        return
    parsed = urllib.parse.urlparse(origin)
    if parsed.scheme != "http" or parsed.hostname not in _LOOPBACK:
        raise CheckpointError(f"POSTER_GDRIVE_ORIGIN={origin!r}: only an http:// loopback origin is allowed "
                              "(it exists for tests)")
    import requests
    from requests.adapters import HTTPAdapter

    class LoopbackAdapter(HTTPAdapter):
        def send(self, request, *args, **kwargs):
            url = urllib.parse.urlparse(request.url)
            request.headers["X-Original-Host"] = url.hostname or ""
            request.url = urllib.parse.urlunparse(url._replace(scheme="http", netloc=parsed.netloc))
            return super().send(request, *args, **kwargs)

    def routed_session() -> requests.Session:
        session = requests.Session()
        for prefix in _GOOGLE_HOSTS:
            session.mount(prefix, LoopbackAdapter())
        return session

    original = requests.session
    requests.session = routed_session
    try:
        yield
    finally:
        requests.session = original


class Resolved(NamedTuple):
    path: Path  # the file to read
    release: Release | None  # the official release it is, whose record is the truth about it


def resolve(path_or_name: str | os.PathLike, *, fetch: bool = True) -> Resolved:
    """A file path as given, or the file of a release name (fetched on first use unless ``fetch`` is
    False or ``POSTER_OFFLINE=1``, and checked against its recorded SHA-256) with its record; a
    clear error otherwise.  The bundled model comes without a record: its file holds its metadata."""
    path = Path(path_or_name)
    if path.is_file():
        return Resolved(path, None)
    if str(path_or_name) == BUNDLED_RELEASE:
        return Resolved(bundled_model_path(), None)
    release = RELEASES.get(str(path_or_name))
    if release is not None:
        return Resolved(ensure_release(release, fetch=fetch), release)
    if path.exists():
        raise CheckpointError(f"{path}: is not a file")
    raise CheckpointError(f"{path}: no such file (and not a release name: {', '.join([BUNDLED_RELEASE, *RELEASES])})")


def resolve_weights(path_or_name: str | os.PathLike, *, fetch: bool = True) -> Path:
    """The file of a path or release name (``resolve`` without the record)."""
    return resolve(path_or_name, fetch=fetch).path

"""Upload an export folder to the Hub, and download a repository back (the only network code of the project).

Upload is ``create_repo`` (``exist_ok=True``) + ``create_branch`` when a branch other than main is asked for +
``upload_folder``. The token comes from the caller, ``HF_TOKEN`` or the saved ``hf auth login``; it is handed to
huggingface_hub and nowhere else: never logged, printed or written, and scrubbed from any error message.
Download needs no code of ours (``from_pretrained(repo_id, trust_remote_code=True)``); :func:`pull_model` is a
thin ``snapshot_download`` for scripts that want the files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class PushError(RuntimeError):
    """An upload failed (authentication, permissions, network, missing repository); the message says which."""


def validate_repo_id(repo_id: str) -> None:
    """Refuse anything that is not ``name`` or ``owner/name`` as the Hub accepts it."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as _validate

    if not isinstance(repo_id, str) or repo_id.count("/") > 1:
        raise ValueError(f"invalid repo id {repo_id!r}: use OWNER/NAME (e.g. my-user/my-gpt)")
    try:
        _validate(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"invalid repo id {repo_id!r}: use OWNER/NAME with letters, digits, '-', '_' or '.' "
            f"(no '--' or '..', at most 96 characters) [{err}]"
        ) from None


def resolve_token(token: str | None = None) -> str:
    """The token to use: the argument, else ``HF_TOKEN``, else the saved login; a clear error when none."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()  # HF_TOKEN, then the file written by `hf auth login`
    if not found:
        raise ValueError(
            "no Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass --token "
            "(a write token from https://huggingface.co/settings/tokens)"
        )
    return found


# Loggers that print request or response headers at DEBUG (huggingface_hub 2.x speaks httpx2 / httpcore2).
HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "requests", "huggingface_hub.utils._http")


def silence_http_loggers() -> None:
    """Keep HTTP request/response headers out of the log, even under ``-v``: WARNING on every HTTP logger."""
    roots = {name.split(".")[0] for name in HTTP_LOGGERS[:-1]}
    names = set(HTTP_LOGGERS) | {name for name in logging.root.manager.loggerDict if name.split(".")[0] in roots}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def _check_folder(folder: Path) -> list[Path]:
    """The files of an export folder, each readable; clear errors for anything else."""
    from scratch_gpt.run_folder import CONFIG_FILE, MODEL_CARD_FILE  # here: pull_model must work without our package

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; run `scratch-gpt export MODEL {folder}` first")
    missing = [name for name in (CONFIG_FILE, MODEL_CARD_FILE) if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"{folder} does not look like an export (missing {', '.join(missing)}); "
            f"create it with `scratch-gpt export MODEL {folder}`"
        )
    if folder.name.startswith(".") and (".tmp-" in folder.name or ".staging-" in folder.name):
        raise ValueError(f"{folder} is an unfinished export; export again")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    unreadable = [p for p in files if not os.access(p, os.R_OK)]
    if unreadable:
        raise PermissionError(
            f"cannot read {unreadable[0]}: permission denied; make the export readable (chmod -R u+r {folder})"
        )
    return files


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload ``folder`` to the model repository ``repo_id``; returns the commit URL.

    Creates the repository (and the branch ``revision``) when missing. Raises ``ValueError`` for bad input
    (repo id, folder, no token), ``PermissionError`` for an unreadable file, and :class:`PushError` with a plain
    explanation for every failure on the way; no message ever carries the token.
    """
    from huggingface_hub import HfApi

    silence_http_loggers()
    validate_repo_id(repo_id)
    folder = Path(folder)
    files = _check_folder(folder)
    tok = resolve_token(token)
    api = HfApi(endpoint=endpoint, token=tok)
    branch = revision or "main"
    total = sum(p.stat().st_size for p in files)
    logger.info("uploading %d files (%.1f MB) from %s to %s (%s)", len(files), total / 1e6, folder, repo_id, branch)
    try:
        message = commit_message or f"Upload scratch-gpt export ({len(files)} files)"
        info = _upload(api, folder, repo_id, private, branch, message)
    except Exception as err:  # every failure becomes a PushError whose text is scrubbed of the token
        raise PushError(_scrub(_explain(err, repo_id, api.endpoint, branch), tok)) from None
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s: %s", repo_id, url)
    return url


def _upload(api: Any, folder: Path, repo_id: str, private: bool, branch: str, message: str) -> Any:
    """create_repo (exist_ok) + create_branch when not main + upload_folder."""
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if branch != "main":
        api.create_branch(repo_id, branch=branch, repo_type="model", exist_ok=True)
    return api.upload_folder(
        folder_path=folder, repo_id=repo_id, repo_type="model", revision=branch, commit_message=message
    )


def _explain(err: Exception, repo_id: str, where: str, branch: str) -> str:
    """One plain sentence for an upload failure (the caller scrubs the token from it)."""
    from huggingface_hub.errors import (
        BadRequestError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set: unset it to upload"
    if isinstance(err, RepositoryNotFoundError):
        return (
            f"repository {repo_id} was not found at {where} or this token cannot access it "
            f"(HTTP {_status(err)}); check the owner name and that the token has write access"
        )
    if isinstance(err, RevisionNotFoundError):
        return f"branch {branch!r} does not exist in {repo_id} and could not be created"
    if isinstance(err, BadRequestError):
        return f"the Hub refused the upload: {_first_line(err)}"
    if isinstance(err, HfHubHTTPError):
        return _http_message(_status(err), repo_id, where, err)
    if _is_network_error(err):
        return f"cannot reach {where} ({type(err).__name__}): check the network connection or HF_ENDPOINT"
    if isinstance(err, OSError) and err.filename is not None:
        return f"cannot read {err.filename} ({err.strerror or err}); check the file and its permissions and push again"
    return f"upload to {repo_id} failed ({type(err).__name__}: {_first_line(err)})"


def _status(err: Any) -> int | None:
    response = getattr(err, "response", None)
    return response.status_code if response is not None else None


def _http_message(status: int | None, repo_id: str, where: str, err: Exception) -> str:
    if status == 401:
        return (
            f"authentication failed at {where} (HTTP 401): the token is invalid or expired; "
            "create a write token at https://huggingface.co/settings/tokens"
        )
    if status == 403:
        return (
            f"permission denied for {repo_id} (HTTP 403): the token is read-only or you may not write "
            "to this namespace"
        )
    return f"upload to {repo_id} failed (HTTP {status}): {_first_line(err)}"


def _is_network_error(err: BaseException) -> bool:
    """A connection/timeout failure of the HTTP client huggingface_hub uses (httpx or httpx2) or the OS."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    module = type(err).__module__.split(".")[0]
    return module in ("httpx", "httpx2") and any(c.__name__ == "TransportError" for c in type(err).__mro__)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def pull_model(
    repo_id: str,
    *,
    revision: str | None = None,
    local_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> Path:
    """Download (or find in the Hub cache, offline) a repository's files; returns the folder."""
    from huggingface_hub import snapshot_download

    validate_repo_id(repo_id)
    path = snapshot_download(repo_id, revision=revision, local_dir=local_dir, token=token)
    return Path(path)

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


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def _check_folder(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; run `scratch-gpt export MODEL {folder}` first")
    missing = [name for name in ("config.json", "README.md") if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"{folder} does not look like an export (missing {', '.join(missing)}); "
            f"create it with `scratch-gpt export MODEL {folder}`"
        )
    if folder.name.startswith(".") and ".tmp-" in folder.name:
        raise ValueError(f"{folder} is an unfinished export; export again")
    return sorted(p for p in folder.rglob("*") if p.is_file())


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
    (repo id, folder, no token) and :class:`PushError` with a plain explanation for failures on the way.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        BadRequestError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    validate_repo_id(repo_id)
    folder = Path(folder)
    files = _check_folder(folder)
    tok = resolve_token(token)
    api = HfApi(endpoint=endpoint, token=tok)
    where = api.endpoint
    message = commit_message or f"Upload scratch-gpt export ({len(files)} files)"
    branch = revision or "main"
    total = sum(p.stat().st_size for p in files)
    logger.info("uploading %d files (%.1f MB) from %s to %s (%s)", len(files), total / 1e6, folder, repo_id, branch)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            revision=branch,
            commit_message=message,
        )
    except OfflineModeIsEnabled:
        raise PushError("HF_HUB_OFFLINE is set: unset it to upload") from None
    except RepositoryNotFoundError as err:
        raise PushError(
            f"repository {repo_id} was not found at {where} or this token cannot access it "
            f"(HTTP {err.response.status_code}); check the owner name and that the token has write access"
        ) from None
    except RevisionNotFoundError:
        raise PushError(f"branch {branch!r} does not exist in {repo_id} and could not be created") from None
    except BadRequestError as err:
        raise PushError(f"the Hub refused the upload: {_scrub(_first_line(err), tok)}") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise PushError(
                f"authentication failed at {where} (HTTP 401): the token is invalid or expired; "
                "create a write token at https://huggingface.co/settings/tokens"
            ) from None
        if status == 403:
            raise PushError(
                f"permission denied for {repo_id} (HTTP 403): the token is read-only or you may not write "
                "to this namespace"
            ) from None
        raise PushError(f"upload to {repo_id} failed (HTTP {status}): {_scrub(_first_line(err), tok)}") from None
    except Exception as err:
        if not _is_network_error(err):
            raise
        raise PushError(
            f"cannot reach {where} ({type(err).__name__}): check the network connection or HF_ENDPOINT"
        ) from None
    except ValueError as err:  # e.g. invalid README metadata reported by huggingface_hub
        raise PushError(_scrub(str(err), tok)) from None
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s: %s", repo_id, url)
    return url


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

"""What a failed hub request means to the user: one sentence, exit code 6 (NetworkError)."""

from __future__ import annotations

from ..errors import KvlError, NetworkError

RESUME_HINT = "check your connection, proxy or HF_ENDPOINT; `kvl pull` resumes where it stopped"
OFFLINE_HINT = "unset HF_HUB_OFFLINE, or use a model that is already pulled (`kvl models`)"


def hub_error(exc: Exception, what: str, offline: bool) -> KvlError:
    """Translate a huggingface_hub/httpx error about ``what`` (a repository or a file) into one sentence."""
    from huggingface_hub import errors as hf

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf.OfflineModeIsEnabled) or (offline and isinstance(exc, hf.LocalEntryNotFoundError)):
        return NetworkError(f"cannot download {what}: offline mode (HF_HUB_OFFLINE=1)", hint=OFFLINE_HINT)
    if isinstance(exc, hf.GatedRepoError) or status in (401, 403):
        return NetworkError(f"{what}: access denied by the hub (HTTP {status or 401})",
                            hint="set HF_TOKEN to a token that can read this repository")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return NetworkError(f"{what}: repository not found on the hub",
                            hint="check the name (hf:OWNER/REPO), or set HF_TOKEN for a private repository")
    if isinstance(exc, hf.RevisionNotFoundError):
        return NetworkError(f"{what}: revision not found on the hub", hint="check the revision")
    return _transfer_error(exc, what, status)


def _transfer_error(exc: Exception, what: str, status: int | None) -> KvlError:
    from huggingface_hub import errors as hf

    name = type(exc).__name__
    # LocalEntryNotFoundError subclasses EntryNotFoundError: it means "no connection", so test it first
    if isinstance(exc, hf.LocalEntryNotFoundError) or "Connect" in name or "Timeout" in name:
        return NetworkError(f"cannot reach the hub to download {what} ({name})", hint=RESUME_HINT)
    if isinstance(exc, hf.EntryNotFoundError) or status == 404:
        return NetworkError(f"{what}: file not found in the repository",
                            hint="run `kvl pull hf:OWNER/REPO` without --file to list its GGUF files")
    if status:
        return NetworkError(f"{what}: the hub answered HTTP {status}", hint="try again later")
    return NetworkError(f"download of {what} failed: {exc}", hint="run `kvl pull` again: it resumes")

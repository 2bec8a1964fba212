"""One exception tree for the whole tool, the node agent's and the agent client's included.

The CLI catches `HotreleaseError` once, prints `str(error)` as a single line and exits with
`error.exit_code`. Codes are part of the public interface (see README, "Exit codes"); the
agent answers every error with its `code` (`agent.responses` picks the HTTP status by
class) and the client raises the matching class again (`agent.client.error_from_response`).
Only control flow that never leaves its module stays local (`agent.hookregistry.HookRefused`,
`agent.middleware.BodyTimeout`). Imports nothing; everyone may import it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_REFUSED = 1  # verification or policy said no
EXIT_USAGE = 2  # bad arguments, bad config, bad input, failed build
EXIT_NOT_NOW = 3  # allowed, but not yet: outside a window, waiting for approval
EXIT_ABORTED = 4  # a rollout started and was aborted / rolled back
EXIT_UNREACHABLE = 5  # an agent or remote service could not be reached: no answer came
EXIT_INTERNAL = 70  # a bug: an exception outside this tree (sysexits' EX_SOFTWARE)


class HotreleaseError(Exception):
    """Base class: every error the tool reports on purpose."""

    exit_code = EXIT_REFUSED
    code = "error"  # stable machine-readable code, used in --json output and agent responses

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


# --- usage, config, input (exit 2) -------------------------------------------------------


class UsageError(HotreleaseError):
    exit_code = EXIT_USAGE
    code = "usage"


class ConfigError(UsageError):
    """A config file is unreadable or invalid; the message names the file and key path."""

    code = "config"


class VersionError(UsageError):
    """A version string is not valid SemVer 2.0.0."""

    code = "bad_version"


class BuildError(UsageError):
    """The build command failed or produced nothing usable."""

    code = "build_failed"


class KeyFileError(UsageError):
    """A key cannot be read: missing, wrong format, wrong passphrase."""

    code = "bad_key"


class GitError(UsageError):
    code = "git"


# --- refusals (exit 1) -------------------------------------------------------------------


class VerificationError(HotreleaseError):
    """Base of every reason a bundle, manifest or signed statement is refused."""

    code = "verification_failed"


class ManifestFormatError(VerificationError):
    code = "bad_manifest"


class SignatureError(VerificationError):
    """Malformed envelope, bad signature, or a signature by a key we do not trust."""

    code = "bad_signature"


class ThresholdError(VerificationError):
    code = "threshold_not_met"


class DigestMismatchError(VerificationError):
    code = "digest_mismatch"


class SizeMismatchError(VerificationError):
    code = "size_mismatch"


class ExpiredError(VerificationError):
    code = "expired"


class IdentityMismatchError(VerificationError):
    """Name or version in the manifest is not the one expected."""

    code = "identity_mismatch"


class UnsafeArchiveError(VerificationError):
    code = "unsafe_archive"


class PolicyError(HotreleaseError):
    """The release is valid but policy refuses it (downgrade, freeze, missing approval...)."""

    code = "policy"


class NotNowError(HotreleaseError):
    exit_code = EXIT_NOT_NOW
    code = "not_now"


class AbortedError(HotreleaseError):
    exit_code = EXIT_ABORTED
    code = "aborted"


class UnreachableError(HotreleaseError):
    """No answer came (connection refused, timeout, TLS failure). An agent that answered
    with a refusal raises a refusal instead: exit 1, not 5."""

    exit_code = EXIT_UNREACHABLE
    code = "unreachable"


class NotifyError(UnreachableError):
    """The urgent-lane notification hook (command or webhook) failed."""

    code = "notify_failed"


# --- the node agent's answers (raised in the agent, mapped to HTTP statuses by
# `agent.responses.status_for`; the client raises them again from the codes it reads) ----


class BadRequest(UsageError):
    """A request the agent cannot act on: a bad plugin name or version, an incomplete body."""

    code = "bad_request"


class Unauthorized(HotreleaseError):
    """No valid bearer token (one message for every failure: see `agent.auth`)."""

    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("missing or invalid bearer token")


class NotFound(HotreleaseError):
    """No such plugin slot (`unknown_plugin`) or stored release (`not_stored`)."""

    code = "not_found"


class Conflict(HotreleaseError):
    """The request collides with the slot's state: `version_conflict`,
    `activation_in_progress`, `nothing_to_roll_back`."""

    code = "conflict"


class TooLarge(VerificationError):
    """A body, or the bundle a manifest declares, over the agent's limit."""

    code = "too_large"


class RequestTimeout(HotreleaseError):
    """The request body arrived too slowly and was cut (a partial upload is removed)."""

    code = "body_timeout"


class AdvisoryUnreadable(PolicyError):
    """A stored advisory cannot be read: the security floor is unknown, so nothing that the
    floor guards (activation, rollback, upload) goes ahead until an operator repairs it."""

    code = "advisory_unreadable"


class AgentFailure(HotreleaseError):
    """The agent itself could not complete an operation (disk full, I/O error)."""

    code = "internal"


class AgentStopping(HotreleaseError):
    """The agent is stopping: a command hook was stopped, or not started. Raised, never
    returned as a failed hook: the switch it was part of must stop where it is, journal
    kept, for the next start's recovery to finish - not be judged a failed reload and rolled
    back with hooks that can no longer run."""

    code = "agent_stopping"


class AgentError(HotreleaseError):
    """Client side: an agent answered with an error that has no more specific class here
    (`code` is the agent's, `status` the HTTP status)."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status


class BadResponseError(HotreleaseError):
    """Client side: an agent's answer is not the JSON `agent.wire` describes (a field
    missing or of the wrong type); the message names the field's path."""

    code = "bad_response"


class InternalError(HotreleaseError):
    """What the CLI edge makes of an exception outside this tree: a bug, reported in one line."""

    exit_code = EXIT_INTERNAL
    code = "internal"


def from_os_error(exc: OSError) -> UsageError:
    """A file the user named (or its folder) cannot be read or written: an input error."""
    where = exc.filename if exc.filename is not None else "file"
    return UsageError(f"cannot use {where}: {exc.strerror or exc}", code="io")

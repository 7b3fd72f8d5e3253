"""The one error hierarchy of survey-worker.

Transient errors mean "try again later, nothing was done"; permanent errors mean "this
will never work, record the reason". Each carries what an operator needs to act on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping


class SurveyWorkerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(SurveyWorkerError):
    """The configuration is unusable (missing secret, bad URL, placeholder in production)."""


class CsvProblem(SurveyWorkerError):
    """A recipients file as a whole cannot be imported (no header, no email column)."""


class PrivacyRequestError(SurveyWorkerError):
    """A privacy request cannot be carried out as asked; nothing was changed."""


class LaunchProblem(SurveyWorkerError):
    """A campaign cannot be launched as asked; nothing was created.

    The message names the launch's options as the command line's flags (`--reminders`,
    `--reminder-interval`); `api_message` names them as the API's fields (`reminders`,
    `reminder_interval`).
    """

    def api_message(self) -> str:
        return api_names(str(self))


class ScheduleProblem(LaunchProblem):
    """A launch's field period (`--start-at`, `--close-at`, `--window`, `--per-day`)
    cannot be used; the message names the option."""


class LaunchConflict(LaunchProblem):
    """A launch reuses an idempotency key for something else than the key's first launch."""


class NoValidRecipient(LaunchProblem):
    """Not one recipient could be imported, so nothing was launched.

    `first` holds the first rejected lines' (line, reason) and `more` how many others
    there were, so that an API caller can name them as it gave them (`recipient 2`
    instead of the CSV's `line 3`); the message names the file's lines.
    """

    def __init__(self, first: list[tuple[int, str]], more: int) -> None:
        self.first = first
        self.more = more
        super().__init__(self.naming("line {}".format, "in the file"))

    def naming(self, where: Callable[[int], str], source: str) -> str:
        """The message, with `where(line)` naming each line and `source` what was read."""
        shown = "; ".join(f"{where(line)}: {reason}" for line, reason in self.first)
        if shown and self.more > 0:
            shown += f"; {self.more} more"
        return f"no valid recipient {source}; nothing was launched" + (
            f" ({shown})" if shown else ""
        )


_FLAG = re.compile(r"(?<![\w-])--([a-z]+(?:-[a-z]+)*)")


def api_names(text: str) -> str:
    """`text` with the command line's flags (`--survey-url`) named as the API's fields."""
    return _FLAG.sub(lambda m: m[1].replace("-", "_"), text)


class QueueUnavailable(SurveyWorkerError):
    """Redis could not take the job."""


class UnusableUrl(SurveyWorkerError, ConnectionError):
    """A Postgres or Redis URL that cannot work: to the web app, a server that is down.

    A ConnectionError, so the handlers treat it as they treat a server that is down.
    """


class NotFound(SurveyWorkerError):
    """A client or campaign named by the user does not exist."""


class PermissionDenied(SurveyWorkerError):
    """The connected database user lacks the role an operation needs; nothing was done."""


class InvalidClient(SurveyWorkerError):
    """A client cannot be registered as asked (bad id, name or sender); nothing was written."""


class RetryRefused(SurveyWorkerError):
    """`retry` cannot put a campaign's failures back as asked (a cancelled campaign, a reason
    that is not transient); nothing was changed."""


class InvalidAddress(SurveyWorkerError):
    """An e-mail address that must not be used; `reason` says why, without the address."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidUrl(SurveyWorkerError):
    """A URL that must not go into a message; `reason` says why, without the URL."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsafeHeaderValue(SurveyWorkerError):
    """A value bound for a message header holds a character no header can carry (CR, LF,
    NUL, another control character, U+2028 or U+2029)."""


class TemplateProblem(SurveyWorkerError):
    """A template is missing, does not render, or hides the unsubscribe link."""


class TemplateMissing(TemplateProblem):
    """A template, or a file of it, is not on this worker (a deployment that has not reached
    it yet): at send time the work waits and is tried again, nothing fails."""


class SuppressionUnavailable(SurveyWorkerError):
    """The opt-out check could not run; nothing may be sent (fail closed)."""


class SmtpError(SurveyWorkerError):
    """An SMTP transaction did not end in acceptance; `code` is the reply code if any,
    `command` the one the server refused (`MAIL FROM`, `RCPT TO`, `DATA`) and `reply` its
    reply text, addresses redacted."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        command: str | None = None,
        reply: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.command = command
        self.reply = reply


class TransientSmtpError(SmtpError):
    """4xx reply, refused connection or timeout before DATA: retry later."""


class NotStarted(TransientSmtpError):
    """The send journal did not let the message start: nothing of it was sent."""


class PermanentSmtpError(SmtpError):
    """5xx reply: never retry this recipient."""


class RelayTrouble(TransientSmtpError):
    """The relay, not the recipient, stopped the message (down, TLS, login, throttling, a
    refused sender): nothing was sent, no attempt counts. `reason` is one of
    `worker.relay_check.REASONS`; `status` the enhanced status code of the reply, if any;
    `error` the exception when there was no reply."""

    def __init__(
        self,
        reason: str,
        *,
        relay: str,
        code: int | None = None,
        status: str | None = None,
        reply: str | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(f"relay {relay}: {reason}", code=code, reply=reply)
        self.reason = reason
        self.relay = relay
        self.status = status
        self.error = error


class AmbiguousSmtpError(SmtpError):
    """The message body was sent but no final reply came: it may or may not be delivered."""


class WorkerStopping(SurveyWorkerError):
    """The worker is shutting down: the job stops claiming and goes back to the queue."""


class Refused(SurveyWorkerError):
    """An HTTP request refused; nothing was done. `status` is the answer's status, `reason`
    a short fixed phrase for its body and the log line (it never quotes the request), and
    `headers` go with the answer (`worker.web.http.answer` makes it)."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


class Unauthenticated(Refused):
    """Not shown to come from whom it must (a signature, credentials or a key that does not
    verify, a replayed or stale timestamp): 401."""

    def __init__(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(401, reason, headers)


class Malformed(Refused):
    """Not what the endpoint takes (a body that is not JSON, a field missing): 400."""

    def __init__(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(400, reason, headers)


class TooLarge(Refused):
    """A body over the endpoint's limit, refused before it is read whole: 413."""

    def __init__(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(413, reason, headers)


class Unavailable(Refused):
    """Something the request needs is unavailable now (Postgres, Redis, the SNS certificate
    host): 503, so that the sender tries again later."""

    def __init__(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(503, reason, headers)

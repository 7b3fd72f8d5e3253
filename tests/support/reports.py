"""Reports about a message the worker sent, as mail systems write them: an RFC 3464
delivery status notification and an RFC 5965 abuse report, each returning the headers of
the original message."""

from __future__ import annotations

from tests.support.smtp import RecordedMessage

BOUNDARY = "report-boundary-1"


def _report(
    message: RecordedMessage, *, report_type: str, subject: str, text: str, fields: str
) -> bytes:
    headers = message.data.split(b"\r\n\r\n", 1)[0].decode()
    subtype = "delivery-status" if report_type == "delivery-status" else "feedback-report"
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        f"To: {message.sender}\r\n"
        f"Subject: {subject}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="{BOUNDARY}"\r\n'
        "\r\n"
        f"--{BOUNDARY}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"{text}\r\n\r\n"
        f"--{BOUNDARY}\r\n"
        f"Content-Type: message/{subtype}\r\n\r\n"
        f"{fields}\r\n"
        f"--{BOUNDARY}\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"{headers}\r\n\r\n"
        f"--{BOUNDARY}--\r\n"
    ).encode()


def delivery_status(
    message: RecordedMessage, *, status: str = "5.1.1", action: str = "failed"
) -> bytes:
    """The DSN an MTA sends back for `message` (one recipient), with `status` and `action`."""
    fields = (
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {message.recipients[0]}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} mailbox problem\r\n"
    )
    return _report(
        message,
        report_type="delivery-status",
        subject="Undelivered Mail Returned to Sender",
        text="Your message could not be delivered.",
        fields=fields,
    )


def abuse_report(message: RecordedMessage) -> bytes:
    """The ARF report a mailbox provider sends when the recipient marks `message` as spam."""
    fields = (
        "Feedback-Type: abuse\r\n"
        "User-Agent: ExampleFBL/1.0\r\n"
        "Version: 1\r\n"
        f"Original-Mail-From: <{message.sender}>\r\n"
    )
    return _report(
        message,
        report_type="feedback-report",
        subject="Abuse report",
        text="This is an abuse report for a message received from your system.",
        fields=fields,
    )

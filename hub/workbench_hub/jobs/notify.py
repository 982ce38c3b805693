"""Run notifications: a Notifier base class and the SMTP email implementation."""

from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib
from traitlets import Bool, CaselessStrEnum, Float, Int, Unicode
from traitlets.config import LoggingConfigurable


@dataclass
class RunNotice:
    """What a notification says about a run that ended."""

    project: str
    job: str
    run: int
    state: str
    message: str
    trigger: str
    attempt: int
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    recipients: list[str]
    links: dict[str, str] = field(default_factory=dict)
    #: (file name, bytes, MIME type) already cut to the size limit
    attachments: list[tuple[str, bytes, str]] = field(default_factory=list)


class Notifier(LoggingConfigurable):
    """Base class of notifiers; ``send`` must not raise (log failures instead)."""

    max_attachment_bytes = Int(
        1024**2,
        help="""Largest attachment (executed notebook, log tail) in bytes. A larger notebook is
        not attached (the message says so); a log is cut to its last max_attachment_bytes.""",
    ).tag(config=True)

    async def send(self, notice: RunNotice) -> bool:
        raise NotImplementedError


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def render(notice: RunNotice) -> tuple[str, str]:
    """Subject and plain-text body of a notice."""
    subject = f"[workbench] {notice.project}/{notice.job} run {notice.run} {notice.state}"
    lines = [
        f"Job {notice.job} in project {notice.project}: run {notice.run} {notice.state}.",
        "",
        f"Message:   {notice.message or '-'}",
        f"Trigger:   {notice.trigger} (attempt {notice.attempt})",
        f"Queued:    {_time(notice.queued_at)}",
        f"Started:   {_time(notice.started_at)}",
        f"Finished:  {_time(notice.finished_at)}",
    ]
    if notice.links:
        lines.append("")
        lines.extend(f"{name}: {url}" for name, url in notice.links.items())
    if notice.attachments:
        lines.append("")
        lines.append("Attached: " + ", ".join(name for name, _, _ in notice.attachments))
    return subject, "\n".join(lines) + "\n"


class EmailNotifier(Notifier):
    """Email through an SMTP server (aiosmtplib): plain, STARTTLS or TLS, optional login."""

    smtp_host = Unicode(
        "",
        help="SMTP server host name. Empty: no email is sent (a warning is logged per run).",
    ).tag(config=True)

    smtp_port = Int(
        0,
        help="SMTP server port. 0: the usual port for smtp_security (25, 587 or 465).",
    ).tag(config=True)

    smtp_security = CaselessStrEnum(
        ["none", "starttls", "tls"],
        "starttls",
        help="""Connection security: `none` (plain SMTP), `starttls` (upgrade with STARTTLS,
        required) or `tls` (implicit TLS, usually port 465).""",
    ).tag(config=True)

    smtp_username = Unicode("", help="SMTP login user; empty: no login.").tag(config=True)

    smtp_password = Unicode("", help="SMTP login password (never logged).").tag(config=True)

    smtp_timeout = Float(30, help="Seconds to wait for the SMTP server.").tag(config=True)

    validate_certs = Bool(
        True, help="Verify the SMTP server's TLS certificate (starttls and tls)."
    ).tag(config=True)

    from_address = Unicode(
        "workbench@localhost", help="Sender address (From:) of notification emails."
    ).tag(config=True)

    def _port(self) -> int:
        return self.smtp_port or {"none": 25, "starttls": 587, "tls": 465}[self.smtp_security]

    def build(self, notice: RunNotice) -> EmailMessage:
        subject, body = render(notice)
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = self.from_address
        message["To"] = ", ".join(notice.recipients)
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain="workbench")
        message.set_content(body)
        for filename, content, mime in notice.attachments:
            maintype, _, subtype = mime.partition("/")
            message.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
        return message

    async def send(self, notice: RunNotice) -> bool:
        """Send the notice; False (with the reason logged) if it could not be sent."""
        what = f"{notice.project}/{notice.job} run {notice.run}"
        if not notice.recipients:
            return False
        if not self.smtp_host:
            self.log.warning("No EmailNotifier.smtp_host configured: no email about %s", what)
            return False
        try:
            await aiosmtplib.send(
                self.build(notice),
                hostname=self.smtp_host,
                port=self._port(),
                use_tls=self.smtp_security == "tls",
                start_tls=self.smtp_security == "starttls",
                username=self.smtp_username or None,
                password=self.smtp_password or None,
                timeout=self.smtp_timeout,
                validate_certs=self.validate_certs,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            self.log.error("Could not email %s to %s: %s", what, notice.recipients, e)
            return False
        self.log.info("Emailed %s %s to %s", what, notice.state, ", ".join(notice.recipients))
        return True

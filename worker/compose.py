"""Composing one invitation's message: its unsubscribe token and links, the rendered
template and the MIME bytes, or the failure that stops it.

Pure: apart from the template store reading each template file once, the same composer,
campaign, invitation and time always give the same result.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker import addresses, links, locales, message, records, tokens, verp
from worker.errors import InvalidAddress, UnsafeHeaderValue
from worker.message import DEFAULT_FIRM_NAME
from worker.render import TemplateStore
from worker.settings import Settings

# Larger messages are refused here rather than by the relay: oversized CSV variables.
MAX_MESSAGE_BYTES = 2_000_000


@dataclass(frozen=True)
class Composer:
    """What composing a message needs besides the campaign and the invitation."""

    templates: TemplateStore
    signing_key: bytes  # signs unsubscribe tokens: the newest of UNSUBSCRIBE_SECRETS
    hash_key: bytes  # keys the survey reference of each invitation
    public_base_url: str  # where the unsubscribe pages are
    bounce_domain: str | None = None  # BOUNCE_DOMAIN: the envelope sender is a VERP address
    postmark_metadata: bool = False  # POSTMARK_WEBHOOK_USER set: sent through Postmark
    firm_name: str = DEFAULT_FIRM_NAME  # FIRM_NAME: who "we" are in every message

    @classmethod
    def from_settings(cls, settings: Settings, templates: TemplateStore) -> Composer:
        """The composer for a worker process with these settings and templates."""
        return cls(
            templates=templates,
            signing_key=settings.signing_keys()[0],
            hash_key=settings.hash_key(),
            public_base_url=settings.public_base_url,
            bounce_domain=settings.bounce_domain,
            postmark_metadata=settings.postmark_webhook_user is not None,
            firm_name=settings.firm_name,
        )


@dataclass(frozen=True)
class Prepared:
    """An invitation ready for SMTP."""

    invitation: records.Invitation
    recipient: str
    data: bytes
    message_id: str
    envelope_sender: str  # MAIL FROM: the client's address, or a VERP address


def prepare(
    composer: Composer, campaign: records.Campaign, inv: records.Invitation, now: datetime
) -> Prepared | records.Outcome:
    """Render and assemble one message, or the failure that stops it.

    Raises TemplateProblem, which fails the whole campaign: every recipient of a campaign
    shares its template and columns, so a template error is never one person's problem.
    Raises TemplateMissing when the template is not on this worker. A value of this
    recipient that no header can carry fails this invitation alone.
    """
    if inv.email is None:
        return records.Outcome(inv.id, "failed", reason="address_erased")
    try:
        recipient = addresses.normalise(inv.email)
    except InvalidAddress as e:
        return records.Outcome(inv.id, "failed", reason=f"invalid_address: {e.reason}")
    locale = (inv.locale or campaign.locale).lower()
    context = _context(composer, campaign, inv, locale)
    try:
        rendered = composer.templates.render(
            campaign.template, [locale, campaign.locale, "en"], context
        )
    except UnsafeHeaderValue:
        return records.Outcome(inv.id, "failed", reason="unsafe_header_value")
    message_id = message.message_id_for(inv.id, campaign.sender_email.rpartition("@")[2])
    try:
        data = message.build(
            message.OutgoingMessage(
                sender=campaign.sender_email,
                sender_name=campaign.client_name,
                recipient=recipient,
                recipient_name=_recipient_name(inv.vars),
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                message_id=message_id,
                date=now,
                list_id=_list_id(campaign),
                unsubscribe_url=context["unsubscribe_url"],
                postmark_metadata=composer.postmark_metadata,
                feedback_id=message.feedback_id(
                    campaign.id, campaign.client_id, campaign.kind, composer.firm_name
                ),
            )
        )
    except UnsafeHeaderValue:
        return records.Outcome(inv.id, "failed", reason="unsafe_header_value")
    except InvalidAddress as e:
        return records.Outcome(inv.id, "failed", reason=f"invalid_address: {e.reason}")
    except ValueError as e:
        # A header the message format cannot carry (e.g. a line over 998 octets).
        return records.Outcome(inv.id, "failed", reason=f"unencodable_message: {e}")
    if len(data) > MAX_MESSAGE_BYTES:
        return records.Outcome(inv.id, "failed", reason="message_too_large")
    if composer.bounce_domain is None:
        envelope_sender = campaign.sender_email
    else:
        envelope_sender = verp.address(composer.signing_key, inv.id, composer.bounce_domain)
    return Prepared(inv, recipient, data, message_id, envelope_sender)


def _context(
    composer: Composer, campaign: records.Campaign, inv: records.Invitation, locale: str
) -> dict[str, Any]:
    """What the template sees: the recipient's columns, the client's name, the survey and
    unsubscribe links, and the reminder round."""
    claims = tokens.TokenClaims(
        # Every message carries its client's name, so its link always leaves that client's
        # list; marketing mail's leaves the firm's marketing list too.
        client_id=campaign.client_token_id,
        marketing=campaign.kind == "marketing",
        email_hash=inv.email_hash,
        # Tokens carry a locale for the unsubscribe page; anything else is the fallback.
        locale=locales.or_fallback(locale),
    )
    unsubscribe_url = links.unsubscribe_link(
        composer.public_base_url, tokens.sign(composer.signing_key, claims)
    )
    # A reminder links to the same survey answer as the first message.
    survey_url = inv.vars.get("survey_url") or links.survey_link(
        campaign.survey_url, links.survey_ref(composer.hash_key, inv.parent_id or inv.id)
    )
    context = {
        **inv.vars,
        "client_name": campaign.client_name,
        "firm_name": composer.firm_name,
        "survey_url": survey_url,
        "unsubscribe_url": unsubscribe_url,
        "reminder": inv.round,
    }
    return context


def _recipient_name(variables: dict[str, Any]) -> str:
    """The To display name: the `name` column, else `first_name` and `last_name`."""
    if isinstance(variables.get("name"), str):
        return str(variables["name"])
    parts = (variables.get("first_name"), variables.get("last_name"))
    return " ".join(p for p in parts if isinstance(p, str) and p)


def _list_id(campaign: records.Campaign) -> str:
    """The List-Id (RFC 2919): a list per client's surveys, one per sending domain for
    marketing."""
    domain = campaign.sender_email.rpartition("@")[2]
    if campaign.kind == "marketing":
        return f"{campaign.client_name} marketing <marketing.{domain}>"
    return f"{campaign.client_name} surveys <{campaign.client_id}.surveys.{domain}>"

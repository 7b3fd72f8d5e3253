"""The unsubscribe app's pages: what each says in English, Dutch and French, and their HTML.

Building a page is pure (`confirm`, `done`, `pending`, `retry`, `invalid` return a `Page`);
French puts a client's name after "de" with `grammar.french_de` ("des enquêtes d'Acme").
`Renderer` turns one into HTML with an autoescaped Jinja template, so a client's name can
never inject markup, and gives the Content-Security-Policy that allows exactly the page's
one inline style sheet.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup

from worker import grammar, locales

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
LOCALES = ("en", "nl", "fr")

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "unsubscribe": "Unsubscribe",
        "button": "Unsubscribe",
        "confirm_survey": "Do you want to stop receiving survey invitations from {client}?",
        "confirm_marketing": "Do you want to stop receiving marketing e-mail from us?",
        "done_heading": "You are unsubscribed",
        "done_survey": "You will no longer receive survey invitations from {client}.",
        "done_marketing": "You will no longer receive marketing e-mail from us.",
        "pending_heading": "Your request is being processed",
        "pending_lead": "We have received your request.",
        "retry_heading": "Please try again",
        "retry_body": (
            "We could not record your request just now. Please try again in a few minutes."
        ),
        "invalid_heading": "This unsubscribe link is not valid",
        "invalid_body": "Please use the link in the most recent e-mail you received from us.",
        "contact": "For questions about your data, or to unsubscribe another way, contact",
        "no_contact": "To unsubscribe another way, please contact the sender of the e-mail.",
        "unknown_client": "this organisation",
    },
    "nl": {
        "unsubscribe": "Afmelden",
        "button": "Afmelden",
        "confirm_survey": "Wilt u geen uitnodigingen voor onderzoeken van {client} meer ontvangen?",
        "confirm_marketing": "Wilt u geen marketing-e-mails van ons meer ontvangen?",
        "done_heading": "U bent afgemeld",
        "done_survey": "U ontvangt geen uitnodigingen voor onderzoeken van {client} meer.",
        "done_marketing": "U ontvangt geen marketing-e-mails van ons meer.",
        "pending_heading": "Uw afmelding wordt verwerkt",
        "pending_lead": "We hebben uw verzoek ontvangen.",
        "retry_heading": "Probeer het later opnieuw",
        "retry_body": (
            "Uw afmelding kon nu niet worden vastgelegd. Probeer het over een paar minuten opnieuw."
        ),
        "invalid_heading": "Deze afmeldlink is niet geldig",
        "invalid_body": "Gebruik de link in de meest recente e-mail die u van ons ontving.",
        "contact": (
            "Voor vragen over uw gegevens, of om u op een andere manier af te melden: neem "
            "contact op via"
        ),
        "no_contact": (
            "Neem contact op met de afzender van de e-mail om u op een andere manier af te melden."
        ),
        "unknown_client": "deze organisatie",
    },
    "fr": {
        "unsubscribe": "Se désabonner",
        "button": "Me désabonner",
        "confirm_survey": (
            "Voulez-vous ne plus recevoir d'invitations à des enquêtes {de_client}\u00a0?"
        ),
        "confirm_marketing": "Voulez-vous ne plus recevoir nos e-mails marketing\u00a0?",
        "done_heading": "Votre désabonnement est enregistré",
        "done_survey": "Vous ne recevrez plus d'invitations à des enquêtes {de_client}.",
        "done_marketing": "Vous ne recevrez plus nos e-mails marketing.",
        "pending_heading": "Votre demande est en cours de traitement",
        "pending_lead": "Nous avons bien reçu votre demande.",
        "retry_heading": "Veuillez réessayer",
        "retry_body": (
            "Votre demande n'a pas pu être enregistrée pour le moment. Veuillez réessayer "
            "dans quelques minutes."
        ),
        "invalid_heading": "Ce lien de désabonnement n'est pas valide",
        "invalid_body": "Utilisez le lien du dernier e-mail que vous avez reçu de notre part.",
        "contact": (
            "Pour toute question sur vos données, ou pour vous désabonner autrement, "
            "contactez\u00a0:"
        ),
        "no_contact": "Pour vous désabonner autrement, contactez l'expéditeur de l'e-mail.",
        "unknown_client": "cette organisation",
    },
}


@dataclass(frozen=True)
class Link:
    """A sentence that ends with a link: its text, the link's label and its address."""

    text: str
    label: str
    href: str


@dataclass(frozen=True)
class Section:
    """A heading and paragraphs in one language, and a closing link if any."""

    lang: str
    heading: str
    paragraphs: tuple[str, ...]
    link: Link | None = None


@dataclass(frozen=True)
class Page:
    """A whole page: its HTTP status, its sections and, on the confirmation page, a button."""

    status: int
    sections: tuple[Section, ...]
    button: str | None = None


def language(locale: str) -> str:
    """The page language for a token's locale: itself if we have it, else English."""
    return locale if locale in TEXTS else locales.FALLBACK


def _list_sentence(lang: str, kind: str, *, marketing: bool, client_name: str | None) -> str:
    text = TEXTS[lang]
    if marketing:
        return text[f"{kind}_marketing"]
    name = client_name or text["unknown_client"]
    return text[f"{kind}_survey"].format(client=name, de_client=grammar.french_de(name))


def confirm(locale: str, *, marketing: bool, client_name: str | None) -> Page:
    """The page a GET shows: which list the person is about to leave, and one button."""
    lang = language(locale)
    sentence = _list_sentence(lang, "confirm", marketing=marketing, client_name=client_name)
    section = Section(lang, TEXTS[lang]["unsubscribe"], (sentence,))
    return Page(200, (section,), button=TEXTS[lang]["button"])


def done(locale: str, *, marketing: bool, client_name: str | None) -> Page:
    """The page after the opt-out was recorded."""
    lang = language(locale)
    sentence = _list_sentence(lang, "done", marketing=marketing, client_name=client_name)
    return Page(200, (Section(lang, TEXTS[lang]["done_heading"], (sentence,)),))


def pending(locale: str, *, marketing: bool, client_name: str | None) -> Page:
    """The page when the opt-out was queued to be recorded as soon as the database is back."""
    lang = language(locale)
    sentence = _list_sentence(lang, "done", marketing=marketing, client_name=client_name)
    lead = TEXTS[lang]["pending_lead"]
    return Page(202, (Section(lang, TEXTS[lang]["pending_heading"], (lead, sentence)),))


def retry(locale: str) -> Page:
    """The page when the opt-out could be neither recorded nor queued."""
    lang = language(locale)
    text = TEXTS[lang]
    return Page(503, (Section(lang, text["retry_heading"], (text["retry_body"],)),))


def invalid(privacy_contact: str | None = None) -> Page:
    """The one page for every unusable token, in all three languages (the token's own
    locale cannot be trusted, and the page must not tell what was wrong); it offers the
    way out PRIVACY_CONTACT gives (a mailto: or https:// address), else the sender."""
    sections = tuple(
        Section(
            lang,
            TEXTS[lang]["invalid_heading"],
            (TEXTS[lang]["invalid_body"],)
            + (() if privacy_contact else (TEXTS[lang]["no_contact"],)),
            _contact(lang, privacy_contact),
        )
        for lang in LOCALES
    )
    return Page(400, sections)


def _contact(lang: str, privacy_contact: str | None) -> Link | None:
    if not privacy_contact:
        return None
    label = privacy_contact.removeprefix("mailto:").partition("?")[0]
    return Link(TEXTS[lang]["contact"], label, privacy_contact)


class Renderer:
    """Renders pages with the template and style sheet in `folder`."""

    def __init__(self, folder: Path = TEMPLATES_DIR, *, privacy_contact: str | None = None) -> None:
        # PRIVACY_CONTACT: the way out the invalid-link page offers.
        self.privacy_contact = privacy_contact
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folder),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._template = self._env.get_template("page.html")
        # Our own fixed style sheet, marked safe so that escaping cannot change it (its hash
        # would no longer match the policy).
        css = (folder / "style.css").read_text(encoding="utf-8").strip()
        self._style = Markup(css)  # noqa: S704
        digest = hashlib.sha256(str(self._style).encode()).digest()
        self.content_security_policy = (
            "default-src 'none'; "
            f"style-src 'sha256-{base64.b64encode(digest).decode()}'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )

    def render(self, page: Page) -> str:
        """The page's HTML."""
        return self._template.render(page=page, style=self._style)

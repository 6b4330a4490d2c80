"""Keyword recognition for inbound messages: pure, no I/O.

A reply is normalised (Unicode NFKD, combining marks dropped, uppercase, punctuation turned
into spaces) and its first word looked up, first in the tenant's own keywords, then in the
built-in table. The second word is kept as the *argument*: ``STOP ACME`` opts out of the
``acme`` scope only, ``STOP ALL`` (like ``STOPALL``) of everything.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Group = Literal["stop", "start", "help"]


@dataclass(frozen=True, slots=True)
class Keyword:
    group: Group
    languages: tuple[str, ...]  # the first one is the language a confirmation uses by default
    everything: bool = False  # STOPALL: always the global opt-out, whatever the number's scope


# Carrier and regulator lists (CTIA in the US, the Spanish/French/Portuguese short-code
# codes of practice) plus the words Herald's own opt-out texts tell people to send
# (services/ingest/audience/templates.py OPT_OUT: SAIR, BAIXA). Stored normalised.
BUILTIN: dict[str, Keyword] = {
    # STOP
    "STOP": Keyword("stop", ("en", "fr", "de", "it", "nl")),
    "STOPALL": Keyword("stop", ("en",), everything=True),
    "UNSUBSCRIBE": Keyword("stop", ("en",)),
    "CANCEL": Keyword("stop", ("en",)),
    "END": Keyword("stop", ("en",)),
    "QUIT": Keyword("stop", ("en",)),
    "OPTOUT": Keyword("stop", ("en",)),
    "REVOKE": Keyword("stop", ("en",)),
    "BAJA": Keyword("stop", ("es",)),
    "ALTO": Keyword("stop", ("es",)),
    "CANCELAR": Keyword("stop", ("es", "pt")),
    "PARAR": Keyword("stop", ("pt", "es")),
    "SAIR": Keyword("stop", ("pt",)),
    "ARRET": Keyword("stop", ("fr",)),
    "ARRETER": Keyword("stop", ("fr",)),
    "DESABONNER": Keyword("stop", ("fr",)),
    "BAIXA": Keyword("stop", ("ca",)),
    "ABMELDEN": Keyword("stop", ("de",)),
    # START
    "START": Keyword("start", ("en", "fr")),
    "UNSTOP": Keyword("start", ("en",)),
    "YES": Keyword("start", ("en",)),
    "SUBSCRIBE": Keyword("start", ("en",)),
    "RESUME": Keyword("start", ("en",)),
    "ALTA": Keyword("start", ("es",)),
    "SUSCRIBIR": Keyword("start", ("es",)),
    "ABONNER": Keyword("start", ("fr",)),
    "ANMELDEN": Keyword("start", ("de",)),
    # HELP
    "HELP": Keyword("help", ("en",)),
    "INFO": Keyword("help", ("en", "fr", "es", "de")),
    "AYUDA": Keyword("help", ("es",)),
    "AIDE": Keyword("help", ("fr",)),
    "AJUDA": Keyword("help", ("pt", "ca")),
    "HILFE": Keyword("help", ("de",)),
}

# A second word that widens a STOP to everything: "STOP ALL", "BAJA TODO", "ARRET TOUT".
EVERYTHING_WORDS = frozenset({"ALL", "TODO", "TODOS", "TOUT", "TOUS", "TUDO", "ALLES"})


@dataclass(frozen=True, slots=True)
class Match:
    group: Group
    keyword: str  # normalised
    languages: tuple[str, ...]
    argument: str | None  # the normalised second word, if any
    everything: bool  # global opt-out asked explicitly (STOPALL, STOP ALL)

    @property
    def language(self) -> str:
        return self.languages[0]


def normalise(text: str) -> str:
    """``"¡Arrêt, s'il vous plaît!"`` → ``"ARRET S IL VOUS PLAIT"``."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    cleaned = "".join(c if c.isalnum() else " " for c in stripped.upper())
    return " ".join(cleaned.split())


def normalise_keyword(word: str) -> str:
    """The stored form of one keyword (per-tenant additions): its first normalised word."""
    words = normalise(word).split()
    if len(words) != 1:
        raise ValueError(f"a keyword is one word, got {word!r}")
    return words[0]


def classify(body: str, extra: Mapping[str, Keyword] | None = None) -> Match | None:
    """The keyword group of a reply, or None when it is an ordinary reply (to forward)."""
    words = normalise(body).split()
    if not words:
        return None
    first = words[0]
    found = (extra or {}).get(first) or BUILTIN.get(first)
    if found is None:
        return None
    argument = words[1] if len(words) > 1 else None
    everything = found.everything or (found.group == "stop" and argument in EVERYTHING_WORDS)
    return Match(found.group, first, found.languages, argument, everything)


# Confirmations, per language. {name}: the tenant's name (and scope).
REPLIES: dict[str, dict[Group, str]] = {
    "en": {
        "stop": "You are unsubscribed from {name} messages. Reply START to resubscribe.",
        "start": "You are subscribed again to {name} messages. Reply STOP to unsubscribe.",
        "help": "{name}: reply STOP to unsubscribe, START to resubscribe. Msg&data rates may apply.",
    },
    "es": {
        "stop": "Te has dado de baja de los mensajes de {name}. Responde ALTA para volver a suscribirte.",
        "start": "Te has vuelto a suscribir a los mensajes de {name}. Responde BAJA para darte de baja.",
        "help": "{name}: responde BAJA para darte de baja, ALTA para volver a suscribirte.",
    },
    "fr": {
        "stop": "Vous etes desabonne des messages de {name}. Repondez START pour vous reabonner.",
        "start": "Vous etes de nouveau abonne aux messages de {name}. Repondez STOP pour vous desabonner.",
        "help": "{name} : repondez STOP pour vous desabonner, START pour vous reabonner.",
    },
    "pt": {
        "stop": "Cancelou a subscricao das mensagens de {name}. Responda START para voltar a subscrever.",
        "start": "Voltou a subscrever as mensagens de {name}. Responda SAIR para cancelar.",
        "help": "{name}: responda SAIR para cancelar, START para voltar a subscrever.",
    },
    "de": {
        "stop": "Sie sind von den Nachrichten von {name} abgemeldet. Antworten Sie START zum Anmelden.",
        "start": "Sie erhalten wieder Nachrichten von {name}. Antworten Sie STOP zum Abmelden.",
        "help": "{name}: Antworten Sie STOP zum Abmelden, START zum Anmelden.",
    },
}
DEFAULT_LANGUAGE = "en"


def reply_language(match: Match, contact_language: str | None = None) -> str:
    """The contact's language when we have texts in it, else the keyword's, else English."""
    primary = (contact_language or "").split("-")[0].lower()
    if primary in REPLIES:
        return primary
    for language in match.languages:
        if language in REPLIES:
            return language
    return DEFAULT_LANGUAGE


def reply_text(group: Group, language: str, name: str) -> str:
    texts = REPLIES.get(language) or REPLIES[DEFAULT_LANGUAGE]
    return texts[group].format(name=name)

"""Templates: placeholders with defaults, a renderer that runs no code, languages, opt-out text."""

from __future__ import annotations

import pytest

from services.ingest.audience import templates as t
from services.ingest.audience.templates import OPT_OUT, Template, TemplateError, render, validate
from shared.sms.encoding import is_gsm7


def marketing(variants: dict[str, str], default: str = "en", sender: str | None = "Acme") -> Template:
    return Template("marketing", default, variants, sender)


def transactional(text: str) -> Template:
    return Template("transactional", "en", {"en": text})


def test_fields_defaults_and_attributes() -> None:
    tpl = transactional("Hi {{first_name|there}} {{ last_name }}, plan {{attributes.plan|basic}}, {{attributes.n}} pts, vip={{attributes.vip}}")
    r = render(tpl, {"first_name": "Ana", "last_name": "Ruiz", "attributes": {"plan": "pro", "n": 12.5, "vip": True}})
    assert r.text == "Hi Ana Ruiz, plan pro, 12.5 pts, vip=true"
    assert r.missing == () and not r.opt_out_appended
    r = render(tpl, {"first_name": "", "attributes": {}})
    assert r.text == "Hi there , plan basic,  pts, vip="
    assert r.missing == ("first_name", "last_name", "attributes.plan", "attributes.n", "attributes.vip")


def test_empty_default() -> None:
    assert render(transactional("Hola{{first_name|}}!"), {}).text == "Hola!"


def test_values_are_never_evaluated_or_expanded() -> None:
    tpl = transactional("Hi {{first_name}}")
    for value in ["{{last_name}}", "{{ 7*7 }}", "{% for x in y %}", "${jndi:ldap://x}", "__import__('os').system('id')"]:
        assert render(tpl, {"first_name": value, "last_name": "SECRET"}).text == f"Hi {value}"


@pytest.mark.parametrize(
    "text",
    [
        "{{ 7*7 }}",
        "{{ first_name.__class__ }}",
        "{{__class__}}",
        "{{ config }}",
        "{{ first_name|upper }}x{{",
        "{% if x %}",
        "{{ attributes.a.b }}",
        "{{ phone }}",
        "{{ lipsum.__globals__ }}",
    ],
)
def test_anything_but_allowed_fields_is_refused(text) -> None:
    errors = validate(transactional(text))
    assert errors, text
    assert {e.code for e in errors} <= {"unknown_field", "invalid_placeholder"}


def test_unknown_field_hints_at_attributes() -> None:
    (error,) = validate(transactional("Hi {{frist_name|there}}"))
    assert error.code == "unknown_field" and "attributes.frist_name" in str(error) and error.position == 3


def test_a_jinja_filter_is_just_a_default() -> None:
    # {{first_name|upper}} is not a filter: "upper" is the default text
    assert render(transactional("{{first_name|upper}}"), {}).text == "upper"


def test_lengths_are_capped() -> None:
    tpl = transactional("{{first_name}}")
    assert len(render(tpl, {"first_name": "x" * 10_000}).text) == t.MAX_VALUE
    many = transactional("{{first_name}}" * 20)
    with pytest.raises(TemplateError) as e:
        render(many, {"first_name": "x" * 150})
    assert e.value.code == "rendered_too_long"
    assert {e.code for e in validate(transactional("x" * (t.MAX_BODY + 1)))} == {"variant_too_long"}
    assert {e.code for e in validate(transactional("{{first_name|" + "d" * 101 + "}}"))} == {"default_too_long"}


def test_control_characters_in_values_are_dropped() -> None:
    assert render(transactional("Hi {{first_name}}"), {"first_name": "A\x00n\x1ba"}).text == "Hi Ana"


def test_language_choice() -> None:
    variants = {"en": "EN", "es": "ES", "pt-BR": "BR", "fr-CA": "CA", "fr": "FR"}
    tpl = Template("transactional", "en", variants)
    assert [render(tpl, {"language": lang}).language for lang in ["es", "es-MX", "pt", "pt-BR", "fr-CA", "fr-BE", "de", None]] == [
        "es", "es", "pt-BR", "pt-BR", "fr-CA", "fr", "en", "en"
    ]


def test_opt_out_is_appended_to_marketing_in_the_contacts_language() -> None:
    tpl = marketing({"en": "Sale {{first_name|}}", "es": "Rebajas {{first_name|}}"})
    r = render(tpl, {"first_name": "Ana", "language": "es"})
    assert r.text == "Rebajas Ana\nResponde BAJA para darte de baja" and r.opt_out_appended
    r = render(tpl, {"language": "fr"})  # no French variant: English text, French instruction
    assert (r.language, r.text) == ("en", "Sale\nRépondez STOP pour vous désabonner")
    r = render(tpl, {"language": "ja"})  # no instruction in Japanese: the message's language
    assert r.text == "Sale\nReply STOP to opt out"
    assert not render(transactional("Your code is 1234"), {"language": "es"}).opt_out_appended


@pytest.mark.parametrize(
    ("text", "language", "appended"),
    [
        ("Sale! Reply STOP to opt out", "en", False),
        ("Rebajas. Envia BAJA al 1234", "es", False),
        ("Rebajas. STOP al 1234", "es", False),  # STOP is understood everywhere
        ("Promo. SAIR para cancelar", "pt", False),
        ("Non-stop deals", "en", True),
        ("UNSTOPPABLE deals", "en", True),
        ("Sale {{first_name}}", "en", True),  # a name "STOP" does not count
    ],
)
def test_an_existing_opt_out_is_detected(text, language, appended) -> None:
    r = render(marketing({language: text}, default=language), {"first_name": "STOP", "language": language})
    assert r.opt_out_appended is appended


def test_every_opt_out_text_is_gsm7_and_names_its_keyword() -> None:
    assert {"en", "es", "fr", "de", "pt", "it"} <= set(OPT_OUT)
    for language, (text, keywords) in OPT_OUT.items():
        assert is_gsm7(text), language  # appending it never turns a message into UCS-2
        assert t.has_opt_out(text, language), language
        assert any(k in text for k in keywords)


def test_encoding_and_segments_of_the_result() -> None:
    r = render(transactional("{{first_name}}"), {"first_name": "a" * 161})
    assert (r.info.encoding, r.info.segments) == ("GSM-7", 2)
    r = render(transactional("Hola {{first_name}} 😀"), {"first_name": "Lucía"})
    assert (r.info.encoding, r.info.segments) == ("UCS-2", 1)
    d = r.as_dict()
    assert d["encoding"] == "UCS-2" and d["units"] == 13 and d["characters"] == 12
    # smart encoding turns typographic quotes into GSM-7 ones
    r = render(transactional("“Hi” {{first_name}}"), {"first_name": "Ana"})
    assert (r.info.encoding, r.as_dict()["text"]) == ("GSM-7", '"Hi" Ana')


def test_validation_of_the_whole_template() -> None:
    errors = validate(Template("spam", "de", {"en": "", "english": "x", "es": "{{first_name"}, sender="Far Too Long Sender"))  # type: ignore[arg-type]
    assert {(e.code, e.loc) for e in errors} == {
        ("invalid_purpose", "purpose"),
        ("invalid_sender", "sender"),
        ("default_language_missing", "default_language"),
        ("empty_variant", "variants.en"),
        ("invalid_language", "variants.english"),
        ("invalid_placeholder", "variants.es"),
    }
    assert validate(Template("marketing", "en", {"en": "ok"}, sender="+34600000001")) == []
    assert validate(Template("marketing", "en", {})) != []

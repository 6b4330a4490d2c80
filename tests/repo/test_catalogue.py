from pathlib import Path

from shared.topics import ALL, render_catalogue

DOC = Path(__file__).resolve().parents[2] / "docs" / "topics.md"


def test_docs_topic_catalogue_is_current() -> None:
    assert DOC.read_text() == render_catalogue(), "run: python -m shared.topics > docs/topics.md"


def test_every_topic_has_producers_and_consumers() -> None:
    for topic in ALL:
        assert topic.producers and topic.consumers and topic.key


def test_docs_configuration_is_current() -> None:
    from herald_tools.configdoc import render

    path = DOC.parent / "configuration.md"
    assert path.read_text() == render(), "run: python -m herald_tools.configdoc > docs/configuration.md"

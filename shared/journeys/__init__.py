"""Journeys: a contact's multi-step flow started by an event (docs/journeys.md).

``definition`` is the JSON model both ingest (the API validates and stores it) and the
scheduler (the engine runs it) read.
"""

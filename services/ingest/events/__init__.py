"""Contact events (docs/journeys.md): ``POST /v1/events[/batch]`` and the ``contact-events.v1`` topic.

Both paths share :class:`service.EventAcceptor`: validate, resolve the contact (tenant-scoped),
derive a stable event id, touch the contact's ``last_activity_at``, and publish
``ContactEventAcceptedEvent`` to ``contact-events.accepted.v1`` keyed by the phone.
"""

"""Status webhooks to customers: a transactional outbox and the worker that empties it.

``record()`` (handlers.py) calls :func:`rules.notifications` and :func:`repository.enqueue` in the transaction
that writes the new states, so a status change and its webhook row commit together.
:class:`WebhookWorker` claims due rows with ``FOR UPDATE SKIP LOCKED`` — only the head of
each message (its lowest pending ``seq``, flagged ``head``), so a message's callbacks are posted
in order and a claim reads only due heads — signs each body with the tenant's secret
(shared/signatures.py), posts it through one pooled aiohttp client, and writes the results of
the posts that ended back in one transaction: delivered, retried later with exponential backoff,
or dead-lettered, and the next row of each finished message made its head. See docs/webhooks.md.

Ordinary replies (``replies.v1`` with the tenant's reply webhook URL) go through the same
outbox and worker (:class:`ReplyWebhookHandler`, :func:`enqueue_replies`): their ordering key
is the conversation (tenant + handset number), so one handset's replies are posted in order.
See docs/replies.md.

Modules: ``rules`` (pure: what to post, bodies, ordering, retries, the gate), ``repository``
(the outbox's SQL), ``worker`` (the HTTP posting loop), ``handler`` (the replies lane's Kafka
handler); ``python -m services.reports.webhooks secret TENANT`` (``__main__``) prints a
tenant's signing secret (creating it if needed).
"""

"""One module per provider: everything about a provider's protocol that Herald's services share.

- :mod:`shared.providers.twilio`: Twilio's status map, status callback and incoming SMS
  parsers, ``X-Twilio-Signature``, the Messages API form, its error answers and list matching.
- :mod:`shared.providers.herald_http`: Herald's own JSON gateway API (the simulator speaks it):
  the batch item, the receipt format and its status map, the ``X-Herald-Signature`` v2 check.
- :mod:`shared.providers.webhook`: the generic JSON webhook provider: the body template, the
  request body and its signature, the id in an answer, error answers.

Pure code, no I/O: the dispatcher's adapters (``services/dispatcher/gateways/``) do the HTTP
and turn answers into outcomes; ingest's routes (``/v1/callbacks/twilio/…``,
``/v1/receipts/{gateway}``) check the request and publish what a module parsed. SMPP, which only
the dispatcher speaks, keeps its codec and receipt parser in ``services/dispatcher/gateways/``.
"""

"""The journey engine (docs/journeys.md).

- ``engine``: pure, synchronous: enrol, exit, wake and advance runs; ``now`` is passed in;
- ``repository``: the SQL (journeys, versions, runs, contacts, templates);
- ``handlers``: the contact-events lane handler and the durable timer that advances due runs;
- ``messages``: a send step rendered into the send request ingest accepts (``journeys.sends.v1``).
"""

"""Gateway simulator: a stand-in SMS provider for Herald's dispatcher and its tests.

``core`` holds the transport-free logic (store, exact counters, outcomes, receipt schedule,
failure modes); ``http`` is the HTTP face; ``app`` wires them into a process.
"""

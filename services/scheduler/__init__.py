"""scheduler: the single gate that decides whether and when each message may be sent."""

"""dispatcher: throttles and submits released messages to SMS gateways, exactly once."""

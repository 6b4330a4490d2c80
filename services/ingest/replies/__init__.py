"""Inbound replies: keywords (STOP/START/HELP), consent changes, confirmations, forwarding."""

"""Deliver: the outbox (durable, retried hand-off) and the senders."""

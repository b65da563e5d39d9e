"""Stateless HTTP front: validates requests, enqueues jobs in Redis, waits for results. Never imports torch."""

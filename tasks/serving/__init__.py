"""Retrieval people can use: the index step, search in both directions, the HTTP app and its page."""

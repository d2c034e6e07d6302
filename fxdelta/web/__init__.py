"""The local web page (inspect a rewritten model, pick modules). Empty so far; it imports only the public API."""

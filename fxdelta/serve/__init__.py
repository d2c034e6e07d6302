"""Serving many tasks from one backbone (named adapters, batches whose rows use different deltas).

Empty so far: the room where that feature goes, over the handle and the wings, under the faces.
"""

"""The vocabulary every stage shares: routes, entries, call conventions, paths, records, errors.

Nothing here imports torch.fx or transformers, and nothing here imports the rest of fxdelta.
"""

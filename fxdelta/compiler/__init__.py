"""The compiler, one stage per file: select -> observe -> build (``build.py`` drives the first half)
-> plan -> install (``install.py`` drives the second), with ``state.py`` holding what one backbone
keeps between calls (observations, traces, built sites, delta models).
"""

"""Operator tooling around the runtime: `voiceauth bench` and `voiceauth demo`, sample speech, plots.

Nothing in the runtime package imports from here (tests/test_layers.py checks it); plotting
needs the optional ``tools`` extra (matplotlib).
"""

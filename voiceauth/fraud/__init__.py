"""Fraud screens: spoof (synthetic / replayed speech) detection and the watchlist."""

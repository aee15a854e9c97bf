"""Docs tooling: pages, figures and tables generated from the registry and recorded data.

Used by ``scripts/make_docs.py`` and the experiment drivers; imports only normzoo's public API
(plus matplotlib, which ``pip install -e ".[docs]"`` brings).
"""

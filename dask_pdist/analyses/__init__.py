"""Analyses over a history or a store, each a sibling over its own block kernel:
:mod:`.summary` (the notebook's summary block, ``summarize``), :mod:`.info` (``describe``),
:mod:`.clusters` and :mod:`.events` (groups of identical tokens and their events),
:mod:`.neighbours` and :mod:`.neighbours_store` (exact k nearest neighbours, churn), and
:mod:`.plotting` (matplotlib, optional).
"""

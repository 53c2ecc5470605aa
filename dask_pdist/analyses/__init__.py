"""Analyses over a history or a store, each a sibling over its own block kernel:
:mod:`.summary` (the notebook's summary block, ``summarize``), :mod:`.info` (``describe``),
:mod:`.clusters` and :mod:`.events` (groups of identical tokens and their events),
:mod:`.neighbours` and :mod:`.neighbours_store` (exact k nearest neighbours, churn),
:mod:`.plotting` (matplotlib, optional), and :mod:`.report` with :mod:`.report_page` (one HTML page
of a store, plotly, optional).
"""

"""HTML reports a planner can share: one self-contained page per search, study or sweep.

``page`` assembles a page (sections, tables, Plotly figures with their JavaScript inlined,
render markers a headless browser reads); ``plans`` draws plans (the time-cost front, the
iteration breakdown, memory) and ``tables`` lists them; ``timeline`` draws the reference
replay of one plan; ``search`` writes a search's ``report.html``. The Chinchilla study and
the sweep write theirs with these pieces (``studies/chinchilla/report_html.py``,
``studies/sweep_report.py``).
Plotly is imported only while a page is built.
"""

from vtrain_opt.search.reporting.page import REPORT_FILE

__all__ = ["REPORT_FILE"]

"""CSV that is safe to open in a spreadsheet (OWASP "CSV Injection").

Names, user agents and other values from the public forms end up in the CSV
exports.  A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return is read as a formula by Excel, LibreOffice and Google Sheets
(``=HYPERLINK(...)``, ``=cmd|' /C calc'!A0``).  Following OWASP's advice, such
a cell is written with a single quote in front, which spreadsheets show as
text; the csv module then quotes the cell as usual.  JSON exports stay
verbatim: they are not opened by spreadsheets.
"""

from __future__ import annotations

import csv

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value):
    """``value`` with a leading ``'`` when a spreadsheet would read it as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SafeDictWriter(csv.DictWriter):
    """csv.DictWriter whose cells are neutralised (module docstring)."""

    def writerow(self, rowdict):
        return super().writerow({k: neutralise(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts):
        for row in rowdicts:
            self.writerow(row)

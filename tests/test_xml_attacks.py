"""XML attack files are refused with one line naming the file, in well under 100 MB.

Each file is imported in a fresh subprocess, which then reports its own peak RSS
(VmHWM from /proc/self/status; getrusage's ru_maxrss would carry over the pytest
parent's high-water mark through fork and exec), so the figure is the import's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUGHS = "".join(
    f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' if i else '<!ENTITY lol0 "lol">' for i in range(10)
)
WP = 'xmlns:wp="http://wordpress.org/export/1.2/"'
FILES = {
    "laughs-wxr.xml": f'<?xml version="1.0"?><!DOCTYPE rss [{LAUGHS}]><rss {WP}><channel><item>'
                      f"<title>&lol9;</title></item></channel></rss>",
    "laughs-feed.rss": f'<?xml version="1.0"?><!DOCTYPE rss [{LAUGHS}]><rss version="2.0"><channel>'
                       f"<item><title>&lol9;</title></item></channel></rss>",
    "laughs-atom.xml": f'<?xml version="1.0"?><!DOCTYPE feed [{LAUGHS}]><feed xmlns="http://www.w3.org/2005/Atom">'
                       f"<title>&lol9;</title></feed>",
    "quadratic.xml": '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY a "' + "x" * 50_000 + '">]>'
                     f'<rss version="2.0"><channel><title>{"&a;" * 20_000}</title></channel></rss>',
    "external.xml": '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                    f"<rss {WP}><channel><item><title>&xxe;</title></item></channel></rss>",
    "padded.xml": '<?xml version="1.0"?><!DOCTYPE rss [<!-- ' + "pad " * 20_000 + f"-->{LAUGHS}]>"
                  f"<rss {WP}><channel><item><title>&lol9;</title></item></channel></rss>",
}

SCRIPT = r"""
import json, sys
from pathlib import Path
from campaigns.importer import import_paths
from funnel.errors import InputError
try:
    import_paths([Path(sys.argv[1])], Path(sys.argv[2]))
    outcome = "imported"
except InputError as exc:
    outcome = str(exc)
status = Path("/proc/self/status").read_text()
peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
print(json.dumps([outcome, peak * 1024]))
"""


@pytest.mark.parametrize("name", sorted(FILES))
def test_xml_attack_is_refused_in_under_100_mb(tmp_path, name):
    f = tmp_path / name
    f.write_text(FILES[name], encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(f), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome, peak = json.loads(done.stdout)
    assert outcome.startswith(f"{f}: the XML declares entities"), outcome
    assert "\n" not in outcome
    assert peak < 100 * 1024 * 1024, f"peak RSS {peak / 1e6:.0f} MB"
    assert not (tmp_path / "out").exists()

"""Print the RESULTS.md tables of saved ``mmfinercam bench`` reports (bench.json files).

python benchmarks/report.py mmfinercam-bench/gpu/*.json
"""

import json
import sys
from pathlib import Path

from mmfinercam.apps.timing import to_markdown

for path in sys.argv[1:]:
    print(f"### {Path(path).stem}\n")
    print(to_markdown(json.loads(Path(path).read_text())))

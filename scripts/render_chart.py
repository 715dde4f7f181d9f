#!/usr/bin/env python3
"""Prints the Helm chart as Helm renders it (helm-python-sdk, Helm's own library, no helm
binary), for `kubectl apply -f -`. Usage: render_chart.py NAMESPACE [RELEASE]"""

import pathlib
import sys

import helm_python

CHART = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "helm" / "trust-sds"


def main() -> None:
    namespace = sys.argv[1]
    release = sys.argv[2] if len(sys.argv) > 2 else "trust-sds"
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(name=release, namespace=namespace, is_install=True)
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml") and text.strip():
            print(f"---\n# Source: {path}\n{text}")


if __name__ == "__main__":
    main()

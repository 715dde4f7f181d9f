#!/usr/bin/env python3
"""Checks that the Helm chart and the kustomize base describe the same objects.

Renders deploy/helm/trust-sds with its default values (Helm's own Go library through the
helm-python-sdk wheel: no helm binary or cluster needed), lints it strictly, and compares
every object with the kustomize base (which is a plain list of resources, so reading the
listed files is exactly what `kustomize build` produces, but for the namespace it sets).
Namespaces are ignored: the chart takes its namespace from `helm -n`. Exits non-zero and names each difference.
"""
import sys
from pathlib import Path

import helm_python
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "trust-sds"
BASE = ROOT / "deploy" / "kustomize"


def normalise(doc):
    doc["metadata"].pop("namespace", None)
    for subject in doc.get("subjects", []):
        subject.pop("namespace", None)
    return doc


def keyed(docs):
    out = {}
    for doc in docs:
        # The chart installs CRDs from crds/ and leaves the namespace to `helm -n`.
        if not doc or doc.get("kind") in ("CustomResourceDefinition", "Namespace"):
            continue
        out[(doc["kind"], doc["metadata"]["name"])] = normalise(doc)
    return out


def helm_objects():
    report = helm_python.lint(str(CHART), strict=True)
    errors = list(report.get("errors") or []) + [m for m in report.get("messages") or [] if m.get("severity", 0) >= 2]
    if errors:
        sys.exit(f"helm lint --strict failed: {errors}")
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(name="trust-sds", namespace="trust-sds", is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs.extend(yaml.safe_load_all(text))
    return keyed(docs)


def kustomize_objects():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    # `namespace:` only sets metadata.namespace, which normalise() ignores; any other
    # transformer would make the listed files differ from `kustomize build`.
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "resources"}, "base uses transformers: update this check"
    docs = []
    for resource in kustomization["resources"]:
        docs.extend(yaml.safe_load_all((BASE / resource).read_text()))
    return keyed(docs)


def main():
    helm, kust = helm_objects(), kustomize_objects()
    bad = [f"only in {'helm' if k in helm else 'kustomize'}: {k[0]}/{k[1]}" for k in sorted(set(helm) ^ set(kust))]
    bad += [f"differs: {k[0]}/{k[1]}" for k in sorted(set(helm) & set(kust)) if helm[k] != kust[k]]
    for line in bad:
        print(line)
    print(f"{len(set(helm) & set(kust))} objects compared, {len(bad)} differences")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

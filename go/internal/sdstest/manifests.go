package sdstest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// SecretYAML is a labelled Secret whose ca.crt is pem.
func SecretYAML(ns, name, pem string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n  labels:\n    mcp.kuadrant.io/secret: \"true\"\nstringData:\n  ca.crt: |\n", name, ns)
	for line := range strings.Lines(pem) {
		b.WriteString("    " + line)
	}
	return b.String()
}

// RegistrationYAML is an MCPServerRegistration whose caCertSecretRef names secret.
func RegistrationYAML(ns, name, secret string) string {
	return fmt.Sprintf("apiVersion: mcp.kuadrant.io/v1\nkind: MCPServerRegistration\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  prefix: %s_\n  targetRef:\n    group: gateway.networking.k8s.io\n    kind: HTTPRoute\n    name: %s-route\n  caCertSecretRef:\n    name: %s\n", name, ns, name, name, secret)
}

// WriteManifests writes docs as one multi-document YAML file, atomically (temp file and
// rename, as editors and the kubelet do), so the watching server never reads half a file.
func WriteManifests(t testing.TB, path string, docs ...string) {
	t.Helper()
	tmp := strings.TrimSuffix(path, filepath.Ext(path)) + ".tmp~"
	if err := os.WriteFile(tmp, []byte(strings.Join(docs, "---\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

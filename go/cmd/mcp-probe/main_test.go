package main

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/trust-sds/trust-sds/go/internal/sdstest"
)

func TestProbe(t *testing.T) {
	ca := sdstest.NewCA(t, "Team CA")
	dir := t.TempDir()
	sdstest.WriteManifests(t, filepath.Join(dir, "objects.yaml"),
		sdstest.RegistrationYAML("team", "api", "api-ca"),
		sdstest.SecretYAML("team", "api-ca", ca.PEM))
	server := sdstest.StartServer(t, dir, "127.0.0.1:0")
	upstream := sdstest.StartUpstream(t, ca.Leaf(t, "upstream.mcp.test"))
	args := func(extra ...string) []string {
		return append([]string{
			"--sds", "http://" + server.Addr,
			"--connect-to", upstream.Listener.Addr().String(),
			"--url", "https://upstream.mcp.test/mcp",
			"--timeout", "20s",
		}, extra...)
	}

	tests := []struct {
		name     string
		setup    func()
		args     []string
		wantCode int
		stdout   string // a regexp
		stderr   string
	}{
		{
			name:     "initialize answers",
			args:     args("--registration", "team/api"),
			wantCode: 0,
			stdout:   `^trust for team/api: version [0-9a-f]{16}\ninitialize: HTTP 200 from upstream ok 1\.2\.3 \(protocol 2025-06-18\) in \S+\n$`,
		},
		{
			name:     "over SotW",
			args:     args("--registration", "team/api", "--protocol", "sotw"),
			wantCode: 0,
			stdout:   `initialize: HTTP 200 from upstream ok`,
		},
		{
			name:     "upstream from another CA",
			setup:    func() { upstream.SetCertificate(sdstest.NewCA(t, "Stranger CA").Leaf(t, "upstream.mcp.test")) },
			args:     args("--registration", "team/api"),
			wantCode: 1,
			stdout:   `initialize failed: TLS handshake with upstream\.mcp\.test:443 failed: trustsds: certificate of upstream\.mcp\.test not trusted by bundle team/api version [0-9a-f]{16}: x509: certificate signed by unknown authority`,
		},
		{
			name:     "registration not served",
			args:     []string{"--sds", server.Addr, "--registration", "team/none", "--url", "https://upstream.mcp.test/mcp", "--timeout", "300ms"},
			wantCode: 1,
			stderr:   `no trust bundle for team/none: context deadline exceeded`,
		},
		{
			name:     "plain http URL",
			args:     []string{"--registration", "team/api", "--url", "http://upstream.mcp.test/mcp"},
			wantCode: 2,
			stderr:   `--url must be an https:// URL`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, stdout.String(), stderr.String())
			}
			if tt.stdout != "" && !regexp.MustCompile(tt.stdout).MatchString(stdout.String()) {
				t.Fatalf("stdout:\n%s\nwant a match for %s", stdout.String(), tt.stdout)
			}
			if tt.stderr != "" && !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("stderr:\n%s\nwant %q", stderr.String(), tt.stderr)
			}
		})
	}
}

package trustsds

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/trust-sds/trust-sds/go/internal/sdstest"
)

func TestParseBundle(t *testing.T) {
	ca := sdstest.NewCA(t, "Root A")
	other := sdstest.NewCA(t, "Root B")
	key := sdstest.KeyPEM(t)
	damaged := strings.Replace(other.PEM, "\n", "\n!!", 2)
	tests := []struct {
		name      string
		data      string
		wantCerts int
		wantErr   string
	}{
		{"one CA", ca.PEM, 1, ""},
		{"two CAs with comments around", "# team bundle\n" + ca.PEM + "\n\n# next\n" + other.PEM + "trailing words\n", 2, ""},
		{"empty", "", 0, "no valid PEM certificate blocks found"},
		{"garbage", "this is not PEM at all", 0, "no valid PEM certificate blocks found"},
		{"private key alone", key, 0, `unexpected PEM block type "PRIVATE KEY", expected CERTIFICATE`},
		{"private key after a CA", ca.PEM + key, 0, `unexpected PEM block type "PRIVATE KEY", expected CERTIFICATE`},
		{"leaf certificate", ca.LeafPEM(t, "leaf.mcp.test"), 0, `certificate for "leaf.mcp.test" is not a CA certificate`},
		{"CA then leaf", ca.PEM + ca.LeafPEM(t, "leaf.mcp.test"), 0, "is not a CA certificate"},
		{"not DER inside", "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n", 0, "failed to parse certificate: "},
		{"damaged block before a good one", damaged + ca.PEM, 0, "failed to parse certificate: malformed PEM block"},
		{"too large", ca.PEM + strings.Repeat("#", maxBundleBytes), 0, "data exceeds the maximum size (262144 bytes)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs, err := ParseBundle([]byte(tt.data))
			if tt.wantErr == "" {
				if err != nil || len(certs) != tt.wantCerts {
					t.Fatalf("got %d certificates, %v; want %d", len(certs), err, tt.wantCerts)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
			for line := range strings.Lines(tt.data) {
				if len(line) > 16 && strings.Contains(err.Error(), strings.TrimSpace(line)) {
					t.Fatalf("error echoes the input: %v", err)
				}
			}
		})
	}
}

func TestPoolsAreSharedAndReleased(t *testing.T) {
	ca := sdstest.NewCA(t, "Root A")
	certs, err := ParseBundle([]byte(ca.PEM))
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(nil, []string{"ns/a", "ns/b"})
	s.install("ns/a", "v1", []byte(ca.PEM), certs)
	s.install("ns/b", "v1", []byte(ca.PEM), certs)
	if s.get("ns/a").pool != s.get("ns/b").pool || s.poolCount() != 1 {
		t.Fatalf("one bundle should give one pool, have %d", s.poolCount())
	}
	if s.install("ns/a", "v1", []byte(ca.PEM), certs) {
		t.Fatal("installing the same bytes again reported a change")
	}
	for i := range 50 {
		rotated := sdstest.NewCA(t, "Root")
		rc, err := ParseBundle([]byte(rotated.PEM))
		if err != nil {
			t.Fatal(err)
		}
		s.install("ns/a", fmt.Sprintf("v%d", i+2), []byte(rotated.PEM), rc)
	}
	if s.poolCount() != 2 {
		t.Fatalf("after 50 rotations of one name, %d pools are alive, want 2", s.poolCount())
	}
	s.withdraw("ns/a")
	s.unsubscribe([]string{"ns/b"})
	if s.poolCount() != 0 {
		t.Fatalf("%d pools alive with no trust held", s.poolCount())
	}
}

func TestBackoff(t *testing.T) {
	b := backoff{initial: 100 * time.Millisecond, max: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		w *= time.Millisecond
		if d := b.delay(false); d < w/2 || d > w {
			t.Fatalf("attempt %d: delay %v outside [%v, %v]", i, d, w/2, w)
		}
	}
	if d := b.delay(true); d > 100*time.Millisecond {
		t.Fatalf("after progress the delay should start again from 100ms, got %v", d)
	}
}

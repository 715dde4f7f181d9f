package trustsds

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trust-sds/trust-sds/go/internal/sdstest"
)

// These tests run the real trust-sds binary on a temporary manifests directory and verify
// crypto/tls HTTPS upstreams with the trust it serves.

var protocols = []Protocol{Delta, SotW}

func TestServedCATrustsUpstream(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			ca := sdstest.NewCA(t, "Team CA")
			d := deploy(t, registered("team", "api", ca.PEM)...)
			events := newRecorder()
			c := newClient(t, d.server.Addr, []string{"team/api"}, WithProtocol(p), WithNode("go-test", "tests"), events.option())
			waitReady(t, c)
			events.waitFor(t, "updated", is(Updated, "team/api"))
			if b, _ := c.Bundle("team/api"); len(b.Version) != 16 || len(b.Certificates) != 1 {
				t.Fatalf("bundle %q with %d certificates, want a 16-hex version and 1", b.Version, len(b.Certificates))
			}

			upstream := sdstest.StartUpstream(t, ca.Leaf(t, upstreamHost))
			browser := newBrowser(t, c, "team/api", upstream)
			if issuer, _ := browser.mustGet(t); issuer != "Team CA" {
				t.Fatalf("issuer %q", issuer)
			}

			// Trust is per name: a certificate from any other CA is refused.
			upstream.SetCertificate(sdstest.NewCA(t, "Stranger CA").Leaf(t, upstreamHost))
			browser.mustFailNew(t, "certificate signed by unknown authority")
		})
	}
}

// One http.Client, built once, follows A -> A+B -> B while the upstream moves from a
// certificate of A to one of B: open connections survive each rotation, new ones verify
// with the trust current at their handshake.
func TestRotationOnOneTransport(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			caA, caB := sdstest.NewCA(t, "CA A"), sdstest.NewCA(t, "CA B")
			leafA, leafB := caA.Leaf(t, upstreamHost), caB.Leaf(t, upstreamHost)
			d := deploy(t, registered("team", "api", caA.PEM)...)
			events := newRecorder()
			c := newClient(t, d.server.Addr, []string{"team/api"}, WithProtocol(p), WithSystemRoots(false), events.option())
			waitReady(t, c)
			vA := version(t, c, "team/api")
			upstream := sdstest.StartUpstream(t, leafA)
			browser := newBrowser(t, c, "team/api", upstream)
			if issuer, _ := browser.mustGet(t); issuer != "CA A" {
				t.Fatalf("issuer %q", issuer)
			}

			d.write(registered("team", "api", caA.PEM, caB.PEM)...)
			vAB := events.waitFor(t, "rotation to A+B", func(e Event) bool {
				return e.Kind == Updated && e.Version != vA
			}).Version
			if b, _ := c.Bundle("team/api"); len(b.Certificates) != 2 {
				t.Fatalf("A+B has %d certificates", len(b.Certificates))
			}
			if _, reused := browser.mustGet(t); !reused {
				t.Fatal("the rotation dropped the open connection")
			}
			upstream.SetCertificate(leafB)
			if issuer := browser.mustGetNew(t); issuer != "CA B" {
				t.Fatalf("issuer %q", issuer)
			}

			d.write(registered("team", "api", caB.PEM)...)
			vB := events.waitFor(t, "rotation to B", func(e Event) bool {
				return e.Kind == Updated && e.Version != vAB
			}).Version
			if vB == vA || vB == vAB {
				t.Fatalf("versions %s %s %s not distinct", vA, vAB, vB)
			}
			if _, reused := browser.mustGet(t); !reused {
				t.Fatal("the rotation dropped the open connection")
			}
			if issuer := browser.mustGetNew(t); issuer != "CA B" {
				t.Fatalf("issuer %q", issuer)
			}
			// A is rotated out: a server still presenting A's certificate is refused.
			upstream.SetCertificate(leafA)
			browser.mustFailNew(t, "certificate signed by unknown authority")
			if n := c.store.poolCount(); n != 1 {
				t.Fatalf("%d certificate pools alive after rotations, want 1", n)
			}
		})
	}
}

func TestWithdrawalFailsClosed(t *testing.T) {
	ca := sdstest.NewCA(t, "Team CA")
	d := deploy(t, registered("team", "api", ca.PEM)...)
	events := newRecorder()
	c := newClient(t, d.server.Addr, []string{"team/api"}, events.option())
	waitReady(t, c)
	upstream := sdstest.StartUpstream(t, ca.Leaf(t, upstreamHost))
	browser := newBrowser(t, c, "team/api", upstream)
	browser.mustGet(t)

	// The registration goes; its Secret stays, but nothing references it any more.
	d.write(sdstest.SecretYAML("team", "api-ca", ca.PEM))
	events.waitFor(t, "removed", is(Removed, "team/api"))
	if _, ok := c.Bundle("team/api"); ok {
		t.Fatal("trust still held after withdrawal")
	}
	browser.mustFailNew(t, "no trust bundle for team/api (not served, or withdrawn)")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.WaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "team/api") {
		t.Fatalf("WaitReady after withdrawal: %v", err)
	}

	// Served again: trust comes back without any action by the client's user.
	d.write(registered("team", "api", ca.PEM)...)
	events.waitFor(t, "updated", is(Updated, "team/api"))
	browser.mustGetNew(t)
}

// SotW has no removal message: a response that omits a subscribed name withdraws it.
// trust-sds sends one when another subscribed name changes.
func TestSotWWithdrawalByAbsence(t *testing.T) {
	caA, caB, caB2 := sdstest.NewCA(t, "CA A"), sdstest.NewCA(t, "CA B"), sdstest.NewCA(t, "CA B2")
	d := deploy(t, append(registered("team", "a", caA.PEM), registered("team", "b", caB.PEM)...)...)
	events := newRecorder()
	c := newClient(t, d.server.Addr, []string{"team/a", "team/b"}, WithProtocol(SotW), events.option())
	waitReady(t, c)
	vB := version(t, c, "team/b")

	// One response carries team/b's new bundle and no team/a.
	d.write(append([]string{sdstest.SecretYAML("team", "a-ca", caA.PEM)}, registered("team", "b", caB2.PEM)...)...)
	events.waitFor(t, "removed", is(Removed, "team/a"))
	if _, ok := c.Bundle("team/a"); ok {
		t.Fatal("team/a still trusted")
	}
	if v := version(t, c, "team/b"); v == vB {
		t.Fatalf("team/b still at %s", v)
	}
}

// While trust-sds is away the last good trust stays; when it is back on the same address
// the client resumes and follows the next rotation.
func TestServerRestartKeepsLastTrust(t *testing.T) {
	caA, caB := sdstest.NewCA(t, "CA A"), sdstest.NewCA(t, "CA B")
	d := deploy(t, registered("team", "api", caA.PEM)...)
	events := newRecorder()
	c := newClient(t, d.server.Addr, []string{"team/api"}, WithBackoff(50*time.Millisecond, time.Second), events.option())
	waitReady(t, c)
	vA := version(t, c, "team/api")
	upstream := sdstest.StartUpstream(t, caA.Leaf(t, upstreamHost))
	browser := newBrowser(t, c, "team/api", upstream)
	browser.mustGet(t)

	d.server.Kill()
	events.waitFor(t, "disconnected", func(e Event) bool { return e.Kind == Disconnected })
	if issuer := browser.mustGetNew(t); issuer != "CA A" {
		t.Fatalf("issuer %q", issuer)
	}
	if v := version(t, c, "team/api"); v != vA {
		t.Fatalf("version changed to %s while the server was away", v)
	}

	d.restart()
	events.waitFor(t, "connected", func(e Event) bool { return e.Kind == Connected })
	d.write(registered("team", "api", caB.PEM)...)
	e := events.waitFor(t, "rotation after restart", is(Updated, "team/api"))
	if e.Version == vA {
		t.Fatalf("pushed the old version %s again", vA)
	}
	upstream.SetCertificate(caB.Leaf(t, upstreamHost))
	if issuer := browser.mustGetNew(t); issuer != "CA B" {
		t.Fatalf("issuer %q", issuer)
	}
}

// A name withdrawn while trust-sds was away is dropped on reconnect: the client sends the
// version it holds (initial_resource_versions) and the server answers with its removal.
func TestWithdrawnWhileAwayFailsClosedOnReconnect(t *testing.T) {
	ca := sdstest.NewCA(t, "Team CA")
	d := deploy(t, append(registered("team", "gone", ca.PEM), registered("team", "stays", ca.PEM)...)...)
	events := newRecorder()
	c := newClient(t, d.server.Addr, []string{"team/gone", "team/stays"}, WithBackoff(50*time.Millisecond, time.Second), events.option())
	waitReady(t, c)

	d.server.Kill()
	events.waitFor(t, "disconnected", func(e Event) bool { return e.Kind == Disconnected })
	d.write(append([]string{sdstest.SecretYAML("team", "gone-ca", ca.PEM)}, registered("team", "stays", ca.PEM)...)...)
	d.restart()
	events.waitFor(t, "removed", is(Removed, "team/gone"))
	if _, ok := c.Bundle("team/stays"); !ok {
		t.Fatal("team/stays dropped")
	}
}

// Names come and go at run time on the same stream.
func TestSubscriptionChangesAtRunTime(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			caA, caB := sdstest.NewCA(t, "CA A"), sdstest.NewCA(t, "CA B")
			d := deploy(t, append(registered("team", "a", caA.PEM), registered("team", "b", caB.PEM)...)...)
			events := newRecorder()
			c := newClient(t, d.server.Addr, []string{"team/a"}, WithProtocol(p), events.option())
			waitReady(t, c)

			c.Subscribe("team/b")
			events.waitFor(t, "updated", is(Updated, "team/b"))
			waitReady(t, c)
			upstream := sdstest.StartUpstream(t, caB.Leaf(t, upstreamHost))
			newBrowser(t, c, "team/b", upstream).mustGet(t)

			c.Unsubscribe("team/a")
			if _, ok := c.Bundle("team/a"); ok {
				t.Fatal("team/a still trusted after Unsubscribe")
			}
			upstream.SetCertificate(caA.Leaf(t, upstreamHost))
			newBrowser(t, c, "team/a", upstream).mustFailNew(t, "no trust bundle for team/a")
			if got := c.Names(); len(got) != 1 || got[0] != "team/b" {
				t.Fatalf("names %v", got)
			}
			// team/b keeps following rotations after the change.
			d.write(append(registered("team", "a", caA.PEM), registered("team", "b", caA.PEM)...)...)
			events.waitFor(t, "updated", is(Updated, "team/b"))
			newBrowser(t, c, "team/b", upstream).mustGet(t)
		})
	}
}

// Verification keeps the host-name check: a certificate from the served CA for another
// name is refused, and a connection with no name to check fails instead of skipping it.
func TestHostNameIsChecked(t *testing.T) {
	ca := sdstest.NewCA(t, "Team CA")
	d := deploy(t, registered("team", "api", ca.PEM)...)
	c := newClient(t, d.server.Addr, []string{"team/api"})
	waitReady(t, c)
	upstream := sdstest.StartUpstream(t, ca.Leaf(t, "other.mcp.test"))
	newBrowser(t, c, "team/api", upstream).mustFailNew(t, "certificate is valid for other.mcp.test, not upstream.mcp.test")

	// An IP-literal URL: TLS carries no name, so one must be given.
	upstream.SetCertificate(ca.Leaf(t, upstreamHost))
	byIP := &http.Client{Transport: &http.Transport{TLSClientConfig: c.TLSConfig("team/api", "")}, Timeout: sdstest.Timeout}
	if _, err := byIP.Get(upstream.URL); err == nil || !strings.Contains(err.Error(), "no server name to verify") {
		t.Fatalf("IP without a server name: %v", err)
	}
	named := &http.Transport{TLSClientConfig: c.TLSConfig("team/api", upstreamHost)}
	defer named.CloseIdleConnections()
	resp, err := (&http.Client{Transport: named, Timeout: sdstest.Timeout}).Get(upstream.URL)
	if err != nil {
		t.Fatalf("IP with server name %s: %v", upstreamHost, err)
	}
	resp.Body.Close()
}

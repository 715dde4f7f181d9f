package trustsds

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"

	"github.com/trust-sds/trust-sds/go/internal/sdstest"
)

// These tests drive the client with a scripted SDS server, for what a correct trust-sds
// never sends (bad bundles) and for the exact requests the client makes.

// badBundles are served bundles the client must refuse, with the NACK text expected.
func badBundles(t *testing.T, name string) []struct {
	what, pem, want string
} {
	ca := sdstest.NewCA(t, "Other CA")
	return []struct{ what, pem, want string }{
		{"garbage", "definitely not PEM", "bundle for " + name + " rejected: no valid PEM certificate blocks found"},
		{"leaf certificate", ca.LeafPEM(t, "leaf.mcp.test"), `bundle for ` + name + ` rejected: certificate for "leaf.mcp.test" is not a CA certificate`},
		{"private key", ca.PEM + sdstest.KeyPEM(t), `unexpected PEM block type "PRIVATE KEY", expected CERTIFICATE`},
		{"broken DER", "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n", "failed to parse certificate: "},
	}
}

func TestDeltaNACKKeepsLastGoodTrust(t *testing.T) {
	const name = "team/api"
	ca := sdstest.NewCA(t, "Team CA")
	sds := sdstest.StartScripted(t)
	events := newRecorder()
	c := newClient(t, sds.Addr, []string{name}, WithNode("broker-1", "mcp-gateway"), events.option())
	stream := sds.NextDelta(t)
	first := stream.Recv(t)
	if first.GetNode().GetId() != "broker-1" || first.GetNode().GetCluster() != "mcp-gateway" {
		t.Fatalf("first request node %v", first.GetNode())
	}
	if !slices.Equal(first.GetResourceNamesSubscribe(), []string{name}) || first.GetTypeUrl() != sdstest.SecretTypeURL {
		t.Fatalf("first request %v", first)
	}
	stream.Send(t, &discoveryv3.DeltaDiscoveryResponse{
		Nonce:     "n1",
		Resources: []*discoveryv3.Resource{sdstest.DeltaResource(t, name, "v1", sdstest.Secret(name, ca.PEM))},
	})
	if ack := stream.Recv(t); ack.GetResponseNonce() != "n1" || ack.GetErrorDetail() != nil || ack.GetNode() != nil {
		t.Fatalf("want a plain ACK of n1, got %v", ack)
	}
	waitReady(t, c)
	upstream := sdstest.StartUpstream(t, ca.Leaf(t, upstreamHost))
	browser := newBrowser(t, c, name, upstream)

	bad := badBundles(t, name)
	bad = append(bad, struct{ what, pem, want string }{"wrong type", "", "resource has type type.googleapis.com/envoy.config.core.v3.Node"})
	for i, b := range bad {
		t.Run(b.what, func(t *testing.T) {
			nonce := "bad-" + b.what
			res := sdstest.DeltaResource(t, name, "v-bad", sdstest.Secret(name, b.pem))
			if b.what == "wrong type" {
				res = sdstest.DeltaResource(t, name, "v-bad", &corev3.Node{Id: "x"})
			}
			stream.Send(t, &discoveryv3.DeltaDiscoveryResponse{Nonce: nonce, Resources: []*discoveryv3.Resource{res}})
			nack := stream.Recv(t)
			if nack.GetResponseNonce() != nonce || nack.GetErrorDetail() == nil {
				t.Fatalf("want a NACK of %s, got %v", nonce, nack)
			}
			if codes.Code(nack.GetErrorDetail().GetCode()) != codes.InvalidArgument || !strings.Contains(nack.GetErrorDetail().GetMessage(), b.want) {
				t.Fatalf("error_detail %v, want INVALID_ARGUMENT with %q", nack.GetErrorDetail(), b.want)
			}
			e := events.waitFor(t, "rejected", is(Rejected, name))
			if e.Version != "v-bad" || !strings.Contains(e.Err.Error(), b.want) {
				t.Fatalf("event %+v", e)
			}
			if v := version(t, c, name); v != "v1" {
				t.Fatalf("trust moved to %s", v)
			}
			if i == 0 {
				browser.mustGetNew(t)
			}
		})
	}
	// The last good trust still verifies, and the next good bundle is taken.
	browser.mustGetNew(t)
	other := sdstest.NewCA(t, "Next CA")
	stream.Send(t, &discoveryv3.DeltaDiscoveryResponse{
		Nonce:     "n2",
		Resources: []*discoveryv3.Resource{sdstest.DeltaResource(t, name, "v2", sdstest.Secret(name, other.PEM))},
	})
	if ack := stream.Recv(t); ack.GetResponseNonce() != "n2" || ack.GetErrorDetail() != nil {
		t.Fatalf("want an ACK of n2, got %v", ack)
	}
	if e := events.waitFor(t, "updated", is(Updated, name)); e.Version != "v2" {
		t.Fatalf("event %+v", e)
	}
}

func TestSotWNACKKeepsLastGoodTrust(t *testing.T) {
	const name = "team/api"
	ca := sdstest.NewCA(t, "Team CA")
	sds := sdstest.StartScripted(t)
	events := newRecorder()
	c := newClient(t, sds.Addr, []string{name}, WithProtocol(SotW), WithNode("broker-1", "mcp-gateway"), events.option())
	stream := sds.NextSotW(t)
	first := stream.Recv(t)
	if first.GetNode().GetId() != "broker-1" || !slices.Equal(first.GetResourceNames(), []string{name}) || first.GetResponseNonce() != "" {
		t.Fatalf("first request %v", first)
	}
	stream.Send(t, sdstest.SotWResponse(t, "v1", "n1", sdstest.Secret(name, ca.PEM)))
	ack := stream.Recv(t)
	if ack.GetResponseNonce() != "n1" || ack.GetVersionInfo() != "v1" || ack.GetErrorDetail() != nil || ack.GetNode() != nil {
		t.Fatalf("want an ACK of v1/n1, got %v", ack)
	}
	waitReady(t, c)

	for _, b := range badBundles(t, name) {
		t.Run(b.what, func(t *testing.T) {
			nonce := "bad-" + b.what
			stream.Send(t, sdstest.SotWResponse(t, "v-bad", nonce, sdstest.Secret(name, b.pem)))
			nack := stream.Recv(t)
			// A NACK names the version still in use, the refused response's nonce and why.
			if nack.GetResponseNonce() != nonce || nack.GetVersionInfo() != "v1" || !strings.Contains(nack.GetErrorDetail().GetMessage(), b.want) {
				t.Fatalf("want a NACK of %s keeping v1 with %q, got %v", nonce, b.want, nack)
			}
			events.waitFor(t, "rejected", is(Rejected, name))
			if v := version(t, c, name); v != "v1" {
				t.Fatalf("trust moved to %s", v)
			}
		})
	}
	upstream := sdstest.StartUpstream(t, ca.Leaf(t, upstreamHost))
	newBrowser(t, c, name, upstream).mustGet(t)
}

// SotW: a response that leaves out a name the client holds withdraws it, unless some
// resource in it cannot be decoded (then which names it carries is not known).
func TestSotWAbsenceWithdraws(t *testing.T) {
	ca := sdstest.NewCA(t, "Team CA")
	sds := sdstest.StartScripted(t)
	events := newRecorder()
	c := newClient(t, sds.Addr, []string{"team/a", "team/b"}, WithProtocol(SotW), events.option())
	stream := sds.NextSotW(t)
	stream.Recv(t)
	stream.Send(t, sdstest.SotWResponse(t, "v1", "n1", sdstest.Secret("team/a", ca.PEM), sdstest.Secret("team/b", ca.PEM)))
	stream.Recv(t)
	waitReady(t, c)

	stream.Send(t, sdstest.SotWResponse(t, "v2", "n2", sdstest.Secret("team/b", ca.PEM), &corev3.Node{Id: "junk"}))
	if nack := stream.Recv(t); nack.GetErrorDetail() == nil {
		t.Fatalf("want a NACK, got %v", nack)
	}
	if _, ok := c.Bundle("team/a"); !ok {
		t.Fatal("team/a dropped on a response the client could not fully read")
	}

	stream.Send(t, sdstest.SotWResponse(t, "v3", "n3", sdstest.Secret("team/b", ca.PEM)))
	if ack := stream.Recv(t); ack.GetErrorDetail() != nil || ack.GetVersionInfo() != "v3" {
		t.Fatalf("want an ACK of v3, got %v", ack)
	}
	events.waitFor(t, "removed", is(Removed, "team/a"))
	if _, ok := c.Bundle("team/b"); !ok {
		t.Fatal("team/b dropped")
	}
}

func TestDeltaRemovedResourcesWithdraw(t *testing.T) {
	ca := sdstest.NewCA(t, "Team CA")
	sds := sdstest.StartScripted(t)
	events := newRecorder()
	c := newClient(t, sds.Addr, []string{"team/a", "team/b"}, events.option())
	stream := sds.NextDelta(t)
	stream.Recv(t)
	stream.Send(t, &discoveryv3.DeltaDiscoveryResponse{Nonce: "n1", Resources: []*discoveryv3.Resource{
		sdstest.DeltaResource(t, "team/a", "va", sdstest.Secret("team/a", ca.PEM)),
		sdstest.DeltaResource(t, "team/b", "vb", sdstest.Secret("team/b", ca.PEM)),
	}})
	stream.Recv(t)
	waitReady(t, c)
	stream.Send(t, &discoveryv3.DeltaDiscoveryResponse{Nonce: "n2", RemovedResources: []string{"team/a"}})
	if ack := stream.Recv(t); ack.GetResponseNonce() != "n2" || ack.GetErrorDetail() != nil {
		t.Fatalf("want an ACK of n2, got %v", ack)
	}
	if e := events.waitFor(t, "removed", is(Removed, "team/a")); e.Version != "va" {
		t.Fatalf("event %+v", e)
	}
	stream.Send(t, &discoveryv3.DeltaDiscoveryResponse{Nonce: "n3", RemovedResourceNames: []*discoveryv3.ResourceName{{Name: "team/b"}}})
	stream.Recv(t)
	events.waitFor(t, "removed", is(Removed, "team/b"))
}

// A reconnect sends the node again and the versions held, so the server can skip them.
func TestDeltaReconnectResumesFromHeldVersions(t *testing.T) {
	ca := sdstest.NewCA(t, "Team CA")
	sds := sdstest.StartScripted(t)
	events := newRecorder()
	c := newClient(t, sds.Addr, []string{"team/a", "team/b"}, WithNode("broker-1", "gw"), WithBackoff(10*time.Millisecond, 100*time.Millisecond), events.option())
	stream := sds.NextDelta(t)
	stream.Recv(t)
	stream.Send(t, &discoveryv3.DeltaDiscoveryResponse{Nonce: "n1", Resources: []*discoveryv3.Resource{
		sdstest.DeltaResource(t, "team/a", "va1", sdstest.Secret("team/a", ca.PEM)),
	}})
	stream.Recv(t)
	events.waitFor(t, "updated", is(Updated, "team/a"))

	stream.End()
	events.waitFor(t, "disconnected", func(e Event) bool { return e.Kind == Disconnected })
	if v := version(t, c, "team/a"); v != "va1" {
		t.Fatalf("trust lost while disconnected: %q", v)
	}
	again := sds.NextDelta(t)
	first := again.Recv(t)
	if first.GetNode().GetId() != "broker-1" || first.GetNode().GetCluster() != "gw" {
		t.Fatalf("reconnect without node: %v", first)
	}
	if !slices.Equal(first.GetResourceNamesSubscribe(), []string{"team/a", "team/b"}) {
		t.Fatalf("subscribe %v", first.GetResourceNamesSubscribe())
	}
	if want := map[string]string{"team/a": "va1"}; !maps.Equal(first.GetInitialResourceVersions(), want) {
		t.Fatalf("initial_resource_versions %v, want %v", first.GetInitialResourceVersions(), want)
	}
	events.waitFor(t, "connected", func(e Event) bool { return e.Kind == Connected })
}

// Subscribe and Unsubscribe change the stream's names; an emptied subscription ends the
// stream (an empty first request would mean every name), and a new name opens a new one.
func TestDeltaSubscriptionRequests(t *testing.T) {
	ca := sdstest.NewCA(t, "Team CA")
	sds := sdstest.StartScripted(t)
	c := newClient(t, sds.Addr, []string{"team/a"})
	stream := sds.NextDelta(t)
	stream.Recv(t)
	stream.Send(t, &discoveryv3.DeltaDiscoveryResponse{Nonce: "n1", Resources: []*discoveryv3.Resource{
		sdstest.DeltaResource(t, "team/a", "va", sdstest.Secret("team/a", ca.PEM)),
	}})
	stream.Recv(t)
	waitReady(t, c)

	c.Subscribe("team/b", "team/a")
	if r := stream.Recv(t); !slices.Equal(r.GetResourceNamesSubscribe(), []string{"team/b"}) || len(r.GetResourceNamesUnsubscribe()) != 0 {
		t.Fatalf("want subscribe [team/b], got %v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.WaitReady(ctx); err == nil || !strings.Contains(err.Error(), "no trust bundle for team/b") {
		t.Fatalf("WaitReady with team/b missing: %v", err)
	}
	c.Unsubscribe("team/a")
	if r := stream.Recv(t); !slices.Equal(r.GetResourceNamesUnsubscribe(), []string{"team/a"}) || len(r.GetResourceNamesSubscribe()) != 0 {
		t.Fatalf("want unsubscribe [team/a], got %v", r)
	}
	if _, ok := c.Bundle("team/a"); ok {
		t.Fatal("team/a still trusted")
	}
	// A late push for the name just dropped is ignored (and ACKed: it is a race, not an error).
	stream.Send(t, &discoveryv3.DeltaDiscoveryResponse{Nonce: "n2", Resources: []*discoveryv3.Resource{
		sdstest.DeltaResource(t, "team/a", "va", sdstest.Secret("team/a", ca.PEM)),
	}})
	if r := stream.Recv(t); r.GetResponseNonce() != "n2" || r.GetErrorDetail() != nil {
		t.Fatalf("want an ACK of n2, got %v", r)
	}
	if _, ok := c.Bundle("team/a"); ok {
		t.Fatal("team/a trusted again after Unsubscribe")
	}

	c.Unsubscribe("team/b")
	stream.WaitClosed(t)
	c.Subscribe("team/c")
	if first := sds.NextDelta(t).Recv(t); !slices.Equal(first.GetResourceNamesSubscribe(), []string{"team/c"}) || len(first.GetInitialResourceVersions()) != 0 {
		t.Fatalf("new stream's first request %v", first)
	}
}

func TestWaitReadyFailsWithContext(t *testing.T) {
	sds := sdstest.StartScripted(t)
	c := newClient(t, sds.Addr, []string{"team/never"})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.WaitReady(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no trust bundle for team/never") {
		t.Fatalf("got %v", err)
	}
}

func TestNewRefusesWildcardNames(t *testing.T) {
	for _, n := range []string{"", "*"} {
		if _, err := New(context.Background(), "127.0.0.1:1", []string{n}); err == nil {
			t.Fatalf("name %q accepted", n)
		}
	}
}

func TestNewRefusesBadTarget(t *testing.T) {
	if _, err := New(context.Background(), "dns://bad host\x7f", []string{"team/a"}); err == nil {
		t.Fatal("bad target accepted")
	}
}

package trustsds

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trust-sds/trust-sds/go/internal/sdstest"
)

// upstreamHost is the name upstream certificates are issued for; tests dial the local
// upstream whatever the URL says, as /etc/hosts or DNS would.
const upstreamHost = "upstream.mcp.test"

// recorder collects a Client's events, so tests wait for changes instead of sleeping.
type recorder struct{ ch chan Event }

func newRecorder() *recorder { return &recorder{ch: make(chan Event, 4096)} }

func (r *recorder) option() Option {
	return WithOnUpdate(func(e Event) {
		select {
		case r.ch <- e:
		default: // a test that stops reading must not block the client
		}
	})
}

// waitFor discards events until one matches, failing the test after sdstest.Timeout.
func (r *recorder) waitFor(t *testing.T, what string, match func(Event) bool) Event {
	t.Helper()
	deadline := time.After(sdstest.Timeout)
	for {
		select {
		case e := <-r.ch:
			if match(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s event within %v", what, sdstest.Timeout)
		}
	}
}

func is(kind EventKind, name string) func(Event) bool {
	return func(e Event) bool { return e.Kind == kind && e.Name == name }
}

// newClient starts a Client that is closed when the test ends.
func newClient(t *testing.T, target string, names []string, opts ...Option) *Client {
	t.Helper()
	c, err := New(context.Background(), target, names, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func waitReady(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sdstest.Timeout)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

func version(t *testing.T, c *Client, name string) string {
	t.Helper()
	b, ok := c.Bundle(name)
	if !ok {
		t.Fatalf("no trust held for %s", name)
	}
	return b.Version
}

// deployment is a manifests directory served by the real trust-sds binary.
type deployment struct {
	t      *testing.T
	file   string
	server *sdstest.Server
}

func deploy(t *testing.T, docs ...string) *deployment {
	t.Helper()
	dir := t.TempDir()
	d := &deployment{t: t, file: filepath.Join(dir, "objects.yaml")}
	d.write(docs...)
	d.server = sdstest.StartServer(t, dir, "127.0.0.1:0")
	return d
}

// write replaces the manifests; the server notices and pushes the difference.
func (d *deployment) write(docs ...string) {
	d.t.Helper()
	sdstest.WriteManifests(d.t, d.file, docs...)
}

// restart starts a new server on the same directory and port.
func (d *deployment) restart() {
	d.t.Helper()
	d.server = sdstest.StartServer(d.t, filepath.Dir(d.file), d.server.Addr)
}

// registered is the manifests for one registration ns/name trusting pems.
func registered(ns, name string, pems ...string) []string {
	return []string{
		sdstest.RegistrationYAML(ns, name, name+"-ca"),
		sdstest.SecretYAML(ns, name+"-ca", strings.Join(pems, "")),
	}
}

// browser is one long-lived http.Client whose transport verifies with a Client's trust.
type browser struct {
	http      *http.Client
	transport *http.Transport
	url       string
}

// newBrowser talks to u as https://upstream.mcp.test/, trusting what c holds for name.
func newBrowser(t *testing.T, c *Client, name string, u *sdstest.Upstream) *browser {
	t.Helper()
	addr := u.Listener.Addr().String()
	var dialer net.Dialer
	transport := &http.Transport{
		TLSClientConfig: c.TLSConfig(name, ""),
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(transport.CloseIdleConnections)
	return &browser{
		http:      &http.Client{Transport: transport, Timeout: sdstest.Timeout},
		transport: transport,
		url:       "https://" + upstreamHost + "/",
	}
}

// get does a GET and reports the issuer of the upstream's certificate and whether an
// existing connection was reused.
func (b *browser) get() (issuer string, reused bool, err error) {
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, b.url, nil)
	if err != nil {
		return "", false, err
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", reused, &statusError{resp.StatusCode}
	}
	return resp.TLS.PeerCertificates[0].Issuer.CommonName, reused, nil
}

func (b *browser) mustGet(t *testing.T) (issuer string, reused bool) {
	t.Helper()
	issuer, reused, err := b.get()
	if err != nil {
		t.Fatalf("GET %s: %v", b.url, err)
	}
	return issuer, reused
}

// mustFailNew drops idle connections (so the next request makes a new handshake) and
// expects the request to fail with want in the error.
func (b *browser) mustFailNew(t *testing.T, want string) {
	t.Helper()
	b.transport.CloseIdleConnections()
	_, _, err := b.get()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("GET %s: got %v, want an error containing %q", b.url, err, want)
	}
}

// mustGetNew is mustGet on a new connection.
func (b *browser) mustGetNew(t *testing.T) string {
	t.Helper()
	b.transport.CloseIdleConnections()
	issuer, _ := b.mustGet(t)
	return issuer
}

type statusError struct{ code int }

func (e *statusError) Error() string { return "HTTP " + http.StatusText(e.code) }

package sdstest

import (
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// Initialized is the JSON-RPC answer the upstream gives to a POST, as an MCP server
// answers `initialize`.
const Initialized = `{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"upstream ok","version":"1.2.3"}}}`

// Upstream is an HTTPS server (crypto/tls) whose certificate can change while it runs:
// new handshakes get the new one, open connections keep theirs.
type Upstream struct {
	*httptest.Server
	cert atomic.Pointer[tls.Certificate]
}

// StartUpstream serves HTTPS with leaf: "ok" to a GET, Initialized to a POST.
func StartUpstream(t testing.TB, leaf tls.Certificate) *Upstream {
	t.Helper()
	u := &Upstream{}
	u.cert.Store(&leaf)
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, Initialized)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	// Refused handshakes are what many tests expect; they are not worth a log line.
	u.Config.ErrorLog = log.New(io.Discard, "", 0)
	u.TLS = &tls.Config{
		// Each handshake gets a config with the current certificate, with or without SNI
		// (httptest would otherwise answer SNI-less handshakes with its own certificate).
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{
				Certificates: []tls.Certificate{*u.cert.Load()},
				NextProtos:   []string{"http/1.1"},
			}, nil
		},
	}
	u.StartTLS()
	t.Cleanup(u.Close)
	return u
}

// SetCertificate serves leaf from the next handshake on.
func (u *Upstream) SetCertificate(leaf tls.Certificate) { u.cert.Store(&leaf) }

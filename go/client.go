// Package trustsds subscribes to trust-sds, an Envoy Secret Discovery Service that serves
// the CA bundles of MCP gateway upstreams, and keeps a live trust store per resource name.
//
// A Client holds one SDS stream (Delta by default, SotW as an option) for all its names,
// checks every served bundle with the server's own rules, ACKs what it accepts and NACKs
// what it cannot use, and reconnects with backoff while keeping the last good trust.
// TLSConfig returns a *tls.Config whose verification reads the current trust on every
// handshake, so one http.Transport serves across rotations without being rebuilt.
package trustsds

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// ErrClosed is returned by WaitReady once the Client is closed.
var ErrClosed = errors.New("trustsds: client closed")

// Client is a live subscription to trust-sds. Its methods are safe for concurrent use.
type Client struct {
	target string
	cfg    config
	store  *store

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Bundle is the trust in force for one name.
type Bundle struct {
	Name    string
	Version string
	// PEM is the bundle as served; Certificates are its parsed certificates (system roots,
	// if trusted too, are not listed).
	PEM          []byte
	Certificates []*x509.Certificate
}

// New starts subscribing to names on the trust-sds at target, a gRPC target such as
// "127.0.0.1:18000" or "dns:///trust-sds.mcp-system.svc:18000". It returns at once; use
// WaitReady to wait for trust. Cancelling ctx stops the subscription like Close does.
// Names can be changed later with Subscribe and Unsubscribe.
func New(ctx context.Context, target string, names []string, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.initialBackoff <= 0 || cfg.maxBackoff < cfg.initialBackoff {
		return nil, fmt.Errorf("trustsds: invalid backoff %v..%v", cfg.initialBackoff, cfg.maxBackoff)
	}
	var base *x509.CertPool
	if cfg.systemRoots {
		roots, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("trustsds: loading system roots (use WithSystemRoots(false) to trust the served bundle only): %w", err)
		}
		base = roots
	}
	for _, n := range names {
		if n == "" || n == "*" {
			return nil, fmt.Errorf("trustsds: invalid resource name %q: name each bundle (a wildcard would subscribe to every tenant's)", n)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &Client{
		target: target,
		cfg:    cfg,
		store:  newStore(base, names),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
	// A target or dial option gRPC refuses is refused here, not retried forever.
	conn, err := c.dial()
	if err != nil {
		cancel()
		return nil, err
	}
	_ = conn.Close()
	go c.run()
	return c, nil
}

// Subscribe adds names to the subscription; the stream asks for them at once.
func (c *Client) Subscribe(names ...string) {
	c.store.subscribe(names)
}

// Unsubscribe removes names from the subscription and drops their trust at once, so
// handshakes for them fail closed. It sends no event.
func (c *Client) Unsubscribe(names ...string) {
	c.store.unsubscribe(names)
}

// Names returns the subscribed names, sorted.
func (c *Client) Names() []string { return c.store.names() }

// Bundle returns the trust in force for name, if any.
func (c *Client) Bundle(name string) (Bundle, bool) {
	t := c.store.get(name)
	if t == nil {
		return Bundle{}, false
	}
	return Bundle{Name: name, Version: t.version, PEM: t.pem, Certificates: t.certs}, true
}

// WaitReady blocks until every subscribed name has trust (at once when none is
// subscribed), ctx is done (the error names the names still missing) or the Client is
// closed.
func (c *Client) WaitReady(ctx context.Context) error {
	for {
		missing, changed := c.store.readiness()
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("trustsds: no trust bundle for %s: %w", strings.Join(missing, ", "), ctx.Err())
		case <-c.done:
			return ErrClosed
		}
	}
}

// Close stops the subscription and waits until its goroutines have ended. Trust held at
// that moment stays in force for the tls.Configs handed out, but no longer follows
// rotations or withdrawals.
func (c *Client) Close() error {
	c.once.Do(c.cancel)
	<-c.done
	return nil
}

func (c *Client) emit(e Event) {
	if c.cfg.onUpdate != nil {
		c.cfg.onUpdate(e)
	}
}

package trustsds

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// secretTypeURL is the type of every resource trust-sds serves.
const secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// errNoNames ends a stream whose subscription became empty: an empty first request would
// mean "everything" (the xDS wildcard), so the client idles instead of asking.
var errNoNames = errors.New("no names subscribed")

// run is the subscription goroutine: one stream at a time, reconnecting with backoff.
func (c *Client) run() {
	defer close(c.done)
	retry := backoff{initial: c.cfg.initialBackoff, max: c.cfg.maxBackoff}
	for {
		if !c.waitForNames() {
			return
		}
		progressed, err := c.session()
		if c.ctx.Err() != nil {
			return
		}
		if errors.Is(err, errNoNames) {
			continue
		}
		c.emit(Event{Kind: Disconnected, Err: err})
		if !c.sleep(retry.delay(progressed)) {
			return
		}
	}
}

// backoff is the reconnect schedule: doubling from initial to max, jittered.
type backoff struct {
	initial, max, next time.Duration
}

// delay is the wait before the next attempt. Only a stream that delivered a response
// (progressed) starts the schedule again: a server that accepts and hangs up at once gets
// backoff, never a tight loop.
func (b *backoff) delay(progressed bool) time.Duration {
	if progressed || b.next == 0 {
		b.next = b.initial
	}
	d := jitter(b.next)
	b.next = min(2*b.next, b.max)
	return d
}

// jitter spreads a delay over [d/2, d], so clients that lost the same server do not come
// back in step, and the cap is never exceeded.
func jitter(d time.Duration) time.Duration {
	half := d / 2
	return half + rand.N(d-half+1)
}

func (c *Client) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// waitForNames blocks while nothing is subscribed; false means the client is stopping.
func (c *Client) waitForNames() bool {
	for len(c.store.names()) == 0 {
		select {
		case <-c.store.resubscribe:
		case <-c.ctx.Done():
			return false
		}
	}
	return c.ctx.Err() == nil
}

// session runs one stream on a fresh connection, so the reconnect schedule is this
// client's backoff alone (not also gRPC's channel backoff). progressed reports whether a
// response arrived.
func (c *Client) session() (progressed bool, err error) {
	conn, err := c.dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if c.cfg.protocol == SotW {
		return c.sotwSession(c.ctx, conn)
	}
	return c.deltaSession(c.ctx, conn)
}

// dial makes a connection to trust-sds; it connects on first use. Plaintext unless the
// dial options give transport credentials (later options win).
func (c *Client) dial() (*grpc.ClientConn, error) {
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A dead peer behind a silent network is noticed within a minute, not never.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 20 * time.Second}),
	}, c.cfg.dialOptions...)
	conn, err := grpc.NewClient(c.target, opts...)
	if err != nil {
		return nil, fmt.Errorf("trustsds: target %s: %w", c.target, err)
	}
	return conn, nil
}

func (c *Client) node() *corev3.Node {
	return &corev3.Node{Id: c.cfg.nodeID, Cluster: c.cfg.cluster}
}

type received[T any] struct {
	msg T
	err error
}

// receive reads a stream on its own goroutine so the session can also wait for
// subscription changes. The returned wait blocks until that goroutine has ended; the
// caller cancels the stream's context first.
func receive[T any](ctx context.Context, recv func() (T, error)) (<-chan received[T], func()) {
	out := make(chan received[T])
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			msg, err := recv()
			select {
			case out <- received[T]{msg, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	})
	return out, wg.Wait
}

// nack is the error_detail for the problems of one response, nil when there are none.
func nack(problems []string) *status.Status {
	if len(problems) == 0 {
		return nil
	}
	return status.New(codes.InvalidArgument, strings.Join(problems, "; "))
}

// accept validates one served resource and installs it. The error is the NACK text.
func (c *Client) accept(name, version string, resource anyMessage) error {
	secret, err := decodeSecret(resource)
	if err != nil {
		return c.reject(name, version, err)
	}
	return c.acceptSecret(name, version, secret)
}

func (c *Client) acceptSecret(name, version string, secret *tlsv3.Secret) error {
	pem, err := bundleBytes(name, secret)
	if err != nil {
		return c.reject(name, version, err)
	}
	certs, err := ParseBundle(pem)
	if err != nil {
		return c.reject(name, version, err)
	}
	if c.store.install(name, version, pem, certs) {
		c.emit(Event{Kind: Updated, Name: name, Version: version})
	}
	return nil
}

// reject reports a refused bundle; the previous trust stays in force.
func (c *Client) reject(name, version string, why error) error {
	err := fmt.Errorf("bundle for %s rejected: %w", name, why)
	c.emit(Event{Kind: Rejected, Name: name, Version: version, Err: err})
	return err
}

// withdraw drops the trust for a name the server no longer serves.
func (c *Client) withdraw(name string) {
	if version, ok := c.store.withdraw(name); ok {
		c.emit(Event{Kind: Removed, Name: name, Version: version})
	}
}

// bundleBytes extracts validation_context.trusted_ca from a served Secret.
func bundleBytes(name string, secret *tlsv3.Secret) ([]byte, error) {
	if secret.GetName() != name {
		return nil, fmt.Errorf("resource carries a Secret named %q", secret.GetName())
	}
	vc := secret.GetValidationContext()
	if vc == nil {
		return nil, errors.New("resource is not a validation context")
	}
	switch s := vc.GetTrustedCa().GetSpecifier().(type) {
	case *corev3.DataSource_InlineBytes:
		return s.InlineBytes, nil
	case *corev3.DataSource_InlineString:
		return []byte(s.InlineString), nil
	}
	return nil, errors.New("resource has no inline trusted_ca")
}

// anyMessage is what the client reads of a google.protobuf.Any. Going through it (and
// grpc's protobuf codec) keeps the protobuf runtime an indirect dependency: go.mod names
// only grpc and go-control-plane.
type anyMessage interface {
	GetTypeUrl() string
	GetValue() []byte
}

func decodeSecret(resource anyMessage) (*tlsv3.Secret, error) {
	if resource.GetTypeUrl() == "" {
		return nil, errors.New("resource has no body")
	}
	if resource.GetTypeUrl() != secretTypeURL {
		return nil, fmt.Errorf("resource has type %s, expected %s", resource.GetTypeUrl(), secretTypeURL)
	}
	secret := &tlsv3.Secret{}
	codec := encoding.GetCodecV2(grpcproto.Name)
	if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(resource.GetValue())}, secret); err != nil {
		return nil, fmt.Errorf("resource does not decode: %w", err)
	}
	return secret, nil
}

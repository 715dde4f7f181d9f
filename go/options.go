package trustsds

import (
	"time"

	"google.golang.org/grpc"
)

// Protocol is the SDS variant a Client speaks.
type Protocol int

const (
	// Delta (DeltaSecrets) is the default: it expresses withdrawal directly and resumes
	// a reconnect from the versions the client holds.
	Delta Protocol = iota
	// SotW (StreamSecrets) is the State of the World variant.
	SotW
)

func (p Protocol) String() string {
	if p == SotW {
		return "sotw"
	}
	return "delta"
}

// EventKind says what an Event reports.
type EventKind int

const (
	// Updated: new trust is in use for Name from the next handshake on.
	Updated EventKind = iota + 1
	// Removed: trust-sds withdrew Name; handshakes for it now fail closed.
	Removed
	// Rejected: a served bundle for Name was refused and NACKed; the previous trust stays.
	Rejected
	// Connected: a stream to trust-sds is open.
	Connected
	// Disconnected: the stream ended; the client keeps its trust and retries.
	Disconnected
)

func (k EventKind) String() string {
	switch k {
	case Updated:
		return "updated"
	case Removed:
		return "removed"
	case Rejected:
		return "rejected"
	case Connected:
		return "connected"
	case Disconnected:
		return "disconnected"
	}
	return "unknown"
}

// Event is one change, for logs and metrics.
type Event struct {
	Kind EventKind
	// Name is the resource name; empty for Connected and Disconnected.
	Name string
	// Version is the new version (Updated), the refused one (Rejected) or the one that was
	// dropped (Removed).
	Version string
	// Err says why, for Rejected and Disconnected.
	Err error
}

// Option configures a Client.
type Option func(*config)

type config struct {
	nodeID         string
	cluster        string
	protocol       Protocol
	systemRoots    bool
	initialBackoff time.Duration
	maxBackoff     time.Duration
	onUpdate       func(Event)
	dialOptions    []grpc.DialOption
}

func defaultConfig() config {
	return config{
		nodeID:         "trust-sds-go-client",
		protocol:       Delta,
		systemRoots:    true,
		initialBackoff: 100 * time.Millisecond,
		maxBackoff:     30 * time.Second,
	}
}

// WithNode sets the node id and cluster sent on the first request of every stream; trust-sds
// shows them in its /clients view and may authorise by them.
func WithNode(id, cluster string) Option {
	return func(c *config) { c.nodeID, c.cluster = id, cluster }
}

// WithProtocol picks Delta (the default) or SotW.
func WithProtocol(p Protocol) Option {
	return func(c *config) { c.protocol = p }
}

// WithSystemRoots says whether the system roots are trusted beside the served bundle
// (the default), or only the served bundle (false).
func WithSystemRoots(enabled bool) Option {
	return func(c *config) { c.systemRoots = enabled }
}

// WithBackoff sets the reconnect delay: it starts at initial, doubles to max, is jittered,
// and starts again from initial once a stream has delivered a response. Defaults: 100ms, 30s.
func WithBackoff(initial, max time.Duration) Option {
	return func(c *config) { c.initialBackoff, c.maxBackoff = initial, max }
}

// WithOnUpdate registers a callback for every Event. It runs on the subscription goroutine,
// in order, after the change is in effect: keep it short and never block in it.
func WithOnUpdate(f func(Event)) Option {
	return func(c *config) { c.onUpdate = f }
}

// WithDialOptions adds gRPC dial options for the connection to trust-sds, e.g.
// grpc.WithTransportCredentials for TLS or mTLS. Without transport credentials the
// connection is plaintext.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.dialOptions = append(c.dialOptions, opts...) }
}

package trustsds

import (
	"context"
	"fmt"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
)

// deltaSession runs one DeltaSecrets stream. The first request carries the node, the
// names and the versions already held, so a reconnect is not answered with bundles the
// client has; later requests are ACKs, NACKs and subscription changes.
func (c *Client) deltaSession(ctx context.Context, conn *grpc.ClientConn) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	names, held := c.store.subscription()
	if len(names) == 0 {
		return false, errNoNames
	}
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).DeltaSecrets(ctx)
	if err != nil {
		return false, fmt.Errorf("DeltaSecrets: %w", err)
	}
	initial := make(map[string]string)
	for _, n := range names {
		if v, ok := held[n]; ok {
			initial[n] = v
		}
	}
	first := &discoveryv3.DeltaDiscoveryRequest{
		Node:                    c.node(),
		TypeUrl:                 secretTypeURL,
		ResourceNamesSubscribe:  names,
		InitialResourceVersions: initial,
	}
	if err := stream.Send(first); err != nil {
		return false, fmt.Errorf("DeltaSecrets: %w", err)
	}
	c.emit(Event{Kind: Connected})
	sent := names
	responses, wait := receive(ctx, stream.Recv)
	// Cancelling ends the stream, so the receiver returns and leaves nothing behind.
	defer func() { cancel(); wait() }()
	progressed := false
	for {
		select {
		case <-ctx.Done():
			return progressed, ctx.Err()
		case r := <-responses:
			if r.err != nil {
				return progressed, fmt.Errorf("DeltaSecrets: %w", r.err)
			}
			progressed = true
			if err := stream.Send(c.applyDelta(r.msg)); err != nil {
				return progressed, fmt.Errorf("DeltaSecrets: %w", err)
			}
		case <-c.store.resubscribe:
			now := c.store.names()
			if len(now) == 0 {
				return progressed, errNoNames
			}
			change := &discoveryv3.DeltaDiscoveryRequest{
				TypeUrl:                  secretTypeURL,
				ResourceNamesSubscribe:   missingFrom(now, sent),
				ResourceNamesUnsubscribe: missingFrom(sent, now),
			}
			sent = now
			if len(change.ResourceNamesSubscribe)+len(change.ResourceNamesUnsubscribe) == 0 {
				continue
			}
			if err := stream.Send(change); err != nil {
				return progressed, fmt.Errorf("DeltaSecrets: %w", err)
			}
		}
	}
}

// applyDelta installs a response's bundles, drops its removed names and returns the ACK,
// or a NACK naming every bundle it refused.
func (c *Client) applyDelta(resp *discoveryv3.DeltaDiscoveryResponse) *discoveryv3.DeltaDiscoveryRequest {
	var problems []string
	for _, r := range resp.GetResources() {
		name := r.GetName()
		if name == "" {
			name = r.GetResourceName().GetName()
		}
		// A push racing an Unsubscribe is not an error; it is just not wanted any more.
		if !c.store.isWanted(name) {
			continue
		}
		if err := c.accept(name, r.GetVersion(), r.GetResource()); err != nil {
			problems = append(problems, err.Error())
		}
	}
	for _, name := range resp.GetRemovedResources() {
		c.withdraw(name)
	}
	for _, rn := range resp.GetRemovedResourceNames() {
		c.withdraw(rn.GetName())
	}
	return &discoveryv3.DeltaDiscoveryRequest{
		TypeUrl:       secretTypeURL,
		ResponseNonce: resp.GetNonce(),
		ErrorDetail:   nack(problems).Proto(),
	}
}

// missingFrom returns the names of a that are not in b (both sorted).
func missingFrom(a, b []string) []string {
	var out []string
	for _, n := range a {
		if _, found := slices.BinarySearch(b, n); !found {
			out = append(out, n)
		}
	}
	return out
}

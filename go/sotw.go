package trustsds

import (
	"context"
	"fmt"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
)

// sotwSession runs one StreamSecrets stream. Every request carries the whole name list;
// ACKs carry the last accepted version_info, NACKs the previous one plus error_detail,
// and every request after the first carries the latest nonce (a request with an older one
// is ignored by the server, subscription changes included).
func (c *Client) sotwSession(ctx context.Context, conn *grpc.ClientConn) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sent := c.store.names()
	if len(sent) == 0 {
		return false, errNoNames
	}
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return false, fmt.Errorf("StreamSecrets: %w", err)
	}
	first := &discoveryv3.DiscoveryRequest{Node: c.node(), TypeUrl: secretTypeURL, ResourceNames: sent}
	if err := stream.Send(first); err != nil {
		return false, fmt.Errorf("StreamSecrets: %w", err)
	}
	c.emit(Event{Kind: Connected})
	responses, wait := receive(ctx, stream.Recv)
	defer func() { cancel(); wait() }()
	var accepted, nonce string
	progressed := false
	for {
		var problems []string
		select {
		case <-ctx.Done():
			return progressed, ctx.Err()
		case r := <-responses:
			if r.err != nil {
				return progressed, fmt.Errorf("StreamSecrets: %w", r.err)
			}
			progressed = true
			problems = c.applySotw(r.msg)
			if len(problems) == 0 {
				accepted = r.msg.GetVersionInfo()
			}
			nonce = r.msg.GetNonce()
		case <-c.store.resubscribe:
			if now := c.store.names(); slices.Equal(now, sent) {
				continue
			}
		}
		sent = c.store.names()
		if len(sent) == 0 {
			return progressed, errNoNames
		}
		request := &discoveryv3.DiscoveryRequest{
			VersionInfo:   accepted,
			ResourceNames: sent,
			TypeUrl:       secretTypeURL,
			ResponseNonce: nonce,
			ErrorDetail:   nack(problems).Proto(),
		}
		if err := stream.Send(request); err != nil {
			return progressed, fmt.Errorf("StreamSecrets: %w", err)
		}
	}
}

// applySotw installs a response's bundles and returns the problems to NACK. A SotW
// response from trust-sds carries every subscribed name it serves, so a name the client
// holds trust for that is missing from it was withdrawn: its trust is dropped (fail
// closed). When some resource cannot even be decoded, the response's set of names is not
// known, and nothing is dropped.
func (c *Client) applySotw(resp *discoveryv3.DiscoveryResponse) []string {
	var problems []string
	present := make(map[string]bool)
	complete := true
	for i, res := range resp.GetResources() {
		secret, err := decodeSecret(res)
		if err != nil {
			complete = false
			problems = append(problems, fmt.Sprintf("resource %d of version %s rejected: %v", i, resp.GetVersionInfo(), err))
			continue
		}
		name := secret.GetName()
		present[name] = true
		if !c.store.isWanted(name) {
			continue
		}
		// SotW has no per-resource version: version_info stands for each name's version,
		// which equals the bundle's own when a single name is subscribed.
		if err := c.acceptSecret(name, resp.GetVersionInfo(), secret); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if complete {
		for _, name := range c.store.names() {
			if !present[name] {
				c.withdraw(name)
			}
		}
	}
	return problems
}

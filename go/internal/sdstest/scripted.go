package sdstest

import (
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SecretTypeURL is the type of the resources trust-sds serves.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// Scripted is an in-process SDS server on 127.0.0.1 that says exactly what the test
// tells it to: each stream a client opens is handed to the test, which reads the client's
// requests and writes the responses.
type Scripted struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	Addr   string
	server *grpc.Server
	delta  chan *Stream[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]
	sotw   chan *Stream[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
}

// StartScripted serves until the test ends (or Stop).
func StartScripted(t testing.TB) *Scripted {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Scripted{
		Addr:   lis.Addr().String(),
		server: grpc.NewServer(),
		delta:  make(chan *Stream[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse], 16),
		sotw:   make(chan *Stream[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse], 16),
	}
	secretv3.RegisterSecretDiscoveryServiceServer(s.server, s)
	go func() { _ = s.server.Serve(lis) }()
	t.Cleanup(s.Stop)
	return s
}

// Stop closes every stream and the listener, and waits for the handlers to return.
func (s *Scripted) Stop() { s.server.Stop() }

// DeltaSecrets hands the stream to the test.
func (s *Scripted) DeltaSecrets(stream grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return serve(stream, s.delta)
}

// StreamSecrets hands the stream to the test.
func (s *Scripted) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return serve(stream, s.sotw)
}

// NextDelta waits for the client to open a DeltaSecrets stream.
func (s *Scripted) NextDelta(t testing.TB) *Stream[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse] {
	t.Helper()
	return next(t, s.delta)
}

// NextSotW waits for the client to open a StreamSecrets stream.
func (s *Scripted) NextSotW(t testing.TB) *Stream[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse] {
	t.Helper()
	return next(t, s.sotw)
}

func next[S any](t testing.TB, streams chan *S) *S {
	t.Helper()
	select {
	case s := <-streams:
		return s
	case <-time.After(Timeout):
		t.Fatalf("the client opened no stream within %v", Timeout)
		return nil
	}
}

// Stream is one client stream, driven by the test.
type Stream[Req, Resp any] struct {
	requests chan *Req
	send     func(*Resp) error
	end      chan struct{}
}

func serve[Req, Resp any](stream grpc.BidiStreamingServer[Req, Resp], streams chan *Stream[Req, Resp]) error {
	s := &Stream[Req, Resp]{requests: make(chan *Req, 64), send: stream.Send, end: make(chan struct{})}
	ctx := stream.Context()
	go func() {
		defer close(s.requests)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case s.requests <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	select {
	case streams <- s:
	case <-ctx.Done():
		return nil
	}
	select {
	case <-s.end:
		return status.Error(codes.Unavailable, "scripted server ended the stream")
	case <-ctx.Done():
		return nil
	}
}

// Recv returns the client's next request, failing the test if none comes in time.
func (s *Stream[Req, Resp]) Recv(t testing.TB) *Req {
	t.Helper()
	select {
	case r, ok := <-s.requests:
		if !ok {
			t.Fatal("the client closed the stream instead of sending a request")
		}
		return r
	case <-time.After(Timeout):
		t.Fatalf("no request from the client within %v", Timeout)
		return nil
	}
}

// Send writes a response to the client.
func (s *Stream[Req, Resp]) Send(t testing.TB, resp *Resp) {
	t.Helper()
	if err := s.send(resp); err != nil {
		t.Fatalf("sending a response: %v", err)
	}
}

// End ends the stream with UNAVAILABLE, as a server going away does.
func (s *Stream[Req, Resp]) End() { close(s.end) }

// Secret is a served trust bundle: validation_context.trusted_ca.inline_bytes.
func Secret(name string, pem string) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte(pem)}},
		}},
	}
}

// message is any generated protobuf message (protoadapt.MessageV1, named here so that
// go.mod need not require the protobuf runtime directly).
type message interface {
	Reset()
	String() string
	ProtoMessage()
}

// DeltaResource wraps m (normally a Secret) as a Delta resource.
func DeltaResource(t testing.TB, name, version string, m message) *discoveryv3.Resource {
	t.Helper()
	return &discoveryv3.Resource{Name: name, Version: version, Resource: packAny(t, m).Proto().GetDetails()[0]}
}

// SotWResponse is a SotW response carrying msgs.
func SotWResponse(t testing.TB, version, nonce string, msgs ...message) *discoveryv3.DiscoveryResponse {
	t.Helper()
	resp := &discoveryv3.DiscoveryResponse{VersionInfo: version, Nonce: nonce, TypeUrl: SecretTypeURL}
	for _, m := range msgs {
		resp.Resources = append(resp.Resources, packAny(t, m).Proto().GetDetails()[0])
	}
	return resp
}

// packAny returns a status whose one detail is m as a google.protobuf.Any: grpc packs
// status details that way, which spares a direct import of the protobuf runtime.
func packAny(t testing.TB, m message) *status.Status {
	t.Helper()
	st, err := status.New(codes.Unknown, "pack").WithDetails(m)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// WaitClosed waits until the client ends the stream, failing the test if it sends
// another request instead.
func (s *Stream[Req, Resp]) WaitClosed(t testing.TB) {
	t.Helper()
	select {
	case r, ok := <-s.requests:
		if ok {
			t.Fatalf("want the stream closed, got a request: %v", r)
		}
	case <-time.After(Timeout):
		t.Fatalf("the client kept the stream open for %v", Timeout)
	}
}

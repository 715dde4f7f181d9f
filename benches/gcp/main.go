// Command gcp-sds-bench is the go-control-plane peer in benches/fanout.rs: an SDS server
// built the way Go control planes build one (pkg/cache/v3's snapshot cache behind
// pkg/server/v3), serving the same bundles to the same clients with the same rotations
// as trust-sds and the plain tonic baseline in the same run.
//
// It speaks the bench's child protocol: arguments DIR REGISTRATIONS, where DIR holds
// filler.pem (the CA of every other registration) and bundle-<i>.pem (the rotated
// registration's bundle at rotation i); it prints "cold_start_us <us> <resources>" (from
// the first resource built to the first response of a stream of its own) and
// "ready <addr>", then applies each "rotate <i>" line from stdin as a new snapshot.
package main

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The resource every bench stream subscribes to (benches/fanout.rs NAME).
const rotated = "bench/rotated"

func secret(name, pem string) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{
			ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: &corev3.DataSource{
					Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte(pem)},
				},
			},
		},
	}
}

// everyNode keys every client to the same snapshot. The cache's IDHash keys by node id,
// and the clients that send an Envoy-like node would find no snapshot under theirs.
type everyNode struct{}

func (everyNode) ID(*corev3.Node) string { return "" }

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: gcp-sds-bench DIR REGISTRATIONS")
	}
	dir := os.Args[1]
	registrations, err := strconv.Atoi(os.Args[2])
	if err != nil {
		log.Fatalf("REGISTRATIONS: %v", err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			log.Fatal(err)
		}
		return string(b)
	}
	ctx := context.Background()
	// ads=false; one snapshot for every node, as trust-sds serves every client by name.
	snapshots := cachev3.NewSnapshotCache(false, everyNode{}, nil)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	grpcServer := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(grpcServer, serverv3.NewServer(ctx, snapshots, nil))
	go func() { _ = grpcServer.Serve(listener) }()

	start := time.Now()
	filler := read("filler.pem")
	others := make([]types.Resource, 0, registrations+1)
	for i := 0; i < registrations; i++ {
		others = append(others, secret(fmt.Sprintf("bench/r%d", i), filler))
	}
	set := func(version int) {
		resources := append(others[:registrations:registrations], secret(rotated, read(fmt.Sprintf("bundle-%d.pem", version))))
		snapshot, err := cachev3.NewSnapshot(strconv.Itoa(version), map[resource.Type][]types.Resource{
			resource.SecretType: resources,
		})
		if err != nil {
			log.Fatal(err)
		}
		if err := snapshots.SetSnapshot(ctx, "", snapshot); err != nil {
			log.Fatal(err)
		}
	}
	set(0)
	firstResponse(ctx, listener.Addr().String())
	fmt.Printf("cold_start_us %d %d\n", time.Since(start).Microseconds(), registrations+1)
	fmt.Printf("ready %s\n", listener.Addr())

	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		i, err := strconv.Atoi(strings.TrimPrefix(lines.Text(), "rotate "))
		if err != nil {
			break
		}
		set(i)
	}
	grpcServer.Stop()
}

// firstResponse subscribes to the rotated resource on a stream of its own and waits for
// the answer: the end of the cold start, as a subscriber sees it.
func firstResponse(ctx context.Context, addr string) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{
		TypeUrl:       resource.SecretType,
		ResourceNames: []string{rotated},
	}); err != nil {
		log.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		log.Fatal(err)
	}
}

package trustsds_test

import (
	"context"
	"log"
	"net/http"
	"strings"
	"time"

	trustsds "github.com/trust-sds/trust-sds/go"
)

// A broker keeps one Client for all its upstreams and one http.Client per upstream,
// built once: rotations need no rebuild.
func Example() {
	ctx := context.Background()
	trust, err := trustsds.New(ctx, "trust-sds.mcp-system.svc:18000",
		[]string{"mcp-demo/weather"},
		trustsds.WithNode("mcp-broker", "mcp-gateway"),
		trustsds.WithOnUpdate(func(e trustsds.Event) {
			log.Printf("trust %s %s %s %v", e.Kind, e.Name, e.Version, e.Err)
		}))
	if err != nil {
		log.Fatal(err)
	}
	defer trust.Close()

	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := trust.WaitReady(waitCtx); err != nil {
		log.Fatal(err)
	}

	weather := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   trust.TLSConfig("mcp-demo/weather", ""),
		ForceAttemptHTTP2: true,
	}}
	resp, err := weather.Post("https://weather.mcp-demo.svc:8443/mcp", "application/json",
		strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"broker","version":"1"}}}`))
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
}

// Subscriptions follow the registrations the broker knows about.
func ExampleClient_Subscribe() {
	trust, err := trustsds.New(context.Background(), "127.0.0.1:18000", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer trust.Close()
	trust.Subscribe("mcp-demo/news")   // a registration appeared
	trust.Unsubscribe("mcp-demo/news") // and went: its TLS configs now fail closed
}

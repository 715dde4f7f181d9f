// Command mcp-probe sends an MCP initialize over HTTPS to an upstream, trusting what
// trust-sds serves for one registration, as a broker built on package trustsds does. It
// checks the whole path (trust-sds, the bundle, the upstream's certificate and name)
// before a broker is wired up.
//
//	mcp-probe --sds 127.0.0.1:18000 --registration mcp-demo/weather --url https://weather.mcp.test:8443/mcp
//
// It prints the bundle version and the server's answer, and exits 0 when initialize
// answers 2xx, 1 when it does not (or no trust arrives in time), 2 on bad flags.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strings"
	"time"

	trustsds "github.com/trust-sds/trust-sds/go"
)

// initialize is the request body: the first message of every MCP session.
const initialize = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"mcp-probe","version":"0.1"}}}`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	sds, registration, url, connectTo, protocol string
	timeout                                     time.Duration
	systemRoots                                 bool
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("mcp-probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.sds, "sds", envOr("TRUST_SDS_SERVER", "127.0.0.1:18000"), "trust-sds gRPC address, host:port (env TRUST_SDS_SERVER; plaintext)")
	fs.StringVar(&o.registration, "registration", "", "the resource whose bundle to trust: NS/NAME (or gateway/NS/EXTENSION)")
	fs.StringVar(&o.url, "url", "", "the upstream MCP endpoint, https://HOST[:PORT]/PATH")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "how long to wait for the bundle, and then for the answer")
	fs.StringVar(&o.protocol, "protocol", "delta", "SDS variant: delta or sotw")
	fs.BoolVar(&o.systemRoots, "system-roots", false, "also trust the system roots")
	fs.StringVar(&o.connectTo, "connect-to", "", "dial this IP:PORT instead of the URL's host (the TLS name and Host stay the URL's)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.registration == "":
		return o, errors.New("--registration NS/NAME is required")
	case !strings.HasPrefix(o.url, "https://"):
		return o, fmt.Errorf("--url must be an https:// URL, got %q", o.url)
	case o.protocol != "delta" && o.protocol != "sotw":
		return o, fmt.Errorf("--protocol must be delta or sotw, got %q", o.protocol)
	case strings.HasPrefix(o.sds, "https://"):
		return o, errors.New("--sds: mcp-probe reaches trust-sds over plaintext only")
	}
	o.sds = strings.TrimPrefix(o.sds, "http://")
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "mcp-probe: %v\n", err)
		}
		return 2
	}
	protocol := trustsds.Delta
	if o.protocol == "sotw" {
		protocol = trustsds.SotW
	}
	client, err := trustsds.New(ctx, o.sds, []string{o.registration},
		trustsds.WithNode("mcp-probe", ""),
		trustsds.WithProtocol(protocol),
		trustsds.WithSystemRoots(o.systemRoots))
	if err != nil {
		fmt.Fprintf(stderr, "mcp-probe: %v\n", err)
		return 1
	}
	defer client.Close()

	waitCtx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := client.WaitReady(waitCtx); err != nil {
		fmt.Fprintf(stderr, "mcp-probe: %v (is trust-sds at %s serving it?)\n", err, o.sds)
		return 1
	}
	bundle, _ := client.Bundle(o.registration)
	fmt.Fprintf(stdout, "trust for %s: version %s\n", o.registration, bundle.Version)

	reqCtx, cancelReq := context.WithTimeout(ctx, o.timeout)
	defer cancelReq()
	answer, err := probe(reqCtx, client.TLSConfig(o.registration, ""), o.url, o.connectTo)
	if err != nil {
		fmt.Fprintf(stdout, "initialize failed: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, answer)
	if !answer.ok() {
		return 1
	}
	return 0
}

// outcome is what the upstream answered.
type outcome struct {
	status   int
	server   string // serverInfo name and version
	protocol string
	rpcError string
	elapsed  time.Duration
}

func (o outcome) ok() bool { return o.status/100 == 2 && o.rpcError == "" }

func (o outcome) String() string {
	if o.rpcError != "" {
		return fmt.Sprintf("initialize: HTTP %d with JSON-RPC error %s in %v", o.status, o.rpcError, o.elapsed)
	}
	return fmt.Sprintf("initialize: HTTP %d from %s (protocol %s) in %v", o.status, o.server, o.protocol, o.elapsed)
}

// probe POSTs initialize (streamable HTTP) and reads the JSON-RPC answer, plain JSON or
// server-sent events. Errors say which step failed: connect, TLS handshake or request.
func probe(ctx context.Context, tlsConfig *tls.Config, rawURL, connectTo string) (outcome, error) {
	start := time.Now()
	u, err := url.Parse(rawURL)
	if err != nil {
		return outcome{}, fmt.Errorf("invalid URL %s: %w", rawURL, err)
	}
	hostPort := u.Host
	if u.Port() == "" {
		hostPort = net.JoinHostPort(u.Hostname(), "443")
	}
	var dialer net.Dialer
	transport := &http.Transport{
		TLSClientConfig: tlsConfig,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if connectTo != "" {
				addr = connectTo
			}
			return dialer.DialContext(ctx, network, addr)
		},
	}
	defer transport.CloseIdleConnections()

	var connectErr, handshakeErr error
	trace := &httptrace.ClientTrace{
		ConnectDone:      func(_, _ string, err error) { connectErr = err },
		TLSHandshakeDone: func(_ tls.ConnectionState, err error) { handshakeErr = err },
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodPost, rawURL, strings.NewReader(initialize))
	if err != nil {
		return outcome{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := (&http.Client{Transport: transport}).Do(req)
	switch {
	case err != nil && connectErr != nil:
		return outcome{}, fmt.Errorf("cannot connect to %s: %w", hostPort, connectErr)
	case err != nil && handshakeErr != nil:
		return outcome{}, fmt.Errorf("TLS handshake with %s failed: %w", hostPort, handshakeErr)
	case err != nil:
		return outcome{}, fmt.Errorf("initialize request failed: %w", errors.Unwrap(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return outcome{}, fmt.Errorf("reading the answer failed: %w", err)
	}
	o := outcome{status: resp.StatusCode, server: "<unnamed server>", protocol: "?", elapsed: time.Since(start).Round(100 * time.Microsecond)}
	var answer struct {
		Result struct {
			ProtocolVersion string `json:"protocolVersion"`
			ServerInfo      struct {
				Name    string `json:"name"`
				Version string `json:"version"`
			} `json:"serverInfo"`
		} `json:"result"`
		Error *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(firstJSON(body), &answer) == nil {
		if info := answer.Result.ServerInfo; info.Name != "" {
			o.server = strings.TrimSpace(info.Name + " " + info.Version)
		}
		if answer.Result.ProtocolVersion != "" {
			o.protocol = answer.Result.ProtocolVersion
		}
		if answer.Error != nil {
			o.rpcError = fmt.Sprintf("%d: %s", answer.Error.Code, answer.Error.Message)
		}
	}
	return o, nil
}

// firstJSON is the JSON-RPC message of a plain JSON or a server-sent-events answer.
func firstJSON(body []byte) []byte {
	if json.Valid(body) {
		return body
	}
	lines := bufio.NewScanner(bytes.NewReader(body))
	for lines.Scan() {
		if data, ok := strings.CutPrefix(lines.Text(), "data:"); ok && json.Valid([]byte(strings.TrimSpace(data))) {
			return []byte(strings.TrimSpace(data))
		}
	}
	return nil
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

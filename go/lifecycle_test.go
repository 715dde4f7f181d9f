package trustsds

import (
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trust-sds/trust-sds/go/internal/sdstest"
)

// packageFrame matches a stack frame in this package's own (non-test) source files.
var packageFrame = func() *regexp.Regexp {
	_, file, _, _ := runtime.Caller(0)
	return regexp.MustCompile(`\t` + regexp.QuoteMeta(filepath.Dir(file)) + `/[a-z]+\.go:`)
}()

// goroutines returns the stacks of every other goroutine that matches.
func goroutines(match func(stack string) bool) []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for i, stack := range strings.Split(string(buf), "\n\n") {
		if i > 0 && match(stack) { // the first one is this goroutine
			found = append(found, stack)
		}
	}
	return found
}

// waitGone waits for matching goroutines to end. A goroutine that has signalled it is done
// still takes a moment to unwind, and nothing reports that last step, so this polls, with a
// deadline: everything Close waits for has ended by then, so this is quick.
func waitGone(t *testing.T, what string, match func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(sdstest.Timeout)
	for left := goroutines(match); len(left) > 0; left = goroutines(match) {
		if time.Now().After(deadline) {
			t.Fatalf("%s goroutines left:\n%s", what, strings.Join(left, "\n\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ours(stack string) bool { return packageFrame.MatchString(stack) }

func grpcs(stack string) bool { return strings.Contains(stack, "google.golang.org/grpc") }

// startServed starts a scripted server and a client holding trust for team/a, over either
// protocol, with the stream still open.
func startServed(t *testing.T, ctx context.Context, p Protocol) (*sdstest.Scripted, *Client) {
	t.Helper()
	ca := sdstest.NewCA(t, "Team CA")
	sds := sdstest.StartScripted(t)
	c, err := New(ctx, sds.Addr, []string{"team/a"}, WithProtocol(p))
	if err != nil {
		t.Fatal(err)
	}
	if p == SotW {
		stream := sds.NextSotW(t)
		stream.Recv(t)
		stream.Send(t, sdstest.SotWResponse(t, "v1", "n1", sdstest.Secret("team/a", ca.PEM)))
		stream.Recv(t)
	} else {
		stream := sds.NextDelta(t)
		stream.Recv(t)
		stream.Send(t, &discoveryv3.DeltaDiscoveryResponse{Nonce: "n1", Resources: []*discoveryv3.Resource{
			sdstest.DeltaResource(t, "team/a", "v1", sdstest.Secret("team/a", ca.PEM)),
		}})
		stream.Recv(t)
	}
	waitReady(t, c)
	return sds, c
}

// Close returns only after the client's goroutines have ended; gRPC's own connection
// goroutines follow shortly after.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			sds, c := startServed(t, context.Background(), p)
			if len(goroutines(ours)) == 0 {
				t.Fatal("the check is blind: no client goroutine seen while running")
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			waitGone(t, "client", ours)
			_ = c.Close() // idempotent
			sds.Stop()
			waitGone(t, "gRPC", grpcs)
			// The trust held at Close stays usable for configs already handed out.
			if _, ok := c.Bundle("team/a"); !ok {
				t.Fatal("trust dropped by Close")
			}
		})
	}
}

func TestContextCancelStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	_, c := startServed(t, ctx, Delta)
	c.Subscribe("team/missing")
	cancel()
	waitCtx, stop := context.WithTimeout(context.Background(), sdstest.Timeout)
	defer stop()
	if err := c.WaitReady(waitCtx); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitReady after cancel: %v", err)
	}
	waitGone(t, "client", ours)
	_ = c.Close()
}
